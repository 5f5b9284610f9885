"""The `perfkit_identity` test/demo backend: copies INPUTi -> OUTPUTi, with configurable delays.

Config parameters (string values): `execute_delay_us` (sleep once per execution, so batching pays
off), `delay_per_item_us` (sleep per batch item), `stall_every_n` + `stall_us` (every n-th execution
stalls for stall_us; used to test coordinated-omission correction), `span_log` (a file path: each
execution appends "start_ns end_ns instance" on the monotonic clock; shows instances overlapping),
`started_fifo` and `release_fifo` (named pipes, so a test can order events without sleeping: each
execution, after its delays, writes one byte to started_fifo, then reads one byte from release_fifo
before it returns).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping

from perfkit_server.backends.base import Array, InstanceSpec, int_parameter, string_parameter

BACKEND_NAME = "perfkit_identity"


class IdentityBackend:
    """Copies the i-th config input to the i-th config output."""

    def __init__(self, spec: InstanceSpec) -> None:
        config = spec.config
        source = f"model '{spec.model_name}' config"
        self._pairs = [
            (inp.name, out.name) for inp, out in zip(config.input, config.output, strict=False)
        ]
        if not self._pairs:
            raise ValueError(f"{source}: the perfkit_identity backend needs inputs and outputs")
        self._execute_delay_s = int_parameter(config, "execute_delay_us", 0, source) / 1e6
        self._per_item_s = int_parameter(config, "delay_per_item_us", 0, source) / 1e6
        self._stall_every = int_parameter(config, "stall_every_n", 0, source)
        self._stall_s = int_parameter(config, "stall_us", 0, source) / 1e6
        self._batching = config.max_batch_size > 0
        self._span_log = string_parameter(config, "span_log", "")
        self._started_fifo = string_parameter(config, "started_fifo", "")
        self._release_fifo = string_parameter(config, "release_fifo", "")
        self._gated = bool(self._started_fifo or self._release_fifo)
        # Without delays, span logging or pipes an execution is a dict build: safe on the loop.
        self.may_block = bool(
            self._execute_delay_s
            or self._per_item_s
            or self._stall_every
            or self._span_log
            or self._gated
        )
        self._index = spec.index
        self._executions = 0
        # Executions are counted across this instance only; the lock keeps the count exact
        # even if a caller shares the instance between threads.
        self._lock = threading.Lock()

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        with self._lock:
            self._executions += 1
            n = self._executions
        delay = self._execute_delay_s
        if self._per_item_s:
            first = next(iter(inputs.values()))
            items = first.shape[0] if self._batching and first.ndim else 1
            delay += self._per_item_s * items
        if self._stall_every and n % self._stall_every == 0:
            delay += self._stall_s
        start = time.monotonic_ns()
        if delay > 0:
            time.sleep(delay)
        if self._gated:
            self._gate()
        if self._span_log:
            with open(self._span_log, "a", encoding="utf-8") as log:
                log.write(f"{start} {time.monotonic_ns()} {self._index}\n")
        return {out: inputs[inp] for inp, out in self._pairs if inp in inputs}

    def _gate(self) -> None:
        # Each pipe blocks until the test acts: the test holds both open, read and write ends.
        if self._started_fifo:
            _fifo_io(self._started_fifo, os.O_WRONLY, b"s")
        if self._release_fifo:
            _fifo_io(self._release_fifo, os.O_RDONLY)

    def close(self) -> None:
        self._pairs = []


def _fifo_io(path: str, flags: int, data: bytes = b"") -> None:
    """Write `data` to, or read one byte from, a named pipe (blocking until the test acts)."""
    fd = os.open(path, flags)
    try:
        if data:
            os.write(fd, data)
        else:
            os.read(fd, 1)
    finally:
        os.close(fd)
