"""The scheduler on its own (no transport): batch formation, priorities, queue policies, ordering.

The backend here is a recording stand-in that implements the Backend protocol (the seam), so the
batches the scheduler forms can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from perfkit_server.errors import Unavailable
from perfkit_server.scheduler import BatcherSpec, Scheduler
from perfkit_server.stats import ModelStats

from perfkit.model_repo.config import parse_config


class RecordingBackend:
    """Copies INPUT0 -> OUTPUT0 and records each batch's request values; optional sleep."""

    may_block = True

    def __init__(self, delay_s: float = 0.0, first_delay_s: float | None = None) -> None:
        self.batches: list[list[float]] = []
        self.delay_s = delay_s
        self.first_delay_s = first_delay_s
        self.lock = threading.Lock()

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        x = inputs["INPUT0"]
        with self.lock:
            first = not self.batches
            self.batches.append([float(v) for v in x[:, 0]])
        delay = self.first_delay_s if first and self.first_delay_s is not None else self.delay_s
        if delay:
            time.sleep(delay)
        return {"OUTPUT0": x}

    def close(self) -> None:
        pass


def _scheduler(config_text: str, *backends: RecordingBackend, max_batch_size: int = 8) -> Scheduler:
    config = parse_config(
        f'name: "m"\nmax_batch_size: {max_batch_size}\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n' + config_text
    )
    scheduler = Scheduler(BatcherSpec.from_config(config), list(backends), ModelStats("m", "1"))
    scheduler.start()
    return scheduler


def _submit(scheduler: Scheduler, value: float, batch: int = 1, **kw: Any) -> Any:
    x = np.full((batch, 1), value, dtype=np.float32)
    return scheduler.submit({"INPUT0": x}, batch, **kw)


async def test_preferred_sizes_then_delay():
    backend = RecordingBackend()
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
    backend = RecordingBackend()
    s = _scheduler(
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }",
        backend,
    )
    # 3 + 3 would pass the largest preferred size (4): the first 3 go at once, no waiting
    futures = [_submit(s, 0, batch=3), _submit(s, 1, batch=3)]
    await asyncio.wait_for(asyncio.shield(futures[0]), 2)
    assert backend.batches[0] == [0, 0, 0]
    await s.close()  # closing sends the rest without waiting out the delay
    assert backend.batches[1] == [1, 1, 1]


async def test_priority_levels_served_first():
    backend = RecordingBackend(first_delay_s=0.2)
    s = _scheduler(
        """dynamic_batching { max_queue_delay_microseconds: 0
  priority_levels: 2 default_priority_level: 2 }""",
        backend,
    )
    blocker = _submit(s, -1)
    await asyncio.sleep(0.05)  # the instance is busy with the blocker
    low = [_submit(s, 10 + i) for i in range(3)]
    high = [_submit(s, 20 + i, priority=1) for i in range(2)]
    await asyncio.gather(blocker, *low, *high)
    assert backend.batches[1] == [20, 21, 10, 11, 12]  # one batch, high priority first
    await s.close()


async def test_timeout_delay_action_serves_after_others():
    backend = RecordingBackend(first_delay_s=0.3)
    s = _scheduler(
        """dynamic_batching { default_queue_policy { timeout_action: DELAY
  default_timeout_microseconds: 1000000 allow_timeout_override: true } }""",
        backend,
        max_batch_size=1,
    )
    blocker = _submit(s, -1)
    await asyncio.sleep(0.05)
    late = _submit(s, 1, timeout_us=10_000)  # times out while the blocker runs: delayed
    others = [_submit(s, 2), _submit(s, 3)]
    await asyncio.gather(blocker, late, *others)
    assert [b[0] for b in backend.batches] == [-1, 2, 3, 1]
    await s.close()


async def test_max_queue_size_rejects_and_reject_action_fails():
    backend = RecordingBackend(first_delay_s=0.3)
    s = _scheduler(
        """dynamic_batching { default_queue_policy { max_queue_size: 1 timeout_action: REJECT
  default_timeout_microseconds: 10000 } }""",
        backend,
        max_batch_size=1,
    )
    blocker = _submit(s, -1)
    await asyncio.sleep(0.05)
    queued = _submit(s, 1)
    with pytest.raises(Unavailable, match="Exceeds maximum queue size"):
        _submit(s, 2)
    await blocker
    with pytest.raises(Unavailable, match="timeout"):
        await queued
    await s.close()


async def test_preserve_ordering_across_instances():
    slow, fast = RecordingBackend(first_delay_s=0.3), RecordingBackend()
    s = _scheduler(
        "dynamic_batching { preserve_ordering: true max_queue_delay_microseconds: 0 }",
        slow,
        fast,
    )
    done: list[int] = []
    first = _submit(s, 0)
    first.add_done_callback(lambda _: done.append(0))
    await asyncio.sleep(0.05)  # request 0 runs on the slow instance
    second = _submit(s, 1)
    second.add_done_callback(lambda _: done.append(1))
    await asyncio.gather(first, second)
    assert len(fast.batches) == 1  # request 1 finished first on the other instance ...
    assert done == [0, 1]  # ... but completed after request 0
    await s.close()


async def test_default_scheduler_never_combines():
    backend = RecordingBackend()
    s = _scheduler("", backend)
    await asyncio.gather(*[_submit(s, i, batch=2) for i in range(4)])
    assert [len(b) for b in backend.batches] == [2, 2, 2, 2]
    await s.close()
