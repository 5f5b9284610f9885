"""The `perfkit_repeat` test backend: a decoupled model, as Triton's repeat example backend.

The model (Triton's `repeat_int32`) has inputs IN (INT32 [-1]), DELAY (UINT32, IN's shape) and
WAIT (UINT32 [1]), outputs OUT (INT32 [1]) and IDX (UINT32 [1]), `max_batch_size: 0` and
`model_transaction_policy { decoupled: true }`. For a request with n elements in IN it sends n
responses, the i-th with OUT = IN[i] and IDX = i after waiting DELAY[i] ms, then FINAL without
outputs (a flags-only response: the client sees it only when it asks for empty final responses).
The execution returns after WAIT ms while the responses may still be on their way, so one
instance serves several requests at once and their responses interleave. A request whose IN and
DELAY shapes differ, or whose WAIT is not one element, gets one error response (FINAL).

Unlike Triton's repeat backend, it reports its response statistics (`response_statistics`), as
Triton's square test backend does, so the statistics' response_stats can be tested with it.

Responses are sent from a thread per request, at most MAX_RESPONDERS per instance at once (a
further execution waits for one to finish, holding its instance: the backend never runs more
threads than that). Closing the instance cuts the delays short: requests still being answered
end with an error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from perfkit_server.backends.base import Array, InstanceSpec
from perfkit_server.errors import InvalidInput, Unavailable

BACKEND_NAME = "perfkit_repeat"
MAX_RESPONDERS = 64
_INPUTS = (("IN", "TYPE_INT32"), ("DELAY", "TYPE_UINT32"), ("WAIT", "TYPE_UINT32"))
_OUTPUTS = (("OUT", "TYPE_INT32"), ("IDX", "TYPE_UINT32"))

Send = Callable[[int, dict[str, Array] | None, BaseException | None, bool], None]


class RepeatBackend:
    """Sends each element of IN back as its own response (module docstring)."""

    may_block = True
    response_statistics = True

    def __init__(self, spec: InstanceSpec) -> None:
        config = spec.config
        source = f"model '{spec.model_name}' config"
        if config.max_batch_size != 0:
            raise ValueError(
                f"{source}: max_batch_size: the perfkit_repeat backend only supports models with "
                "max_batch_size == 0 (as Triton's repeat backend)"
            )
        if not config.model_transaction_policy.decoupled:
            raise ValueError(
                f"{source}: model_transaction_policy: the perfkit_repeat backend sends several "
                "responses per request; set model_transaction_policy { decoupled: true }"
            )
        _check_tensors(config.input, _INPUTS, "input", source)
        _check_tensors(config.output, _OUTPUTS, "output", source)
        self._name = spec.model_name
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_RESPONDERS)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        raise InvalidInput(f"model '{self._name}' is decoupled: it answers on a stream only")

    def execute_decoupled(self, requests: list[dict[str, Array]], send: Send) -> None:
        if len(requests) > 1:
            raise ValueError("repeat backend does not support batched request execution")
        wait_ms = 0
        for index, inputs in enumerate(requests):
            wait_ms = self._start(index, inputs, send)
        if wait_ms:
            self._stop.wait(wait_ms / 1000)  # the request is released after WAIT ms

    def _start(self, index: int, inputs: Mapping[str, Array], send: Send) -> int:
        """Check one request and start its responder thread; its WAIT in ms."""
        wait = inputs["WAIT"]
        if wait.size != 1:
            send(index, None, InvalidInput("unexpected size for WAIT input"), True)
            return 0
        values, delays = inputs["IN"], inputs["DELAY"]
        if values.shape != delays.shape:
            send(
                index,
                None,
                InvalidInput(
                    f"expected IN and DELAY shape to match, got {_shape(values)} and "
                    f"{_shape(delays)}"
                ),
                True,
            )
            return 0
        while not self._slots.acquire(timeout=0.1):  # a responder slot, or stop on close
            if self._stop.is_set():
                send(index, None, Unavailable(f"model '{self._name}' is unloading"), True)
                return 0
        thread = threading.Thread(
            target=self._respond,
            args=(index, values.reshape(-1).copy(), delays.reshape(-1).copy(), send),
            name=f"repeat-{self._name}",
            daemon=True,
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return int(wait.reshape(-1)[0])

    def _respond(self, index: int, values: Array, delays: Array, send: Send) -> None:
        try:
            for i, (value, delay) in enumerate(zip(values.tolist(), delays.tolist(), strict=True)):
                if self._stop.is_set() or (delay and self._stop.wait(delay / 1000)):
                    send(index, None, Unavailable(f"model '{self._name}' is unloading"), True)
                    return
                outputs = {
                    "OUT": np.array([value], dtype=np.int32),
                    "IDX": np.array([i], dtype=np.uint32),
                }
                send(index, outputs, None, False)
            send(index, None, None, True)
        finally:
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self) -> None:
        """Cut the delays short and wait for the responder threads (as Triton's backend waits)."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()


def _check_tensors(
    tensors: Any, expected: tuple[tuple[str, str], ...], what: str, source: str
) -> None:
    """Triton's repeat backend's model check: these names and datatypes, in this order."""
    from tritonclient.grpc import model_config_pb2 as mc

    got = [(t.name, mc.DataType.Name(t.data_type)) for t in tensors]
    if got != list(expected):
        want = ", ".join(f"{n} ({d})" for n, d in expected)
        have = ", ".join(f"{n} ({d})" for n, d in got) or "none"
        raise ValueError(
            f"{source}: {what}: the perfkit_repeat backend expects {what}s {want}; got {have}"
        )


def _shape(array: Array) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"
