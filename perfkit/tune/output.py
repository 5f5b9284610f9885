"""A study's results: the `TuneResult`, the output directory (Model Analyzer layout), the write-back.

Output directory:

    <out>/study.db                                   the Optuna study (default storage)
    <out>/output_model_repository/<model>_config_default/config.pbtxt
    <out>/output_model_repository/<model>_config_<n>/config.pbtxt   one per measured variant
    <out>/results/metrics-model-inference.csv        Model Analyzer's columns
    <out>/results/metrics-model-gpu.csv              MA's GPU table (per trial and GPU; not written
                                                     without GPU metrics, as MA)
    <out>/results/trials.csv, results.json           perfkit's tidy CSV and JSON (report.schema)

Write-back: the best config replaces `<repo>/<model>/config.pbtxt`; the original is kept as
`config.pbtxt.orig` (or `config.pbtxt.<UTC timestamp>.orig` when that exists already).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from perfkit import __version__
from perfkit.machine import machine_info
from perfkit.model_repo.config import format_config, instance_summary, parse_config
from perfkit.model_repo.repository import write_text_atomic
from perfkit.report import ma_csv
from perfkit.report.summary import load_text, same_load
from perfkit.results import ServerInfo, TrialRecord, TuneResult
from perfkit.tune.objective import Objective
from perfkit.tune.records import A_DUP, A_KEY, is_default, record_of

logger = logging.getLogger(__name__)

VARIANTS_DIR = "output_model_repository"
RESULTS_DIR = "results"


def _pareto(records: Sequence[TrialRecord], objective: Objective) -> list[TrialRecord]:
    names = [(n, d) for n, d in objective.targets]

    def dominates(a: TrialRecord, b: TrialRecord) -> bool:
        better = False
        for name, direction in names:
            x, y = a.objectives[name], b.objectives[name]
            if direction == "minimize":
                x, y = -x, -y
            if x < y:
                return False
            if x > y:
                better = True
        return better

    return [r for r in records if not any(dominates(o, r) for o in records if o is not r)]


@dataclass(frozen=True, slots=True)
class _Comparison:
    """The default measurements a best is compared with."""

    # The default config at the best's load (None: not measured there).
    same_load: TrialRecord | None
    # The default config's best feasible measurement over every load it was measured at.
    best: TrialRecord | None
    # The one the gain is computed against (`TuneResult.default_trial`).
    reference: TrialRecord | None


def _split_key(t: FrozenTrial) -> tuple[str, str]:
    config, _, load = str(t.user_attrs.get(A_KEY, "")).partition("/")
    return config, load


def _compare(
    frozen: Sequence[FrozenTrial],
    records: Sequence[TrialRecord],
    candidates: Sequence[TrialRecord],
    best: TrialRecord | None,
    objective: Objective,
) -> _Comparison:
    """Pick the default measurements to compare `best` with (see `build_result`)."""
    by_number = {r.number: r for r in records}
    keys = {t.number: _split_key(t) for t in frozen if t.number in by_number}
    defaults = [t for t in frozen if is_default(t) and t.number in by_number]
    # The first default trial is the baseline; its config hash identifies "the default config".
    base_hash = keys[defaults[0].number][0] if defaults else None
    mine = [r for r in records if base_hash and keys[r.number][0] == base_hash]
    primary, direction = objective.primary()
    pick = max if direction == "maximize" else min
    feasible = [r for r in mine if r in candidates]
    default_best = pick(feasible, key=lambda r: r.objectives[primary]) if feasible else None
    same: TrialRecord | None = None
    if best is not None:
        at_load = [r for r in mine if keys[r.number][1] == keys[best.number][1]]
        same = next((r for r in at_load if r.state == "complete"), at_load[0] if at_load else None)
    if same is not None and same in candidates:
        reference: TrialRecord | None = same
    elif default_best is not None:
        # Infeasible (or not measured) at the best's load: Model Analyzer's rule, each config's
        # best measurement under the constraints over the loads it was measured at.
        reference = default_best
    elif same is not None:
        reference = same
    else:
        baseline = [by_number[t.number] for t in defaults]
        reference = next((r for r in baseline if r.state == "complete"), None) or next(
            iter(baseline), None
        )
    return _Comparison(same_load=same, best=default_best, reference=reference)


def build_result(
    study: optuna.Study,
    objective: Objective,
    *,
    model: str,
    sampler: str,
    default_config_pbtxt: str,
    server: ServerInfo,
    started_at: str,
    messages: Sequence[str] = (),
    min_gain_pct: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Every measured trial of the study (all workers) as a TuneResult, best and Pareto front picked.

    The best is compared with the default config measured at the best's client load (the tuner
    measures it after the search, `Tuner.ensure_default_at_best`), so the gain is the config's, not
    the load's: that measurement is `default_trial`. When the default misses the constraints at that
    load (or was not measured there), the comparison falls back to the default's best measurement
    under the constraints over every load it was measured at (Model Analyzer's rule), which is
    `default_best_trial` in any case. `min_gain_pct` applies to that same comparison.
    """
    frozen = study.get_trials(deepcopy=False)
    records: list[TrialRecord] = []
    for t in frozen:
        record = record_of(t, objective)
        if record is not None:
            records.append(record)
    candidates = [r for r in records if r.state == "complete" and r.feasible and r.objectives]
    pareto: list[TrialRecord] = []
    best: TrialRecord | None = None
    primary, direction = objective.primary()
    if candidates:
        pareto = _pareto(candidates, objective) if len(objective.targets) > 1 else []
        pool = pareto or candidates
        pick = max if direction == "maximize" else min
        best = pick(pool, key=lambda r: r.objectives[primary])
    cmp = _compare(frozen, records, candidates, best, objective)
    reference = cmp.reference
    gain: float | None = None
    if best is not None and reference is not None and reference in candidates:
        gain = objective.gain_pct(best.objectives[primary], reference.objectives[primary])
        # Keep the default unless the best beats it by more than the noise margin.
        # (With several objectives only when the default is on the Pareto front: else it is dominated.)
        if best is not reference and (not pareto or reference in pareto) and gain < min_gain_pct:
            messages = [
                *messages,
                f"the best variant is only {gain:.1f}% better than the default "
                f"(below min_gain_pct {min_gain_pct:g}%): keeping the default",
            ]
            best, gain = reference, 0.0
    if best is not None and best is reference:
        gain = 0.0
    importances: dict[str, float] = {}
    complete = [t for t in frozen if t.state == TrialState.COMPLETE and t.params]
    if len(objective.targets) == 1 and len(complete) >= 4:
        try:
            with warnings.catch_warnings():
                # "Some regimes ... have less than 2 trials": expected with a small budget.
                warnings.simplefilter("ignore", UserWarning)
                found = optuna.importance.get_param_importances(study)
            importances = {k: float(v) for k, v in found.items()}
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            logger.debug("no parameter importances: %s", exc)
    recorded: dict[str, Any] = dict(settings or {})
    recorded["deduplicated_draws"] = sum(1 for t in frozen if A_DUP in t.user_attrs)
    recorded["default_comparison"] = _comparison_note(best, cmp)
    return TuneResult(
        model=model,
        study_name=study.study_name,
        sampler=sampler,
        objectives=dict(objective.targets),
        constraint_bounds=objective.bounds(),
        trials=tuple(records),
        default_trial=None if reference is None else reference.number,
        best_trial=None if best is None else best.number,
        pareto_trials=tuple(r.number for r in pareto),
        param_importances=importances,
        default_config_pbtxt=default_config_pbtxt,
        best_config_pbtxt=None if best is None else best.config_pbtxt,
        written_to=None,
        server=server,
        started_at=started_at,
        perfkit_version=__version__,
        machine=machine_info(),
        messages=tuple(messages),
        default_best_trial=None if cmp.best is None else cmp.best.number,
        gain_pct=gain,
        settings=recorded,
    )


