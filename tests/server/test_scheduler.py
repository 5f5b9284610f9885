"""The scheduler on its own (no transport, no sockets): dynamic batch formation (max_batch_size,
preferred sizes, max_queue_delay, shapes), priorities, queue policies, ordering, backend errors.

The backend is a fake model instance that implements the Backend protocol (the seam), so the
batches the scheduler forms can be asserted exactly. A gated fake holds its batch until the test
releases it: events are ordered by waiting on it, never by sleeping.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from perfkit_server.errors import InferenceFailed, Unavailable
from perfkit_server.scheduler import BatcherSpec, Scheduler
from perfkit_server.stats import ModelStats

from perfkit.model_repo.config import parse_config

WAIT_S = 30.0  # bound on every wait: a broken scheduler fails the test instead of hanging it


class FakeBackend:
    """A fake model instance: copies INPUT0 -> OUTPUT0 and records each batch (the first element
    of every row). With `gated`, every batch waits until `release()`; with `fail`, it raises."""

    may_block = True

    def __init__(self, *, gated: bool = False, fail: bool = False) -> None:
        self.batches: list[list[float]] = []
        self.fail = fail
        self._lock = threading.Lock()
        self._gate = threading.Event()
        self._started = threading.Event()
        if not gated:
            self._gate.set()

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        x = inputs["INPUT0"]
        with self._lock:
            self.batches.append([float(v) for v in x[:, 0]])
        self._started.set()
        if not self._gate.wait(WAIT_S):
            raise TimeoutError("the test never released the batch")
        if self.fail:
            raise RuntimeError("the fake backend failed")
        return {"OUTPUT0": x}

    def close(self) -> None:
        pass

    async def started(self) -> None:
        """Wait until a batch is executing on this instance."""
        assert await asyncio.to_thread(self._started.wait, WAIT_S), "no batch started"

    def release(self) -> None:
        """Let the held batch, and every later one, finish."""
        self._gate.set()


def _scheduler(
    config_text: str,
    *backends: FakeBackend,
    max_batch_size: int = 8,
    dims: str = "1",
    stats: ModelStats | None = None,
) -> Scheduler:
    config = parse_config(
        f'name: "m"\nmax_batch_size: {max_batch_size}\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n' + config_text
    )
    scheduler = Scheduler(
        BatcherSpec.from_config(config), list(backends), stats or ModelStats("m", "1")
    )
    scheduler.start()
    return scheduler


def _submit(scheduler: Scheduler, value: float, batch: int = 1, width: int = 1, **kw: Any) -> Any:
    x = np.full((batch, width), value, dtype=np.float32)
    return scheduler.submit({"INPUT0": x}, batch, **kw)


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a condition that the scheduler's coroutines make true."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 (a counter of the scheduler's, not an event)
            await asyncio.sleep(0.001)


# -- batch formation ---------------------------------------------------------------------------


async def test_preferred_sizes_then_delay():
    backend = FakeBackend()
    s = _scheduler(
        "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 50000 }",
        backend,
    )
    # all ten are queued before the scheduler runs: 4 + 4 at once, then 2 after the delay
    futures = [_submit(s, i) for i in range(10)]
    results = await asyncio.gather(*futures)
    assert [len(b) for b in backend.batches] == [4, 4, 2]
    assert [b for batch in backend.batches for b in batch] == list(range(10))
    for i, (outputs, times) in enumerate(results):
        assert outputs["OUTPUT0"][0, 0] == i
        assert times.compute_infer_ns > 0
    await s.close()


async def test_next_request_past_largest_preferred_sends_what_is_pending():
    backend = FakeBackend()
    s = _scheduler(
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }",
        backend,
    )
    # 3 + 3 would pass the largest preferred size (4): the first 3 go at once, no waiting
    futures = [_submit(s, 0, batch=3), _submit(s, 1, batch=3)]
    await asyncio.wait_for(asyncio.shield(futures[0]), WAIT_S)
    assert backend.batches[0] == [0, 0, 0]
    await s.close()  # closing sends the rest without waiting out the delay
    assert backend.batches[1] == [1, 1, 1]


async def test_max_batch_size_caps_a_batch():
    backend = FakeBackend()
    s = _scheduler("dynamic_batching { }", backend, max_batch_size=4)
    await asyncio.gather(*[_submit(s, i) for i in range(10)])
    assert backend.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    await s.close()


async def test_a_request_is_never_split_across_batches():
    backend = FakeBackend()
    s = _scheduler("dynamic_batching { }", backend, max_batch_size=4)
    await asyncio.gather(_submit(s, 0, batch=3), _submit(s, 1, batch=3), _submit(s, 2, batch=1))
    # 3 + 3 does not fit in 4: the second request starts the next batch, which the third joins
    assert backend.batches == [[0, 0, 0], [1, 1, 1, 2]]
    await s.close()


async def test_requests_of_different_shapes_are_not_combined():
    backend = FakeBackend()
    s = _scheduler("dynamic_batching { }", backend, dims="-1")
    await asyncio.gather(
        _submit(s, 0, width=2), _submit(s, 1, width=2), _submit(s, 2, width=3), _submit(s, 3)
    )
    assert backend.batches == [[0, 1], [2], [3]]
    await s.close()


async def test_queue_delay_holds_a_partial_batch():
    backend = FakeBackend()
    delay_us = 20_000
    s = _scheduler(f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}", backend)
    results = await asyncio.gather(_submit(s, 0), _submit(s, 1))
    assert backend.batches == [[0, 1]]
    # the recorded queue time of each request covers the delay the batcher waited
    assert all(times.queue_ns >= delay_us * 1000 for _, times in results)
    await s.close()


async def test_a_full_batch_does_not_wait_for_the_delay():
    backend = FakeBackend()
    # an hour's delay: only a batch that is full (max_batch_size 4) can go
    s = _scheduler(
        "dynamic_batching { max_queue_delay_microseconds: 3600000000 }", backend, max_batch_size=4
    )
    results = await asyncio.wait_for(asyncio.gather(*[_submit(s, i) for i in range(4)]), WAIT_S)
    assert backend.batches == [[0, 1, 2, 3]]
    assert len(results) == 4
    await s.close()


async def test_default_scheduler_never_combines():
    backend = FakeBackend()
    s = _scheduler("", backend)
    await asyncio.gather(*[_submit(s, i, batch=2) for i in range(4)])
    assert [len(b) for b in backend.batches] == [2, 2, 2, 2]
    await s.close()


# -- priorities, queue policies, ordering ------------------------------------------------------


async def test_priority_levels_served_first():
    backend = FakeBackend(gated=True)
    s = _scheduler(
        """dynamic_batching { max_queue_delay_microseconds: 0
  priority_levels: 2 default_priority_level: 2 }""",
        backend,
    )
    blocker = _submit(s, -1)
    await backend.started()  # the only instance is busy with the blocker
    low = [_submit(s, 10 + i) for i in range(3)]
    high = [_submit(s, 20 + i, priority=1) for i in range(2)]
    backend.release()
    await asyncio.gather(blocker, *low, *high)
    assert backend.batches[1] == [20, 21, 10, 11, 12]  # one batch, high priority first
    await s.close()


async def test_timeout_delay_action_serves_after_others():
    backend = FakeBackend(gated=True)
    s = _scheduler(
        """dynamic_batching { default_queue_policy { timeout_action: DELAY
  default_timeout_microseconds: 1000000 allow_timeout_override: true } }""",
        backend,
        max_batch_size=1,
    )
    blocker = _submit(s, -1)
    await backend.started()
    # A 1 us timeout has passed by the time the blocker's instance is free: delayed, not dropped.
    late = _submit(s, 1, timeout_us=1)
    others = [_submit(s, 2), _submit(s, 3)]
    backend.release()
    await asyncio.gather(blocker, late, *others)
    assert [b[0] for b in backend.batches] == [-1, 2, 3, 1]
    await s.close()


async def test_max_queue_size_rejects_and_reject_action_fails():
    backend = FakeBackend(gated=True)
    s = _scheduler(
        """dynamic_batching { default_queue_policy { max_queue_size: 1 timeout_action: REJECT
  allow_timeout_override: true } }""",
        backend,
        max_batch_size=1,
    )
    blocker = _submit(s, -1)
    await backend.started()
    queued = _submit(s, 1, timeout_us=1)
    with pytest.raises(Unavailable, match="Exceeds maximum queue size"):
        _submit(s, 2)
    backend.release()
    await blocker
    with pytest.raises(Unavailable, match="timeout"):
        await queued
    assert backend.batches == [[-1]]
    await s.close()


async def test_each_priority_level_has_its_own_queue_policy():
    backend = FakeBackend(gated=True)
    s = _scheduler(
        """dynamic_batching { priority_levels: 2 default_priority_level: 2
  priority_queue_policy { key: 1 value: { max_queue_size: 1 } } }""",
        backend,
        max_batch_size=1,
    )
    blocker = _submit(s, -1)
    await backend.started()
    high = _submit(s, 1, priority=1)
    with pytest.raises(Unavailable, match="Exceeds maximum queue size"):
        _submit(s, 2, priority=1)
    low = [_submit(s, 10 + i) for i in range(3)]  # level 2 keeps the default: no limit
    backend.release()
    await asyncio.gather(blocker, high, *low)
    assert [b[0] for b in backend.batches] == [-1, 1, 10, 11, 12]
    await s.close()


async def test_preserve_ordering_across_instances():
    slow, fast = FakeBackend(gated=True), FakeBackend()
    stats = ModelStats("m", "1")
    s = _scheduler(
        "dynamic_batching { preserve_ordering: true max_queue_delay_microseconds: 0 }",
        slow,
        fast,
        stats=stats,
    )
    done: list[int] = []
    first = _submit(s, 0)
    first.add_done_callback(lambda _: done.append(0))
    await slow.started()  # request 0 runs on the slow instance
    second = _submit(s, 1)
    second.add_done_callback(lambda _: done.append(1))
    await _until(lambda: stats.execution_count == 1)  # request 1 ran on the other instance ...
    assert fast.batches == [[1]]
    assert done == []  # ... and is held until request 0 completes
    slow.release()
    await asyncio.gather(first, second)
    assert done == [0, 1]
    await s.close()


async def test_a_backend_error_fails_every_request_of_its_batch():
    backend = FakeBackend(fail=True)
    s = _scheduler("dynamic_batching { max_queue_delay_microseconds: 1000000 }", backend,
                   max_batch_size=2)  # fmt: skip
    results = await asyncio.gather(_submit(s, 0), _submit(s, 1), return_exceptions=True)
    assert backend.batches == [[0, 1]]
    for result in results:
        assert isinstance(result, InferenceFailed)
        assert "the fake backend failed" in str(result)
    await s.close()


async def test_a_closing_scheduler_refuses_new_requests():
    backend = FakeBackend()
    s = _scheduler("dynamic_batching { }", backend)
    await s.close()
    with pytest.raises(Unavailable, match="unloading"):
        _submit(s, 0)
