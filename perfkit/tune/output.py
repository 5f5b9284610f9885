"""A study's results: the `TuneResult`, the output directory (Model Analyzer layout), the write-back.

Output directory:

    <out>/study.db                                   the Optuna study (default storage)
    <out>/output_model_repository/<model>_config_default/config.pbtxt
    <out>/output_model_repository/<model>_config_<n>/config.pbtxt   one per measured variant
    <out>/results/metrics-model-inference.csv        Model Analyzer's columns
    <out>/results/trials.csv, results.json           perfkit's tidy CSV and JSON (report.schema)

Write-back: the best config replaces `<repo>/<model>/config.pbtxt`; the original is kept as
`config.pbtxt.orig` (or `config.pbtxt.<UTC timestamp>.orig` when that exists already).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import platform
import socket
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from perfkit import __version__
from perfkit.model_repo.config import format_config, instance_summary, parse_config
from perfkit.model_repo.repository import write_text_atomic
from perfkit.report import ma_csv
from perfkit.results import MachineInfo, ServerInfo, TrialRecord, TuneResult
from perfkit.tune.objective import Objective
from perfkit.tune.tuner import is_default, record_of

logger = logging.getLogger(__name__)

VARIANTS_DIR = "output_model_repository"
RESULTS_DIR = "results"


def machine_info() -> MachineInfo:
    return MachineInfo(
        hostname=socket.gethostname(),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count() or 1,
    )


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
) -> TuneResult:
    """Every measured trial of the study (all workers) as a TuneResult, best and Pareto front picked."""
    frozen = study.get_trials(deepcopy=False)
    records: list[TrialRecord] = []
    default_trial: int | None = None
    for t in frozen:
        record = record_of(t, objective)
        if record is None:
            continue
        records.append(record)
        if is_default(t) and (default_trial is None or record.state == "complete"):
            default_trial = t.number
    candidates = [r for r in records if r.state == "complete" and r.feasible and r.objectives]
    pareto: list[TrialRecord] = []
    best: TrialRecord | None = None
    if candidates:
        pareto = _pareto(candidates, objective) if len(objective.targets) > 1 else []
        pool = pareto or candidates
        primary, direction = objective.primary()
        pick = max if direction == "maximize" else min
        best = pick(pool, key=lambda r: r.objectives[primary])
        # Keep the default unless the best beats it by more than the noise margin.
        default_rec = next((r for r in candidates if r.number == default_trial), None)
        # (With several objectives only when the default is on the Pareto front: else it is dominated.)
        if (
            default_rec is not None
            and best is not default_rec
            and (not pareto or default_rec in pareto)
        ):
            gain = objective.gain_pct(best.objectives[primary], default_rec.objectives[primary])
            if gain < min_gain_pct:
                best = default_rec
                messages = [
                    *messages,
                    f"the best variant is only {gain:.1f}% better than the default "
                    f"(below min_gain_pct {min_gain_pct:g}%): keeping the default",
                ]
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
    return TuneResult(
        model=model,
        study_name=study.study_name,
        sampler=sampler,
        objectives=dict(objective.targets),
        constraint_bounds=objective.bounds(),
        trials=tuple(records),
        default_trial=default_trial,
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
    )


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
    try:
        from perfkit.report.schema import write_tune
    except ImportError:  # the schema module is optional at this layer
        return paths
    paths.extend(write_tune(result, results))
    return paths


def with_written(result: TuneResult, wb: WriteBack) -> TuneResult:
    return replace(result, written_to=None if wb.written_to is None else str(wb.written_to))


def summary_sentence(result: TuneResult, objective: Objective) -> str:
    """Model Analyzer's summary sentence, e.g. "In 12 measurements across 12 configurations,
    mlp_config_7 is 41% better than the default configuration at maximizing throughput, under
    the given constraints."."""
    measured = [t for t in result.trials if t.state != "failed" or t.measurement is not None]
    n = len(result.trials)
    head = f"In {n} measurements across {len(measured)} configurations, "
    primary, direction = objective.primary()
    goal = {
        "throughput_infer_per_s": "throughput",
    }.get(primary, primary.replace("_us", "").replace("_", " "))
    what = f"{direction.rstrip('e')}ing {goal}"
    constraints = ", under the given constraints" if result.constraint_bounds else ""
    best = trial(result, result.best_trial)
    default = trial(result, result.default_trial)
    if best is None:
        return head + "no configuration met the given constraints."
    if default is None or not default.objectives or not default.feasible:
        why = (
            "failed" if default is None or default.state != "complete" else "missed the constraints"
        )
        return (
            head
            + f"{best.variant_name} is the best at {what}{constraints} (the default configuration {why})."
        )
    if best.number == default.number:
        return (
            head
            + f"{best.variant_name} provides no gain over the default configuration at {what}{constraints}."
        )
    gain = objective.gain_pct(best.objectives[primary], default.objectives[primary])
    return head + (
        f"{best.variant_name} is {gain:.0f}% better than the default configuration at {what}{constraints}."
    )


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