def _comparison_note(best: TrialRecord | None, cmp: _Comparison) -> str:
    """How the default was compared, for results.json (settings.default_comparison)."""
    if best is None or cmp.reference is None:
        return "none: nothing to compare"
    if cmp.same_load is not None and cmp.reference is cmp.same_load:
        return "same load: the default measured at the best's client load"
    if cmp.same_load is not None:
        return "default's best under the constraints: the default misses them at the best's load"
    return "default's best under the constraints: the default was not measured at the best's load"


def trial(result: TuneResult, number: int | None) -> TrialRecord | None:
    return next((t for t in result.trials if t.number == number), None)


@dataclass(frozen=True, slots=True)
class WriteBack:
    diff: str
    written_to: Path | None
    backup: Path | None
    reason: str


def write_back(result: TuneResult, model_dir: Path, *, dry_run: bool) -> WriteBack:
    """Write the best config into the model's directory (original backed up), or only diff it."""
    target = model_dir / "config.pbtxt"
    best = trial(result, result.best_trial)
    if best is None or not result.best_config_pbtxt:
        return WriteBack("", None, None, "no variant met the constraints; nothing written")
    if result.best_trial == result.default_trial:
        return WriteBack("", None, None, "the default config is the best; nothing written")
    current = target.read_text(encoding="utf-8") if target.exists() else ""
    new = result.best_config_pbtxt
    current_config = parse_config(current, str(target))
    if current_config == parse_config(new, best.variant_name):
        return WriteBack("", None, None, f"{target} already holds the best config")
    # Diff the canonical text of both, so the diff shows what changed, not how it was written.
    diff = "".join(
        difflib.unified_diff(
            format_config(current_config).splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{target} (current)",
            tofile=f"{target} ({best.variant_name})",
        )
    )
    if dry_run:
        return WriteBack(diff, None, None, "--dry-run: nothing written")
    backup = target.with_name("config.pbtxt.orig")
    if backup.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = target.with_name(f"config.pbtxt.{stamp}.orig")
    if current:
        write_text_atomic(backup, current)
    write_text_atomic(target, new)
    return WriteBack(diff, target, backup if current else None, f"written to {target}")


