"""The README's CI gate on unchanged code and on a planted slowdown: false-alarm and detection rates
of `perfkit compare` (issue 15, acceptance 1).

Each trial is the README's recipe ("Performance regression gates in CI"), as subprocesses of the
installed CLI: a baseline `perfkit run` (warm-up, fixed request count, interleaved --repeats,
--output-dir), then a candidate run, then `perfkit compare` with the recipe's gates. The model is a
`perfkit_identity` model on the embedded server (`--model-repository`) that sleeps --delay-us per
execution, so a trial takes seconds on 2 cores:

  * unchanged: the candidate runs the same model -> any exit 1 is a false alarm;
  * slowed: the candidate's model sleeps longer, by 15 % of the baseline's measured end-to-end
    latency at concurrency 1 (a server-side delay: latency +15 %, throughput -13 %) -> exit 1 is
    a detection.

The slowed candidate of trial i is compared with trial i's baseline (baseline run, then candidate
run, as in CI). Targets: 0/10 false alarms at the default confidence, 10/10 detections. Prints
each trial's verdicts and both rates; exit 0 when both targets hold.

    .venv/bin/python benchmarks/gate_noise.py [--trials 10] [--requests 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CONFIG = """name: "gate"
backend: "perfkit_identity"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_us" value {{ string_value: "{delay_us}" }} }}
"""
# The README recipe's gates (perfkit compare's defaults plus the error-rate gate).
GATES = [
    "--max-throughput-drop",
    "5%",
    "--max-latency-increase",
    "p99:10%",
    "--max-error-rate",
    "0%",
]
SLOWDOWN = 0.15


def _repo(root: Path, delay_us: int) -> Path:
    (root / "gate" / "1").mkdir(parents=True, exist_ok=True)
    (root / "gate" / "config.pbtxt").write_text(_CONFIG.format(delay_us=delay_us))
    return root


def _run(repo: Path, out: Path, a: argparse.Namespace) -> None:
    """Step 1 of the recipe: one measurement into an output directory."""
    cmd = [
        sys.executable, "-m", "perfkit", "run", "-m", "gate", "--model-repository", str(repo),
        "--concurrency-range", a.levels, "--request-count", str(a.requests),
        "--warmup-request-count", str(a.warmup), "--repeats", str(a.repeats),
        "--output-dir", str(out), "--no-live",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"perfkit run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _compare(base: Path, cur: Path) -> tuple[int, str]:
    """Step 2 of the recipe: the gate. Returns the exit code and the verdict line."""
    proc = subprocess.run(
        [sys.executable, "-m", "perfkit", "compare", str(base), str(cur), *GATES],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    text = " ".join((proc.stdout + proc.stderr).split())
    if proc.returncode not in (0, 1):
        raise SystemExit(f"perfkit compare failed (exit {proc.returncode}): {text[-2000:]}")
    # The verdict: "Error: N regression(s): ...", "warning: no regression shown ... inconclusive"
    # or "no regression in N check(s)".
    cut = max(text.rfind(k) for k in ("Error: ", "warning: ", "no regression in "))
    verdict = text[cut:] if cut >= 0 else text[-200:]
    return proc.returncode, verdict[:400]


def _latency_c1_us(out: Path) -> float:
    doc = json.loads((out / "results.json").read_text())
    lat = [m["latency"]["avg_us"] for m in doc["measurements"] if m["level"] == min(
        x["level"] for x in doc["measurements"])]  # fmt: skip
    return float(sum(lat)) / len(lat)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--delay-us", type=int, default=2000, help="Baseline sleep per execution.")
    p.add_argument("--levels", default="1:4:3", help="--concurrency-range (the README's).")
    p.add_argument(
        "--requests", type=int, default=1000, help="--request-count per repeat (the README's)."
    )
    p.add_argument("--warmup", type=int, default=200, help="--warmup-request-count (the README's).")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gate_noise_") as tmp:
        root = Path(tmp)
        base_repo = _repo(root / "repo_base", a.delay_us)
        slow_repo: Path | None = None
        false_alarms = detections = inconclusive = 0
        for i in range(a.trials):
            base, cur, slow = root / f"base{i}", root / f"cur{i}", root / f"slow{i}"
            _run(base_repo, base, a)
            if slow_repo is None:  # plant +15 % of the measured end-to-end latency
                extra = round(SLOWDOWN * _latency_c1_us(base))
                slow_repo = _repo(root / "repo_slow", a.delay_us + extra)
                print(f"planted slowdown: execute_delay_us {a.delay_us} -> {a.delay_us + extra}"
                      f" (+{extra} us = 15 % of {_latency_c1_us(base):.0f} us)")  # fmt: skip
            _run(base_repo, cur, a)
            code_same, same = _compare(base, cur)
            _run(slow_repo, slow, a)
            code_slow, slowed = _compare(base, slow)
            false_alarms += code_same == 1
            detections += code_slow == 1
            inconclusive += code_same == 0 and "inconclusive" in same
            print(f"trial {i + 1:2d} unchanged: exit {code_same} ({same})")
            print(f"trial {i + 1:2d} slowed:    exit {code_slow} ({slowed})", flush=True)
    n = a.trials
    print(
        f"false alarms: {false_alarms}/{n} (target 0/{n}; {inconclusive} inconclusive, exit 0); "
        f"detections: {detections}/{n} (target {n}/{n}); {time.monotonic() - started:.0f} s"
    )
    return 0 if false_alarms == 0 and detections == n else 1


if __name__ == "__main__":
    sys.exit(main())
