"""Result values for the report tests, built directly from the perfkit.results dataclasses."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

from perfkit.cli import main
from perfkit.results import (
    LatencySummary,
    MachineInfo,
    Measurement,
    RunResult,
    ServerBreakdown,
    ServerInfo,
    TrialRecord,
    TuneResult,
    WindowStat,
)

MACHINE = MachineInfo(hostname="ci-host", cpu="AMD EPYC 7B13", cpu_count=2, gpus=("NVIDIA L4",))
SERVER = ServerInfo(url="localhost:8001", protocol="grpc", kind="perfkit_server", version="0.1.0")


def latency(
    p50_us: float, *, count: int = 1000, extra: dict[float, float] | None = None
) -> LatencySummary:
    return LatencySummary(
        count=count,
        avg_us=p50_us * 1.05,
        std_us=p50_us * 0.2,
        min_us=p50_us * 0.5,
        max_us=p50_us * 3.0,
        p50_us=p50_us,
        p90_us=p50_us * 1.4,
        p95_us=p50_us * 1.6,
        p99_us=p50_us * 2.0,
        extra_percentiles_us=dict(extra or {}),
    )


def windows(thr: float, lat_us: float, n: int = 4) -> tuple[WindowStat, ...]:
    out = []
    for i in range(n):
        wobble = 1.0 + (0.15 if i == 0 else 0.02 * (-1) ** i)
        out.append(
            WindowStat(
                index=i,
                start_ns=i * 1_000_000_000,
                duration_ns=1_000_000_000,
                request_count=int(thr * wobble),
                error_count=0,
                throughput_infer_per_s=thr * wobble,
                latency_avg_us=lat_us / wobble,
                latency_stability_us=lat_us / wobble,
                merged=i >= n - 3,
            )
        )
    return tuple(out)


def measurement(
    level: float,
    thr: float,
    p50_us: float,
    *,
    mode: str = "concurrency",
    batch: int = 1,
    corrected: bool = False,
    errors: int = 0,
    metrics: dict[str, dict[str, float]] | None = None,
) -> Measurement:
    server = ServerBreakdown(
        inference_count=int(thr * 3),
        execution_count=int(thr * 2),
        success_count=int(thr * 3),
        failure_count=0,
        avg_request_us=p50_us * 0.8,
        queue_us=p50_us * 0.3,
        compute_input_us=p50_us * 0.05,
        compute_infer_us=p50_us * 0.4,
        compute_output_us=p50_us * 0.03,
        overhead_us=p50_us * 0.02,
        network_server_send_recv_us=p50_us * 0.2,
        batch_executions={1: 10, 4: 20},
    )
    return Measurement(
        mode=mode,  # type: ignore[arg-type]
        level=float(level),
        batch_size=batch,
        stable=True,
        request_count=int(thr * 3),
        error_count=errors,
        duration_ns=3_000_000_000,
        throughput_infer_per_s=thr,
        latency=latency(p50_us, extra={99.9: p50_us * 2.5}),
        corrected_latency=latency(p50_us * 1.5) if corrected else None,
        send_rate_rps=level if mode == "request_rate" else None,
        late_send_count=3 if corrected else 0,
        client_send_us=12.0,
        client_recv_us=20.0,
        server=server,
        windows=windows(thr, p50_us),
        client_cpu_pct=35.0,
        client_cpu_us_per_request=48.0,
        metrics=dict(metrics or {}),
    )


def make_run(
    *,
    model: str = "mlp",
    scale: float = 1.0,
    latency_scale: float = 1.0,
    levels: Sequence[int] = (1, 2, 4, 8),
    mode: str = "concurrency",
) -> RunResult:
    ms = []
    for lv in levels:
        thr = 400.0 * lv / (1 + 0.1 * lv) * scale
        p50 = (900.0 + 150.0 * lv) * latency_scale
        ms.append(
            measurement(
                lv,
                thr,
                p50,
                mode=mode,
                corrected=mode == "request_rate",
                metrics={
                    "nv_gpu_utilization": {"GPU-aaaa": 0.4 + 0.05 * lv},
                    "nv_gpu_memory_used_bytes": {"GPU-aaaa": 1.5e9},
                },
            )
        )
    return RunResult(
        model=model,
        model_version="1",
        server=SERVER,
        model_config={"name": model, "max_batch_size": 8, "backend": "onnxruntime"},
        config_hash="0123456789ab",
        settings={"concurrency_range": "1:8", "protocol": "grpc", "measurement_interval": 1000},
        measurements=tuple(ms),
        status="ok",
        started_at="2026-11-25T09:00:00Z",
        perfkit_version="0.1.0",
        machine=MACHINE,
    )


DEFAULT_PBTXT = 'name: "mlp"\nmax_batch_size: 8\ninstance_group [{ count: 1, kind: KIND_CPU }]\n'
BEST_PBTXT = (
    'name: "mlp"\nmax_batch_size: 16\ninstance_group [{ count: 2, kind: KIND_CPU }]\n'
    "dynamic_batching { max_queue_delay_microseconds: 200 }\n"
)


def make_tune(*, multi_objective: bool = True) -> TuneResult:
    trials = []
    spec = [
        # number, state, feasible, throughput, p99
        (0, "complete", True, 900.0, 3000.0),
        (1, "complete", True, 1100.0, 3500.0),
        (2, "failed", False, None, None),
        (3, "complete", False, 1500.0, 12000.0),
        (4, "pruned", False, None, None),
        (5, "complete", True, 1350.0, 4200.0),
        (6, "complete", True, 1250.0, 2600.0),
    ]
    for number, state, feasible, thr, p99 in spec:
        objectives: dict[str, float] = {}
        m = None
        if thr is not None and p99 is not None:
            objectives = {"throughput_infer_per_s": thr}
            if multi_objective:
                objectives["p99_latency_us"] = p99
            m = measurement(8, thr, p99 / 2)
        trials.append(
            TrialRecord(
                number=number,
                variant_name="mlp_config_default" if number == 0 else f"mlp_config_{number - 1}",
                params={
                    "instance_count": 1 + number % 3,
                    "max_batch_size": 8 * (1 + number % 2),
                    "preferred_batch_size": [4, 8],
                },
                config_pbtxt=BEST_PBTXT if number == 5 else DEFAULT_PBTXT,
                state=state,  # type: ignore[arg-type]
                feasible=feasible,
                reason={"failed": "model load failed: bad instance kind", "pruned": "worse"}.get(
                    state, "p99 over budget" if not feasible else None
                ),
                objectives=objectives,
                constraints={"p99_latency_us": (p99 or 0) - 10000.0},
                measurement=m,
                duration_s=12.0,
                overhead_s=0.4,
            )
        )
    directions = {"throughput_infer_per_s": "maximize"}
    if multi_objective:
        directions["p99_latency_us"] = "minimize"
    return TuneResult(
        model="mlp",
        study_name="mlp-cpu",
        sampler="NSGAIISampler" if multi_objective else "TPESampler",
        objectives=directions,
        constraint_bounds={"p99_latency_us": 10000.0},
        trials=tuple(trials),
        default_trial=0,
        best_trial=5,
        pareto_trials=(5, 6) if multi_objective else (5,),
        param_importances={
            "instance_count": 0.6,
            "max_batch_size": 0.3,
            "preferred_batch_size": 0.1,
        },
        default_config_pbtxt=DEFAULT_PBTXT,
        best_config_pbtxt=BEST_PBTXT,
        written_to=None,
        server=SERVER,
        started_at="2026-11-25T09:10:00Z",
        perfkit_version="0.1.0",
        machine=MACHINE,
    )


T = TypeVar("T")


def replace(obj: T, **changes: Any) -> T:
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def perfkit_main(monkeypatch: Any, capsys: Any, *args: object) -> tuple[int, str]:
    """Run the real console entry point (`perfkit.cli.main`, which maps errors to exit codes)
    in-process; returns (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["perfkit", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err
