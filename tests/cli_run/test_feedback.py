"""Piped `perfkit run` (a CI log) shows progress as it happens: the settings block first, each
level's perf_analyzer block as soon as the level is measured, a heartbeat line per window. The
output is read line by line from the pipe as the subprocess writes it: the order of the lines in
the one stream (stdout and stderr on the same pipe, each flushed as written) is the order of the
events."""

from __future__ import annotations

import os
import re
import subprocess
import sys

HEARTBEAT = re.compile(
    r"^  window (\d+)/(\d+): [\d,.]+ infer/s, (avg|p\d+) [\d.e+-]+ ms, (not yet stable|stable)$"
)


def _stream(*args: str) -> tuple[list[str], int]:
    """Run `perfkit run` with stdout and stderr on one pipe; the lines in the order written."""
    env = dict(os.environ, COLUMNS="200")
    env.pop("FORCE_COLOR", None)
    with subprocess.Popen(
        [sys.executable, "-m", "perfkit", "run", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        lines = [line.rstrip("\n") for line in proc.stdout]  # as they come, to the pipe's end
        return lines, proc.wait(timeout=60)


def _index(lines: list[str], pred: object, start: int = 0) -> int:
    for i in range(start, len(lines)):
        if pred(lines[i]):  # type: ignore[operator]
            return i
    raise AssertionError(f"no such line after line {start}:\n" + "\n".join(lines))


def test_piped_run_prints_each_level_before_the_next_starts(run_server):
    lines, code = _stream(
        "-m", "fast", "-u", run_server.http_url, "--concurrency-range", "1:2",
        "-p", "200", "-s", "1000", "-r", "5",
    )  # fmt: skip
    assert code == 0, "\n".join(lines)
    settings = _index(lines, lambda s: s == "*** Measurement Settings ***")
    level1 = _index(lines, lambda s: s == "Request concurrency: 1")
    level1_done = _index(lines, lambda s: s.startswith("    Throughput:"), level1)
    level2_starts = _index(lines, lambda s: s == "concurrency 2:")
    level2_first_window = _index(lines, lambda s: s.startswith("  window 1/5:"), level2_starts)
    level2 = _index(lines, lambda s: s == "Request concurrency: 2")
    table = _index(lines, lambda s: s.startswith("Inferences/Second vs. Client"))
    # The first level's block is out before the second level measures its first window.
    assert settings < level1 < level1_done < level2_starts < level2_first_window < level2 < table
    assert settings < _index(lines, lambda s: bool(HEARTBEAT.match(s)))  # settings come first
    # Level 1's windows came before its block, one heartbeat each, the last one stable.
    beats = [HEARTBEAT.match(s) for s in lines[:level1]]
    beats1 = [m for m in beats if m]
    assert beats1, "\n".join(lines)
    assert [int(m.group(1)) for m in beats1] == list(range(1, len(beats1) + 1))
    assert beats1[-1].group(4) == "stable"
    assert all(m.group(4) == "not yet stable" for m in beats1[:2])  # 3 windows to judge
    assert lines.count("*** Measurement Settings ***") == 1  # the summary is not printed twice
    assert sum(s == "Request concurrency: 1" for s in lines) == 1


def test_piped_run_heartbeat_names_the_stabilizing_percentile(run_server):
    lines, code = _stream(
        "-m", "fast", "-u", run_server.http_url, "--percentile", "99",
        "-p", "200", "-s", "1000", "-r", "4",
    )  # fmt: skip
    assert code == 0, "\n".join(lines)
    beats = [m for m in map(HEARTBEAT.match, lines) if m]
    assert beats
    assert {m.group(3) for m in beats} == {"p99"}
    assert {m.group(2) for m in beats} == {"4"}


def test_piped_fixed_request_count_has_no_stability_claim(run_server):
    lines, code = _stream(
        "-m", "fast", "-u", run_server.http_url, "--request-count", "50",
    )  # fmt: skip
    assert code == 0, "\n".join(lines)
    beats = [s for s in lines if s.startswith("  window ")]
    assert beats, "\n".join(lines)
    assert all("stable" not in s and "/" not in s.split(":")[0] for s in beats)


def test_piped_repeats_name_their_pass(run_server):
    lines, code = _stream(
        "-m", "fast", "-u", run_server.http_url, "--repeats", "2",
        "-p", "200", "-s", "1000", "-r", "3",
    )  # fmt: skip
    assert code == 0, "\n".join(lines)
    first = _index(lines, lambda s: s == "concurrency 1 (repeat 1/2):")
    block = _index(lines, lambda s: s == "Request concurrency: 1", first)
    second = _index(lines, lambda s: s == "concurrency 1 (repeat 2/2):", block)
    assert _index(lines, lambda s: s == "Request concurrency: 1", second) > second
