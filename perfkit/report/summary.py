"""The one summary sentence of a tune (Model Analyzer's), printed by `perfkit tune`, `perfkit report`
and the HTML report alike. Pure and stdlib only: a `TuneResult` in, plain text out.
"""

from __future__ import annotations

import re

from perfkit.report.labels import describe_load, metric_name
from perfkit.results import TrialRecord, TuneResult


def load_text(t: TrialRecord) -> str:
    """The client load a trial was measured at, in words ("concurrency 16")."""
    return describe_load(t.params) or "the sweep's load"


def same_load(a: TrialRecord, b: TrialRecord) -> bool:
    """Whether two trials were measured at the same client load. The load in words names every
    load dimension (concurrency, request rate, batch size), so equal words are an equal load."""
    return describe_load(a.params) == describe_load(b.params)


def config_summary(pbtxt: str) -> str:
    """Model Analyzer's description of a config: platform, max batch size, instances, batching."""
    # Comments are no config (an ensemble's or a model group's variant text holds other models'
    # configs as commented blocks).
    pbtxt = "\n".join(line for line in pbtxt.splitlines() if not line.lstrip().startswith("#"))
    parts = []
    platform = re.search(r'^\s*(?:platform|backend)\s*:\s*"([^"]+)"', pbtxt, re.M)
    if platform:
        parts.append(f"platform {platform.group(1)}")
    mbs = re.search(r"^\s*max_batch_size\s*:\s*(\d+)", pbtxt, re.M)
    parts.append(f"max batch size {mbs.group(1) if mbs else 0}")
    groups = re.findall(r"count\s*:\s*(\d+)[^}]*?kind\s*:\s*KIND_(\w+)", pbtxt)
    if groups:
        parts.append("instance group " + " + ".join(f"{c}:{k}" for c, k in groups))
    parts.append("dynamic batching " + ("enabled" if "dynamic_batching" in pbtxt else "disabled"))
    return ", ".join(parts)


def _counts(result: TuneResult) -> str:
    # A measurement is a trial that measured its variant to the end: a complete trial, or a failed
    # one that holds its measurement (requests failed during it). So the default's extra
    # measurement at the best's load counts (it is one more, on top of the trials budget); a
    # pruned trial (stopped after its first windows) and one that failed before measuring do not;
    # a draw of a variant measured already (`duplicate_of`) is no trial in `result.trials` at all.
    # Configurations are the distinct config.pbtxt among the measurements: the default measured
    # at two loads is one configuration.
    measured = [t for t in result.trials if t.state == "complete" or t.measurement is not None]
    configs = len({t.config_pbtxt or t.variant_name for t in measured})
    return f"In {len(measured)} measurements across {configs} configurations, "


def _gain_pct(result: TuneResult, best: TrialRecord, default: TrialRecord) -> float | None:
    """`result.gain_pct`, or for a result that does not record it the same comparison on the
    primary objective (None when either misses it)."""
    if result.gain_pct is not None:
        return result.gain_pct
    primary, direction = _primary(result)
    b, d = best.objectives.get(primary), default.objectives.get(primary)
    if b is None or d is None:
        return None
    if d == 0:
        return 0.0
    return (b - d) / d * 100.0 if direction == "maximize" else (d - b) / d * 100.0


def _primary(result: TuneResult) -> tuple[str, str]:
    return next(iter(result.objectives.items()), ("throughput_infer_per_s", "maximize"))


def _where(result: TuneResult) -> str:
    """Under which constraints and on what the tune ran, e.g. "under the given constraints (p99
    latency ≤ 10 ms) on CPU x86_64"."""
    # GPU bounds are maxima (MB, W); the tuner's other bound (throughput) a minimum.
    gpu_max = {"gpu_used_memory_mb": "GPU memory ≤ {:g} MB", "gpu_power_w": "GPU power ≤ {:g} W"}
    constraints = ", ".join(
        f"{metric_name(k)} ≤ {v / 1000.0:g} ms"
        if k.endswith("_us")
        else gpu_max[k].format(v)
        if k in gpu_max
        else f"{k} ≥ {v:g}"
        for k, v in result.constraint_bounds.items()
    )
    machine = result.machine
    on = "GPU(s) " + ", ".join(machine.gpus) if machine.gpus else "CPU " + machine.cpu
    return f"under the given constraints ({constraints}) on {on}" if constraints else f"on {on}"


def summary_sentence(result: TuneResult) -> str:
    """Model Analyzer's summary sentence for the primary (first) objective, e.g. "In 12
    measurements across 9 configurations, mlp_config_7 is 41% better than the default configuration
    at maximizing throughput, under the given constraints (p99 latency ≤ 10 ms) on CPU x86_64 (both
    at concurrency 16). Its config: ...". The gain is `TuneResult.gain_pct`: the best against the
    default measured at the same client load, or the default's best under the constraints when it
    misses them there (see `perfkit.tune.output.build_result`)."""
    head = _counts(result)
    primary, direction = _primary(result)
    what = f"{direction.removesuffix('e')}ing {metric_name(primary)}, {_where(result)}"
    best, default = result.trial(result.best_trial), result.trial(result.default_trial)
    if best is None:
        return head + f"no configuration satisfied the constraints {_where(result)}."
    at = f"at {load_text(best)}"
    config = config_summary(best.config_pbtxt or result.best_config_pbtxt or "")
    if default is None or not default.objectives or not default.feasible:
        why = "missed the constraints" if default and default.state == "complete" else "failed"
        where = f" at {load_text(default)}" if default is not None else ""
        return head + (
            f"{best.variant_name} is the best at {what} ({at}; the default configuration "
            f"{why}{where}). Its config: {config}."
        )
    gain = _gain_pct(result, best, default)
    if best.number == default.number or gain is None or gain <= 0:
        return head + (
            f"{best.variant_name} provides no gain over the default configuration at {what} ({at})."
        )
    if same_load(best, default):
        compared = f"both {at}"
    else:
        # The default misses the constraints at the best's load (or was not measured there): its
        # best measurement under the constraints, at another load, is the reference (Model
        # Analyzer's rule).
        compared = (
            f"{best.variant_name} {at}, the default at its best under the constraints, "
            f"{load_text(default)}"
        )
    return head + (
        f"{best.variant_name} is {gain:.0f}% better than the default configuration at {what} "
        f"({compared}). Its config: {config}."
    )
