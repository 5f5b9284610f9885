"""The `perfkit_identity` test/demo backend: copies INPUTi -> OUTPUTi, with configurable delays.

Config parameters (string values): `execute_delay_us` (sleep once per execution, so batching pays
off), `delay_per_item_us` (sleep per batch item), `stall_every_n` + `stall_us` (every n-th execution
stalls for stall_us; used to test coordinated-omission correction).

No parameter names a file: a config is what a load request sends, and a request must not make the
server write or open a path. Two test hooks instead live under one directory the server's
environment names (PERFKIT_SERVER_TEST_HOOK_DIR, read once when this module is first imported;
requests cannot change it), with file names derived from the (checked) model name:
- `<dir>/<model>.spans`: each execution appends "start_ns end_ns instance" on the monotonic clock
  (shows instances overlapping);
- `<dir>/<model>.started` and `<dir>/<model>.release`, when both are named pipes at load: each
  execution, after its delays, writes one byte to `started`, then reads one byte from `release`
  before it returns, so a test can order events without sleeping.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Mapping

from perfkit_server.backends.base import Array, InstanceSpec, int_parameter

BACKEND_NAME = "perfkit_identity"
HOOK_ENV = "PERFKIT_SERVER_TEST_HOOK_DIR"
_HOOK_DIR = os.environ.get(HOOK_ENV, "")
# Parameters that once named files; refused with a pointer to the hooks rather than ignored.
_PATH_PARAMETERS = ("span_log", "started_fifo", "release_fifo")


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
        check_parameters(config, source)
        self._execute_delay_s = int_parameter(config, "execute_delay_us", 0, source) / 1e6
        self._per_item_s = int_parameter(config, "delay_per_item_us", 0, source) / 1e6
        self._stall_every = int_parameter(config, "stall_every_n", 0, source)
        self._stall_s = int_parameter(config, "stall_us", 0, source) / 1e6
        self._batching = config.max_batch_size > 0
        self._span_log, self._started_fifo, self._release_fifo = _hooks(spec.model_name)
        self._gated = bool(self._started_fifo)
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
        _fifo_io(self._started_fifo, os.O_WRONLY, b"s")
        _fifo_io(self._release_fifo, os.O_RDONLY)

    def close(self) -> None:
        self._pairs = []


def check_parameters(config: object, source: str) -> None:
    """Refuse a parameter that would name a file (they are test hooks now, see the module doc)."""
    parameters = getattr(config, "parameters", {})
    for key in _PATH_PARAMETERS:
        if key in parameters:
            raise ValueError(
                f"{source}: parameters['{key}']: the perfkit_identity backend takes no file path "
                f"from a config; span logging and the execution gate are test hooks, enabled by "
                f"{HOOK_ENV}=<dir> in the server's environment"
            )


def _hooks(model_name: str) -> tuple[str, str, str]:
    """(span log, started pipe, release pipe) of a model under the hook directory, or ''s."""
    if not _HOOK_DIR:
        return "", "", ""
    base = os.path.join(_HOOK_DIR, model_name)
    started, release = f"{base}.started", f"{base}.release"
    gated = _is_fifo(started) and _is_fifo(release)
    return f"{base}.spans", started if gated else "", release if gated else ""


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


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
