"""perfkit_server on a GPU: served vs raw throughput of TorchScript resnet50 on CUDA, in images/s.

From one run it prints:
  0. the GPU facts: nvidia-smi, torch and its CUDA and cuDNN, NVML's visible GPUs
     (`--facts-only` stops here; `make gpu-check` runs that first);
  1. raw: the zoo's `resnet50_pt` converted to FP16 (torch.jit.load, .half(), torch.jit.save: a
     model.pt whose config says TYPE_FP16; `--precision fp32` keeps FP32), called in-process on
     cuda:0 the way perfkit_server's pytorch backend calls it (torch.inference_mode, a CUDA stream
     of its own), the input batch already on the GPU, at batch sizes 1..256: images/s per batch,
     timed between two torch.cuda.synchronize() after a warm-up;
  2. served: that same model.pt served by perfkit_server (KIND_GPU, `--instances` on GPU 0,
     dynamic batching with max_batch_size and the largest preferred batch size = the best raw
     batch) and driven by perfkit's own load generator (`perfkit.load.run`) over gRPC: one image
     per request (`--request-batch`), inputs and outputs in system shared memory
     (`--shared-memory none` sends them in the gRPC messages; `cuda` puts them in GPU memory),
     `--workers` generator processes, a concurrency of (instances + 2) x the batch
     (each instance running a batch, one more queued, one in transit), three windows of
     `--served-seconds` / 3;
  3. served/raw, the target being >= 0.90 (issue 11), and the GPU utilization NVML showed while
     served (perfkit's --collect-metrics from the server's nv_gpu_utilization).

Raw is the module's own speed on its best batch, with no copy between host and GPU; served pays
for everything a client's request costs: the request, the batch assembled on the host, the copy to
the GPU and back, the reply. The best raw batch is the smallest within 3 % of the fastest (a GPU's
throughput flattens out at large batches; a smaller batch needs fewer requests in flight), and the
ratio divides by the fastest raw figure.

Exit status: 0 when served/raw >= 0.90; 1 when below it or a measurement failed; 2 when this
host has no usable NVIDIA GPU (no torch with CUDA, no device, or NVML sees none): nothing is
measured and the reason is printed. About 1.5 minutes on one H100/H200.

    python benchmarks/gpu_efficiency.py [--facts-only | --print-requirements]
        [--precision fp16|fp32] [--instances 2]
        [--batches 1,2,4,...,256] [--raw-seconds 1.5] [--served-seconds 15] [--workers 2]
        [--shared-memory system|cuda|none] [--request-batch 1] [--concurrency N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.90
EXIT_NO_GPU = 2
MODEL = "resnet50_pt"  # the zoo's TorchScript resnet50
SERVED = "resnet50_gpu"
DEFAULT_BATCHES = "1,2,4,8,16,32,64,128,256"


# -- 0. facts --------------------------------------------------------------------------------------


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({' '.join(cmd)}: {exc})"
    return (proc.stdout + proc.stderr).strip()


def gpu_facts() -> tuple[Any, str | None]:
    """Print what this host has; return (torch, None) when a GPU is usable, else (None, why)."""
    print("GPU facts")
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"  CUDA_VISIBLE_DEVICES: {cvd if cvd is not None else '(unset)'}")
    if shutil.which("nvidia-smi"):
        query = "index,name,uuid,driver_version,memory.total,power.limit,clocks.max.sm"
        out = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"])
        print("  nvidia-smi:\n    " + out.replace("\n", "\n    "))
    else:
        print("  nvidia-smi: not on PATH")
    try:
        import torch
    except ImportError as exc:
        return None, f"torch is not installed ({exc}): install a CUDA build of torch"
    backend: Any = torch.backends.cudnn  # untyped in torch's stubs
    cudnn = backend.version() if backend.is_available() else None
    print(f"  torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}")
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build: install a CUDA build"
    if not torch.cuda.is_available():
        return None, (
            f"torch (CUDA {torch.version.cuda}) sees no GPU: no NVIDIA driver, no device, "
            "or CUDA_VISIBLE_DEVICES hides them"
        )
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(
            f"  cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, "
            f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs"
        )
    from perfkit.nvml import Nvml

    nvml = Nvml.open()
    if nvml is None:
        return None, "NVML does not initialize (nvidia-ml-py missing, or no driver)"
    try:
        gpus, readings = nvml.gpus(), nvml.read()
    finally:
        nvml.close()
    for g, r in zip(gpus, readings, strict=True):
        used = (r.memory_used_bytes or 0) / 2**30
        print(
            f"  NVML: device {g.device_id} = NVML {g.nvml_index} {g.name} {g.uuid}, "
            f"{used:.1f} GiB used, {r.power_usage_w} W of {r.power_limit_w} W, "
            f"utilization {r.utilization}"
        )
    if not gpus:
        return None, "NVML shows no visible GPU"
    if len(gpus) != torch.cuda.device_count():
        return None, (
            f"NVML shows {len(gpus)} GPU(s) and torch {torch.cuda.device_count()}: they must agree"
        )
    return torch, None


# -- 1. raw ----------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """The model as served: its repository directory, file and input/output names."""

    repo: Path
    model_pt: Path
    input_name: str
    output_name: str
    dims: tuple[int, ...]
    precision: str


def prepare(torch: Any, repo: Path, precision: str) -> Prepared:
    """The zoo's resnet50_pt built into `repo`, converted to FP16 when asked, as `SERVED`."""
    from tritonclient.grpc import model_config_pb2 as mc

    from perfkit import zoo
    from perfkit.model_repo.config import format_config, load_config

    source = zoo.build(MODEL, repo)
    config = load_config(source / "config.pbtxt")
    (inp,), (out,) = config.input, config.output
    target = repo / SERVED / "1" / "model.pt"
    target.parent.mkdir(parents=True)
    module = torch.jit.load(str(source / "1" / "model.pt"), map_location="cpu")
    if precision == "fp16":
        # ScriptModule.half() casts its parameters and buffers; the scripted forward has no dtype
        # of its own, so it then computes in FP16 (cuDNN's tensor cores).
        module = module.half()
        for tensor in (*config.input, *config.output):
            tensor.data_type = mc.TYPE_FP16
    torch.jit.save(module, str(target))
    config.name = SERVED
    shutil.rmtree(source)
    (repo / SERVED / "config.pbtxt").write_text(format_config(config))
    return Prepared(repo, target, inp.name, out.name, tuple(inp.dims), precision)


