"""Format selection (issue 14, acceptance 4): the zoo resnet50 (ONNX) on ONNX Runtime and as
TorchScript on the pytorch backend, each checked against the ONNX model, then measured under the
same load on the embedded server.

    .venv/bin/python benchmarks/format_selection.py            # 1 s windows, 3 rounds
    .venv/bin/python benchmarks/format_selection.py --quick    # a smoke run: fewer windows, 1 round
    .venv/bin/python benchmarks/format_selection.py --threads 2  # both backends on 2 intra-op threads

Method. `perfkit.formats.prepare` makes the TorchScript candidate (the ONNX graph run by torch ops,
traced) and checks it against ONNX Runtime on seeded inputs (batch 2, FP32 atol 1e-4 + rtol 1e-3);
its errors are printed. One embedded server then serves the model; each round loads each format's
variant through the repository API (config override: the tuner's way) and measures it at client
concurrency 2 (batch 1) until 3 windows agree within 10 % (at most 6 windows). Rounds alternate
the formats so that drift on a shared machine hits both; the median round per format is reported:
throughput, p50 and p99 latency, and the ratio TorchScript / ONNX Runtime. The format the tuner
would write back is the faster one by throughput (the ONNX source when TorchScript is not at least
2 % faster: the tuner's min_gain_pct). The files perfkit added are removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from perfkit import formats, zoo
from perfkit.formats.candidates import MANIFEST, Prepared
from perfkit.launch import EmbeddedServer
from perfkit.model_repo.config import format_config, load_config
from perfkit.sweepfile import LoadSettings, MeasureSettings, SpaceSpec, TuneSweep
from perfkit.tune.evaluate import LiveEvaluator

MODEL = "resnet50"
FORMATS = ("onnxruntime", "pytorch")
MIN_GAIN_PCT = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per format (3)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads for both backends (0: defaults)"
    )
    parser.add_argument("--repo", type=Path, default=None, help="model repository (temp dir)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    # resnet50 runs in tens of ms per request on 2 cores (more when they are shared): a window
    # shorter than a second may hold no completed request.
    measure = MeasureSettings(
        window_ms=1000,
        max_windows=3 if args.quick else 6,
        stability_windows=2 if args.quick else 3,
        stability_pct=10.0,
        warmup_requests=8,
    )
    load = LoadSettings(concurrency=(args.concurrency,))
    with tempfile.TemporaryDirectory(prefix="perfkit-formats-") as tmp:
        repo = args.repo or Path(tmp) / "repo"
        started = time.monotonic()
        model_dir = zoo.build(MODEL, repo)
        base = load_config(model_dir / "config.pbtxt")
        if args.threads:
            base.parameters["intra_op_thread_count"].string_value = str(args.threads)
            (model_dir / "config.pbtxt").write_text(format_config(base))
        sweep = TuneSweep(
            source="benchmarks/format_selection.py",
            model=MODEL,
            repository=repo,
            space=SpaceSpec(formats=FORMATS),
            load=load,
            measure=measure,
        )
        prepared = formats.prepare(sweep, model_dir, base, print)
        print(f"candidates made and checked in {time.monotonic() - started:.1f} s")
        offered = prepared.sweep.space.formats
        if set(offered) != set(FORMATS):
            print(f"only {', '.join(offered)} offered: nothing to compare", file=sys.stderr)
            return 1
        results: dict[str, list[tuple[float, float, float]]] = {f: [] for f in FORMATS}
        with EmbeddedServer(repo, load_models=[MODEL], startup_timeout_s=180) as server:
            live = LiveEvaluator(
                url=server.grpc_url, protocol="grpc", model=MODEL, load=load, measure=measure
            )
            try:
                for r in range(rounds):
                    order = FORMATS if r % 2 == 0 else tuple(reversed(FORMATS))
                    for fmt in order:
                        config = formats.with_format(base, fmt)
                        outcome = live.evaluate(
                            config, {"concurrency": args.concurrency, "batch_size": 1},
                            lambda w: None,
                        )  # fmt: skip
                        m = outcome.measurement
                        if m is None or outcome.error or not m.request_count:
                            why = outcome.error or "no request completed in a window"
                            print(f"{fmt}: failed: {why}", file=sys.stderr)
                            return 1
                        lat = m.latency
                        results[fmt].append((m.throughput_infer_per_s, lat.p50_us, lat.p99_us))
                        print(
                            f"round {r + 1} {fmt:12s} {m.throughput_infer_per_s:8.1f} infer/s  "
                            f"p50 {lat.p50_us / 1000:7.2f} ms  p99 {lat.p99_us / 1000:7.2f} ms"
                            f"{'' if m.stable else '  (unstable)'}"
                        )
            finally:
                live.close()
        _report(prepared, results, args, measure)
        # No write-back here: the files perfkit added go (the source's config is unchanged).
        for rel in prepared.added:
            (model_dir / rel).unlink(missing_ok=True)
        (model_dir / MANIFEST).unlink(missing_ok=True)
    return 0


def _report(
    prepared: Prepared, results: dict[str, list[tuple[float, float, float]]],
    args: argparse.Namespace, measure: MeasureSettings,
) -> None:  # fmt: skip
    median = {f: tuple(statistics.median(v[i] for v in rows) for i in range(3))
              for f, rows in results.items()}  # fmt: skip
    print(
        f"\nformat selection: zoo {MODEL}, concurrency {args.concurrency}, batch 1, windows "
        f"{measure.window_ms} ms, {len(results[FORMATS[0]])} round(s), median round"
        + (f", {args.threads} intra-op threads" if args.threads else "")
        + (" (--quick)" if args.quick else "")
    )
    for c in prepared.candidates:
        check = "the source" if c.check is None else c.check.describe()
        print(f"  check {c.format:12s} {check}")
    for fmt in FORMATS:
        thr, p50, p99 = median[fmt]
        print(f"  {fmt:12s} {thr:8.1f} infer/s  p50 {p50 / 1000:7.2f} ms  p99 {p99 / 1000:7.2f} ms")
    ratio = median["pytorch"][0] / median["onnxruntime"][0]
    p99_ratio = median["pytorch"][2] / median["onnxruntime"][2]
    print(f"  TorchScript / ONNX Runtime: throughput x{ratio:.2f}, p99 x{p99_ratio:.2f}")
    if (ratio - 1.0) * 100.0 >= MIN_GAIN_PCT:
        print("  written back: pytorch (platform pytorch_libtorch, 1/model.pt kept)")
    else:
        print("  written back: nothing (the ONNX source on onnxruntime stays; 1/model.pt removed)")


if __name__ == "__main__":
    sys.exit(main())
