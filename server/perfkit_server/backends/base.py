"""The Backend seam: one object per model instance that loads a model and runs blocking batches.

A backend is created (and loaded) in a worker thread, then `infer` is called from that instance's
worker thread only, one batch at a time. It must not touch the event loop. TensorRT and the CUDA
provider fit here later: `InstanceSpec.kind`/`device_id` say where the instance runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy.typing as npt

if TYPE_CHECKING:
    from perfkit_server.types import InferRequest, InferResponse

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """What a backend needs to load one instance of one model version."""

    model_name: str
    version: int
    version_dir: Path
    config: Any  # model_config_pb2.ModelConfig (untyped: tritonclient ships no stubs)
    index: int  # instance index within the model, 0-based
    instance_count: int  # total instances of this model version
    kind: str  # "KIND_CPU", "KIND_GPU", ...
    device_id: int  # GPU id for KIND_GPU, else 0
    group_index: int = 0  # its instance group: config.instance_group[group_index]
    # Runs a request from inside the server (a python model's BLS call) on the serving loop, from
    # any other thread: the caller waits on the future, never the loop. Filled by the registry.
    internal_infer: Callable[[InferRequest], Future[InferResponse]] | None = None
    # Triton's model loading API for a python model: (action "ready" | "load" | "unload", model
    # name, version | config JSON | unload_dependents) run on the serving loop. Registry-filled.
    model_control: Callable[[str, str, Any], Future[bool]] | None = None


class Backend(Protocol):
    """One loaded model instance.

    A backend may define `may_block = False` to say that `infer` never sleeps or waits on I/O;
    the scheduler then runs very short executions (under ~100 us, measured) on the event loop
    instead of paying a thread hand-off. Without the attribute, every execution runs in a thread.

    Execution modes (scheduler.py, exec_modes.py); `infer` is the default:
    - `infer(inputs)` gets the batch's inputs concatenated along the batch dimension and returns
      outputs the scheduler slices back into the requests.
    - `takes_requests = True` (class attribute): the scheduler calls
      `execute(requests: list[dict[str, Array]]) -> list[dict[str, Array] | Exception]` instead,
      one input dict per request (each with its own batch dimension when max_batch_size > 0),
      one result per request in the same order; an Exception is that request's error alone (a
      perfkit_server.errors.ServerError reaches the client as it is, anything else is named as
      the model's failure). Triton's python backend works this way.
    - decoupled models (`model_transaction_policy { decoupled: true }`, only for the backends in
      `backends.DECOUPLED_BACKENDS`): the scheduler calls `execute_decoupled(requests, send)`,
      where `send(index, outputs | None, error | None, final)` answers requests[index]. `send`
      is thread-safe and may be called from any thread, during or after the call; a request is
      complete once `final=True` was sent for it (with or without outputs), and a send after that
      raises. The instance is free again when execute_decoupled returns. `send` may block while
      the client has not read that request's earlier responses (decoupled.MAX_UNDELIVERED).
      A decoupled backend that defines `response_statistics = True` has each response counted in
      the statistics' response_stats, as a Triton backend that reports them (Triton's python
      backend does not: its models' response_stats stay empty).
    """

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one batch (blocking). Inputs and outputs carry the batch dimension if the model batches."""
        ...

    def close(self) -> None:
        """Release the session and its memory."""
        ...


def string_parameter(config: Any, key: str, default: str = "") -> str:
    """A config `parameters { key: ... value: { string_value: ... } }` entry, or `default`."""
    if key in config.parameters:
        return str(config.parameters[key].string_value)
    return default


def int_parameter(config: Any, key: str, default: int, source: str) -> int:
    """An integer-valued config parameter; a non-integer value names the model and key."""
    text = string_parameter(config, key, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{source}: parameters['{key}'].string_value must be an integer, got {text!r}"
        ) from None


def check_file_name(name: str, field: str, source: str) -> str:
    """Return `name` if it is a plain file name (no directory part, not '..'); the error says the
    rule and never whether some file exists, since nothing is looked up."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(
            f"{source}: {field}: {name!r} must be a file name inside the version directory "
            "(no '/', '\\' or '..')"
        )
    return name