def write_outputs(result: TuneResult, out_dir: Path) -> list[Path]:
    """The MA-layout variant configs (default included), MA's CSV, and the tidy CSV + JSON."""
    paths: list[Path] = []
    variants = out_dir / VARIANTS_DIR
    names = {t.variant_name for t in result.trials if t.config_pbtxt}
    for t in result.trials:
        if t.config_pbtxt:
            write_text_atomic(variants / t.variant_name / "config.pbtxt", t.config_pbtxt)
    # Variants of another study in the same output directory (e.g. an edited sweep) would mislead.
    for stale in variants.glob(f"{result.model}_config_*/config.pbtxt"):
        if stale.parent.name not in names:
            stale.unlink()
            with contextlib.suppress(OSError):
                stale.parent.rmdir()
    results = out_dir / RESULTS_DIR
    paths.append(ma_csv.write(result, results))
    gpu_csv = ma_csv.write_gpu(result, results)
    if gpu_csv is not None:
        paths.append(gpu_csv)
    try:
        from perfkit.report.schema import write_tune
    except ImportError:  # the schema module is optional at this layer
        return paths
    paths.extend(write_tune(result, results))
    return paths


def with_written(result: TuneResult, wb: WriteBack) -> TuneResult:
    return replace(result, written_to=None if wb.written_to is None else str(wb.written_to))


def metric_text(name: str, value: float) -> str:
    """A metric value with its unit: "812.0 infer/s", "4.10 ms"."""
    if name.endswith("_us"):
        return f"{value / 1000.0:,.2f} ms"
    if name == "throughput_infer_per_s":
        return f"{value:,.1f} infer/s"
    return f"{value:,.4g}"


def comparison_text(result: TuneResult, objective: Objective) -> str:
    """One line on what the default was compared at, e.g. "best and default both measured at
    concurrency 16 (+41%); the default's best under the constraints: 812.0 infer/s at concurrency 8"."""
    best = trial(result, result.best_trial)
    default = trial(result, result.default_trial)
    if best is None or default is None:
        return ""
    primary, _ = objective.primary()
    if same_load(best, default):
        head = f"best and default both measured at {load_text(best)}"
    else:
        head = f"best at {load_text(best)}, default at {load_text(default)}"
    if result.gain_pct is not None and best.number != default.number:
        head += f" ({result.gain_pct:+.0f}%)"
    top = trial(result, result.default_best_trial)
    if top is not None and top.number != default.number and primary in top.objectives:
        head += (
            f"; the default's best under the constraints: "
            f"{metric_text(primary, top.objectives[primary])} at {load_text(top)}"
        )
    return head


def describe_config(pbtxt: str) -> str:
    """Platform/backend, max batch size, instances and dynamic batching of a config, for the table."""
    if not pbtxt:
        return ""
    c = parse_config(pbtxt)
    dyn = "off"
    if c.HasField("dynamic_batching"):
        sizes = ",".join(str(s) for s in c.dynamic_batching.preferred_batch_size)
        dyn = f"[{sizes}]@{c.dynamic_batching.max_queue_delay_microseconds}us"
    return f"mbs{c.max_batch_size} {instance_summary(c)} dyn {dyn}"
