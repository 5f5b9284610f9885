"""`perfkit tune` shows where it stands: trial k/N, elapsed, ETA (from the mean trial time), best
so far and what the trial is doing; piped (a CI log), as plain lines written as it happens. The
output is read line by line from the pipe while the tune runs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from perfkit.results import TrialRecord
from perfkit.sweepfile import ConstraintSpec
from perfkit.tune.objective import Objective
from perfkit.tune.progress import Tracker, TuneProgress, progress_line
from tests.tune.conftest import ROOT, perfkit_cmd, write_identity_model, write_sweep

LINE = re.compile(
    r"^trial (\d+)/(\d+) \[(\d+:\d\d) elapsed, ETA ([\d:]+|\?)(, best [^\]]+)?\] (.+): (.+)$"
)


def test_piped_tune_prints_progress_lines_as_it_goes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_identity_model(repo, delay_us=1000)
    sweep = write_sweep(tmp_path / "s.toml", repo, trials=2)
    env = dict(os.environ, COLUMNS="200")
    cmd = perfkit_cmd("tune", str(sweep), "--output", str(tmp_path / "out"), "--no-prune")
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        lines = [line.rstrip("\n") for line in proc.stdout]  # as written, to the pipe's end
        code = proc.wait(timeout=60)
    text = "\n".join(lines)
    assert code == 0, text
    progress = [(i, m) for i, m in ((i, LINE.match(s)) for i, s in enumerate(lines)) if m]
    assert progress, text
    end = next(i for i, s in enumerate(lines) if s.startswith("wrote "))
    first = progress[0]
    # The first trial's progress comes before the tune's summary, phase by phase.
    assert first[1].group(1, 2) == ("1", "2"), text
    assert first[1].group(7) == "loading", text
    assert first[1].group(6).startswith("default config: concurrency 8"), text
    assert first[0] < end
    doing1 = [m.group(7) for _, m in progress if m.group(1) == "1"]
    assert doing1[:2] == ["loading", "warming up"], doing1
    assert "window 1/4" in doing1
    assert doing1[-1].startswith("done (complete, "), doing1
    assert first[1].group(4) == "?"  # no trial finished: no mean trial time yet
    # Trial 1 is told before trial 2 loads; from then on an ETA and a best so far.
    done1 = next(i for i, m in progress if m.group(1) == "1" and m.group(7).startswith("done"))
    load2 = next(i for i, m in progress if m.group(1) == "2" and m.group(7) == "loading")
    assert done1 < load2 < end
    m2 = next(m for i, m in progress if i == load2)
    assert m2.group(4) != "?", lines[load2]
    assert "infer/s (trial 0)" in (m2.group(5) or ""), lines[load2]


class _Record:
    """The fields of a TrialRecord the tracker reads."""

    def __init__(self, number: int, value: float) -> None:
        self.number, self.state, self.feasible = number, "complete", True
        self.objectives = {"throughput_infer_per_s": value}


def test_tracker_counts_times_and_keeps_the_best() -> None:
    seen: list[TuneProgress] = []
    objective = Objective((("throughput_infer_per_s", "maximize"),), ConstraintSpec())
    tracker = Tracker(trials=3, done_before=1, objective=objective, emit=seen.append, windows=4)
    tracker.start({"instance_count": 2, "concurrency": 8})
    tracker.phase("loading")
    assert seen[-1].trial == 2
    assert seen[-1].eta_s is None
    assert seen[-1].best == ""
    assert progress_line(seen[-1]).startswith("trial 2/3 [0:00 elapsed, ETA ?] instance_count 2,")
    rec: TrialRecord = _Record(5, 812.34)  # type: ignore[assignment]
    tracker.finished(rec)
    assert seen[-1].doing == "done (complete, 812.3 infer/s)"
    assert seen[-1].best == "812.3 infer/s (trial 5)"
    assert seen[-1].eta_s is not None
    tracker.start({})
    tracker.finished(_Record(6, 700.0))
    assert seen[-1].best == "812.3 infer/s (trial 5)"  # a worse trial keeps the best
    assert seen[-1].trial == 3  # the budget is used up: nothing left to wait for
    assert seen[-1].eta_s == 0.0
