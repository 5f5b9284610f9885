"""`LevelDriver` and the window/stability loop (`measure_windows`) on the fake transport and its
virtual clock: closed-loop concurrency, the open-loop schedule and in-flight cap, disjoint
windows, the stability decision and the unstable level. No server, no wall-clock timing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from perfkit.errors import MeasurementUnstable
from perfkit.load import schedule
from perfkit.load.driver import LevelDriver, LevelPlan
from perfkit.load.level import DriverWindows, UnstableLevel, measure_windows
from perfkit.load.spec import MeasureSpec
from perfkit.load.stats import RawWindow
from perfkit.load.transports.fake import FakeClock, FakePool
from perfkit.results import WindowStat

MS = 1_000_000


class FakeServer:
    """The `MeasuredServer` of these tests: no server-side statistics."""

    batch_size = 1

    async def statistics(self) -> dict[str, Any] | None:
        return None

    def check_answers(self, window: RawWindow) -> None:
        pass


def closed(
    n: int, service_ns: Callable[[int], int] = lambda sent: MS
) -> tuple[FakeClock, FakePool, LevelDriver]:
    clock = FakeClock()
    pool = FakePool(clock, closed_loop=True, service_ns=service_ns)
    plan = LevelPlan(closed_loop=True, concurrency=n)
    return clock, pool, LevelDriver(pool, plan, url="fake:1", clock=clock)


def open_loop(rate: float, cap: int, service_ns: int) -> tuple[FakeClock, FakePool, LevelDriver]:
    clock = FakeClock()
    pool = FakePool(clock, closed_loop=False, service_ns=lambda sent: service_ns)
    plan = LevelPlan(closed_loop=False, schedule=schedule.make(rate, "constant"), max_in_flight=cap)
    return clock, pool, LevelDriver(pool, plan, url="fake:1", clock=clock)


async def test_closed_loop_resends_keep_concurrency_n():
    _, pool, drv = closed(4)
    await drv.open()
    start = await drv.start()
    w = await drv.window_time(0, start, 100 * MS)
    await drv.stop()
    assert set(pool.in_flight_seen) == {4}  # after every answer, the re-send is already out
    assert pool.max_in_flight == 4
    assert 396 <= w.count <= 404  # 4 slots x 100 ms / 1 ms, give or take the edges
    assert np.all(w.done_ns - w.sent_ns == MS)
    assert drv.state.inflight == 0
    assert drv.state.idle == 4


async def test_closed_loop_fixed_count_sends_exactly_n():
    _, pool, drv = closed(4)
    await drv.open()
    w = await drv.run_fixed(10)
    assert len(pool.sends) == 10
    assert w.count == 10
    assert drv.state.inflight == 0


async def test_open_loop_sends_on_schedule():
    _, _, drv = open_loop(1000.0, cap=64, service_ns=MS // 2)
    await drv.open()
    w = await drv.run_fixed(50)
    assert w.count == 50
    assert np.all(np.diff(np.sort(w.intended_ns)) == MS)  # 1000 rps, constant
    lag = w.sent_ns - w.intended_ns
    assert lag.min() >= 0
    assert lag.max() <= FakeClock().min_step_ns
    assert w.late_count == 0
    assert w.dropped_count == 0


async def test_open_loop_in_flight_cap_makes_sends_late():
    # 10,000 rps for 1 ms answers needs 10 in flight; the cap allows 4: sends wait for a slot.
    _, pool, drv = open_loop(10_000.0, cap=4, service_ns=MS)
    await drv.open()
    w = await drv.run_fixed(40)
    assert w.count == 40
    assert pool.max_in_flight == 4
    assert w.dropped_count > 0
    assert w.late_count > 0
    lag = w.sent_ns - w.intended_ns
    assert lag.min() >= 0
    # A late send is sent when a slot frees up, and its corrected latency includes the wait.
    late = lag > MS
    assert np.all(w.done_ns[late] - w.intended_ns[late] > MS)
    assert np.all(w.done_ns - w.sent_ns == MS)


async def test_windows_are_disjoint_by_completion_time():
    # Answers that straddle the boundaries (0.3 to 2.7 ms) belong to the window they end in.
    _, pool, drv = closed(3, service_ns=lambda sent: 300_000 + (sent * 7919) % (24 * 100_000))
    await drv.open()
    start = first = await drv.start()
    windows = []
    for i in range(5):
        w = await drv.window_time(i, start, 20 * MS)
        windows.append(w)
        start = w.end_ns
    await drv.stop()
    for w in windows:
        assert np.all((w.done_ns > w.start_ns) & (w.done_ns <= w.end_ns))
    assert [w.start_ns for w in windows[1:]] == [w.end_ns for w in windows[:-1]]
    got = np.concatenate([w.done_ns for w in windows])
    answers = [d for d in pool.answers if first < d <= windows[-1].end_ns]
    assert sorted(got.tolist()) == answers


async def test_stable_level_stops_after_the_stability_windows():
    _, _, drv = closed(2)
    measure = MeasureSpec(interval_ms=50, stability_pct=10, max_trials=10)
    await drv.open()
    seen: list[WindowStat] = []
    m = await measure_windows(
        DriverWindows(drv, measure), FakeServer(), measure, "concurrency", 2, on_window=seen.append
    )
    assert m.stable
    assert len(m.windows) == len(seen) == 3
    assert all(w.merged for w in m.windows)
    assert m.request_count == sum(w.request_count for w in m.windows)
    assert m.throughput_infer_per_s == pytest.approx(2000, rel=0.05)
    assert m.latency.avg_us == pytest.approx(1000)


def alternating(period_ns: int) -> Callable[[int], int]:
    """1 ms answers in even periods of the clock, 3 ms in odd ones: windows never agree."""
    return lambda sent: MS if (sent // period_ns) % 2 == 0 else 3 * MS


async def test_unstable_level_raises_with_its_measurement():
    clock, _, drv = closed(2, service_ns=alternating(50 * MS))
    clock.t = 0
    measure = MeasureSpec(interval_ms=50, stability_pct=10, max_trials=6)
    await drv.open()
    with pytest.raises(UnstableLevel, match="within 6 measurement windows for concurrency 2") as e:
        await measure_windows(DriverWindows(drv, measure), FakeServer(), measure, "concurrency", 2)
    assert isinstance(e.value, MeasurementUnstable)
    m = e.value.measurement
    assert not m.stable
    assert [w.merged for w in m.windows] == [False] * 3 + [True] * 3
    assert m.request_count == sum(w.request_count for w in m.windows[3:])
    assert drv.state.inflight == 0


async def test_should_stop_ends_the_level_unstable_without_raising():
    clock, _, drv = closed(2, service_ns=alternating(50 * MS))
    clock.t = 0
    measure = MeasureSpec(interval_ms=50, stability_pct=10, max_trials=6)
    await drv.open()
    m = await measure_windows(
        DriverWindows(drv, measure), FakeServer(), measure, "concurrency", 2,
        should_stop=lambda: True,
    )  # fmt: skip
    assert not m.stable
    assert len(m.windows) == 1
    assert "Stopped before the level was stable." in m.warnings


async def test_fixed_count_is_one_merged_window():
    _, _, drv = closed(3)
    measure = MeasureSpec(fixed_request_count=30)
    await drv.open()
    raw = []
    m = await measure_windows(
        DriverWindows(drv, measure), FakeServer(), measure, "concurrency", 3,
        on_raw=lambda m, w, bounds: raw.append(bounds),
    )  # fmt: skip
    assert m.stable
    assert m.request_count == 30
    assert [w.merged for w in m.windows] == [True]
    assert raw == [[raw[0][0], raw[0][0] + m.duration_ns]]
