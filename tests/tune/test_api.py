"""`perfkit.tune.run`, the tuner's Python API, called in-process on a small sweep."""

from __future__ import annotations

from pathlib import Path

import perfkit.tune
from perfkit.model_repo.config import load_config
from perfkit.report.schema import load_result
from perfkit.results import TrialRecord, TuneResult
from tests.tune.conftest import write_sweep


def test_run_returns_the_result_and_writes_back_the_winner(
    ident_repo: Path, tmp_path: Path
) -> None:
    # Dynamic batching pays off on the identity model (a fixed delay per execution).
    path = write_sweep(tmp_path / "s.toml", ident_repo, trials=3, space="dynamic_batching = [true]")
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=tmp_path / "out", study_name="api")
    original = (ident_repo / "ident" / "config.pbtxt").read_text()
    trials: list[TrialRecord] = []
    notes: list[str] = []
    done: list[perfkit.tune.TuneOutcome] = []

    result = perfkit.tune.run(
        sweep, on_trial=trials.append, on_message=notes.append, on_done=done.append
    )

    assert isinstance(result, TuneResult)
    assert result.model == "ident"
    assert result.study_name == "api"
    assert result.server.embedded
    assert result.default_trial is not None
    assert result.best_trial is not None
    assert result.best_trial != result.default_trial
    assert result.gain_pct is not None
    assert result.gain_pct > 0
    # Every trial this process measured reached on_trial, as it finished.
    assert [t.number for t in trials] == sorted(t.number for t in result.trials)
    assert any(n.startswith("tuning ident:") for n in notes)
    # on_done saw the same result, the write-back and the files.
    assert len(done) == 1
    assert done[0].result == result
    assert done[0].reload_note == "the server reloaded the config on disk"
    assert tmp_path / "out" / "results" / "results.json" in done[0].paths

    # The winner was written back (the original kept) and is what the result says.
    written = ident_repo / "ident" / "config.pbtxt"
    assert result.written_to == str(written)
    assert (ident_repo / "ident" / "config.pbtxt.orig").read_text() == original
    best = load_config(written)
    assert best.HasField("dynamic_batching")
    assert best.parameters["execute_delay_us"].string_value == "4000"
    assert load_result(tmp_path / "out" / "results") == result


def test_dry_run_leaves_the_config_and_says_why(ident_repo: Path, tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "s.toml", ident_repo, trials=2, space="dynamic_batching = [true]")
    sweep = perfkit.tune.load_sweep(path).with_overrides(output=tmp_path / "out")
    before = (ident_repo / "ident" / "config.pbtxt").read_text()
    done: list[perfkit.tune.TuneOutcome] = []

    result = perfkit.tune.run(sweep, dry_run=True, on_done=done.append)

    assert result.written_to is None
    assert (ident_repo / "ident" / "config.pbtxt").read_text() == before
    assert done[0].write_back.reason == "--dry-run: nothing written"
    assert "+dynamic_batching" in done[0].write_back.diff.replace(" ", "")