def check_fp16(torch: Any, prepared: Prepared, fp32_pt: bytes | None) -> None:
    """Print how far the FP16 logits are from FP32's (same weights), for a batch of 8."""
    if fp32_pt is None:
        return
    import io

    x = torch.randn(8, *prepared.dims, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = torch.jit.load(io.BytesIO(fp32_pt), map_location="cuda:0")(x.cuda()).float()
        got = torch.jit.load(str(prepared.model_pt), map_location="cuda:0")(x.cuda().half())
    err = (got.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-9)
    agree = (got.float().argmax(1) == ref.argmax(1)).float().mean().item()
    print(f"  FP16 vs FP32 logits: max error {err:.2%} of the largest, top-1 agreement {agree:.0%}")


def raw_rate(torch: Any, module: Any, prepared: Prepared, batch: int, seconds: float) -> float:
    """Images/s of `module` on cuda:0 at `batch`: calls on a stream of its own, as the backend."""
    dtype = torch.float16 if prepared.precision == "fp16" else torch.float32
    stream = torch.cuda.Stream(device="cuda:0")
    with torch.inference_mode(), torch.cuda.stream(stream):
        x = torch.randn(batch, *prepared.dims, device="cuda:0", dtype=dtype)
        for _ in range(5):  # TorchScript's profiling runs, cuDNN's algorithm choice
            module(x)
        stream.synchronize()
        start = time.perf_counter()
        module(x)
        stream.synchronize()
        runs = max(3, int(seconds / max(time.perf_counter() - start, 1e-6)))
        start = time.perf_counter()
        for _ in range(runs):
            module(x)
        stream.synchronize()
        elapsed = time.perf_counter() - start
    return runs * batch / elapsed


def raw_sweep(
    torch: Any, prepared: Prepared, batches: list[int], seconds: float
) -> tuple[int, float, Any]:
    """Every batch size; returns (the batch to serve, the fastest images/s, the module)."""
    module = torch.jit.load(str(prepared.model_pt), map_location="cuda:0")
    module.eval()
    rates: dict[int, float] = {}
    for b in batches:
        try:
            rates[b] = raw_rate(torch, module, prepared, b, seconds)
        except torch.cuda.OutOfMemoryError:
            print(f"    raw batch {b:>4}: out of GPU memory, larger batches skipped")
            torch.cuda.empty_cache()
            break
        print(f"    raw batch {b:>4}: {rates[b]:10.1f} images/s")
    top = max(rates.values())
    best = min(b for b, r in rates.items() if r >= 0.97 * top)
    return best, top, module


# -- 2. served -------------------------------------------------------------------------------------


def write_served_config(prepared: Prepared, batch: int, instances: int) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from perfkit.model_repo.config import format_config, load_config

    path = prepared.repo / SERVED / "config.pbtxt"
    config = load_config(path)
    config.max_batch_size = batch
    del config.instance_group[:]
    group = config.instance_group.add()
    group.kind, group.count = mc.ModelInstanceGroup.KIND_GPU, instances
    group.gpus.append(0)
    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(sorted({max(1, batch // 2), batch}))
    batching.max_queue_delay_microseconds = 2000
    path.write_text(format_config(config))


@dataclass
class Served:
    images_per_s: float
    status: str
    utilization: float | None
    p99_ms: float
    notes: list[str]


def served_rate(
    server: Any, concurrency: int, seconds: float, workers: int, shared_memory: str, batch: int
) -> Served:
    from perfkit.load import run
    from perfkit.load.spec import (
        ConcurrencyLoad,
        InputSpec,
        MeasureSpec,
        MetricsSpec,
        SweepSpec,
        TargetSpec,
    )

    spec = SweepSpec(
        target=TargetSpec(url=server.grpc_url, protocol="grpc", model=SERVED),
        inputs=InputSpec(batch_size=batch, shared_memory=shared_memory),  # type: ignore[arg-type]
        measure=MeasureSpec(
            interval_ms=int(seconds * 1000 / 3),
            stability_pct=1000.0,  # the three windows as they come
            max_trials=3,
            warmup_request_count=4 * concurrency,
        ),
        load=ConcurrencyLoad(levels=(concurrency,)),
        workers=workers,
        metrics=MetricsSpec(url=server.metrics_url, interval_ms=500),
    )
    result = run(spec)
    if not result.measurements:
        raise RuntimeError(f"no measurement ({result.status}): {'; '.join(result.messages)}")
    m = result.measurements[0]
    util = m.metrics.get("gpu_utilization", {})
    notes = [
        f"client: {m.client_cpu_pct:.0f} % of a core, {m.client_cpu_us_per_request:.0f} CPU-µs "
        f"per request{'; THE GENERATOR WAS THE BOTTLENECK' if m.generator_saturated else ''}",
        *m.warnings,
        *result.messages,
    ]
    b = m.server
    if b is not None:
        mean_batch = b.inference_count / max(b.execution_count, 1)
        notes.append(
            f"server per request: queue {b.queue_us:.0f} µs, compute input "
            f"{b.compute_input_us:.0f} / infer {b.compute_infer_us:.0f} / output "
            f"{b.compute_output_us:.0f} µs, overhead {b.overhead_us:.0f} µs; mean batch {mean_batch:.1f}"
        )
    return Served(
        images_per_s=float(m.throughput_infer_per_s),
        status=str(result.status),
        utilization=max(util.values()) if util else None,
        p99_ms=m.latency.p99_us / 1000,
        notes=notes,
    )


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"  ({what}: {time.perf_counter() - start:.0f} s)")


def real_nvml_env() -> dict[str, str]:
    """This environment without a test's FAKE NVML (PERFKIT_FAKE_NVML), for the server."""
    env = dict(os.environ)
    env.pop("PERFKIT_FAKE_NVML", None)
    return env


def server_args(shared_memory: str) -> list[str]:
    """perfkit_server's flags: client shared memory is off unless asked for (as Triton's)."""
    return [] if shared_memory == "none" else ["--allow-client-shm=true"]


def test_requirements(pyproject: Path) -> list[str]:
    """The `test` extra's requirements for `make gpu-check`, perfkit's own extras expanded, less
    nvidia-pytriton: it serves only the `triton` tests, and its numpy<2 pin would shadow the numpy
    the host's CUDA torch and CuPy were built with."""
    import tomllib

    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    out: list[str] = []

    def add(extra: str) -> None:
        for req in extras[extra]:
            if req.startswith("perfkit["):
                for name in req[len("perfkit[") : req.index("]")].split(","):
                    add(name.strip())
            elif not req.startswith("nvidia-pytriton") and req not in out:
                out.append(req)

    add("test")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--facts-only", action="store_true", help="print the GPU facts and stop")
    ap.add_argument(
        "--print-requirements",
        action="store_true",
        help="print what make gpu-check installs besides perfkit (the test extra less "
        "nvidia-pytriton) and stop",
    )
    ap.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--batches", default=DEFAULT_BATCHES, help="raw batch sizes, comma-separated")
    ap.add_argument("--raw-seconds", type=float, default=1.5, help="per raw batch size")
    ap.add_argument("--served-seconds", type=float, default=15.0, help="three windows in all")
    ap.add_argument("--instances", type=int, default=2, help="KIND_GPU instances on GPU 0")
    ap.add_argument("--workers", type=int, default=2, help="load-generator processes")
    ap.add_argument("--shared-memory", choices=["system", "cuda", "none"], default="system")
    ap.add_argument("--request-batch", type=int, default=1, help="images per request")
    ap.add_argument(
        "--concurrency", type=int, default=0, help="0: (instances + 2) x batch / request batch"
    )
    args = ap.parse_args()
    if args.print_requirements:
        print("\n".join(test_requirements(Path(__file__).resolve().parents[1] / "pyproject.toml")))
        return 0

    torch, why = gpu_facts()
    if torch is None:
        print(f"\nNO USABLE GPU: {why}.\ngpu_efficiency needs an NVIDIA GPU; nothing measured.")
        return EXIT_NO_GPU
    if args.facts_only:
        return 0
    batches = sorted({int(b) for b in args.batches.split(",")})
    ok = True
    with tempfile.TemporaryDirectory(prefix="perfkit-gpu-eff-") as tmp:
        repo = Path(tmp) / "repo"
        print(f"\n1. raw: TorchScript resnet50 ({args.precision}) on cuda:0, by batch size")
        with timed("model build and conversion"):
            fp32_pt: bytes | None = None
            from perfkit import zoo

            if args.precision == "fp16":
                fp32_pt = (zoo.build(MODEL, Path(tmp) / "fp32") / "1" / "model.pt").read_bytes()
            prepared = prepare(torch, repo, args.precision)
            check_fp16(torch, prepared, fp32_pt)
        with timed("raw sweep"):
            best, raw_top, module = raw_sweep(torch, prepared, batches, args.raw_seconds)
        del module
        torch.cuda.empty_cache()
        # Every instance busy with a batch and one more batch queued, plus one in transit.
        concurrency = args.concurrency or max(1, (args.instances + 2) * best // args.request_batch)
        print(
            f"  fastest {raw_top:.1f} images/s; served with max_batch_size {best} "
            f"(the smallest batch within 3 % of the fastest)"
        )
        write_served_config(prepared, max(best, args.request_batch), args.instances)

        print(
            f"\n2. served: perfkit_server, KIND_GPU x{args.instances} on GPU 0, dynamic batching "
            f"(max {best}), gRPC, {args.request_batch} image(s) per request, concurrency "
            f"{concurrency}, shared memory {args.shared_memory}, {args.workers} generator "
            "process(es)"
        )
        from perfkit.launch import EmbeddedServer

        with (
            timed("served"),
            EmbeddedServer(
                repo,
                load_models=[SERVED],
                extra_args=server_args(args.shared_memory),
                startup_timeout_s=300,
                env=real_nvml_env(),
            ) as server,
        ):
            try:
                served = served_rate(
                    server,
                    concurrency,
                    args.served_seconds,
                    args.workers,
                    args.shared_memory,
                    args.request_batch,
                )
            except Exception as exc:
                print(f"  served measurement FAILED: {type(exc).__name__}: {exc}")
                return 1
        util = "n/a" if served.utilization is None else f"{served.utilization:.0%}"
        print(
            f"  {served.images_per_s:.1f} images/s ({served.status}); GPU utilization {util}; "
            f"p99 {served.p99_ms:.1f} ms"
        )
        for note in served.notes:
            print(f"    {note}")
        ratio = served.images_per_s / raw_top
        met = ratio >= TARGET_RATIO
        ok = ok and met
        print(
            f"\n3. resnet50 {args.precision}: raw {raw_top:.1f} images/s (fastest batch), "
            f"served over gRPC {served.images_per_s:.1f} images/s: served/raw {ratio:.2f} "
            f">= {TARGET_RATIO:g} {'ok' if met else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
