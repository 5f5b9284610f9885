"""The sequence batcher's per-request pieces: the request's checks (Triton's refusals), the rows a
sequence batch hands to a backend (control values, padding), one blocking execution.

A row is one slot's request (or a padding row) with its control inputs and implicit state added.
`run_rows` runs in the instance's thread: a backend with `takes_requests` gets one dict per row
(Triton's python backend sees the requests, padding ones included), any other backend gets the
rows concatenated along the batch dimension and returns outputs that are split back per row.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfkit.datatypes import NP_BY_V2
from perfkit_server.backends.base import Array, Backend
from perfkit_server.errors import InvalidInput, Unavailable
from perfkit_server.sequence_config import END, READY, START, SequenceSpec
from perfkit_server.stats import RequestTimes

Outputs = dict[str, Array]
_UINT64 = 2**64


@dataclass(slots=True)
class Row:
    """One row of a sequence batch: the model's inputs for one slot."""

    inputs: dict[str, Array]
    padding: bool


def check_request(
    spec: SequenceSpec, model: str, params: dict[str, Any], batch_size: int, closing: bool
) -> tuple[int | str, bool, bool]:
    """The request's (sequence id, start, end), or Triton's refusal, in Triton's order."""
    corrid = params.get("sequence_id", 0)
    start = params.get("sequence_start", False)
    end = params.get("sequence_end", False)
    for key, value in (("sequence_start", start), ("sequence_end", end)):
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter '{key}' must be a boolean, got {value!r}")
    if isinstance(corrid, bool) or not isinstance(corrid, int | str):
        raise InvalidInput(
            f"parameter 'sequence_id' must be an unsigned integer or a string, got {corrid!r}"
        )
    if isinstance(corrid, int) and not 0 <= corrid < _UINT64:
        raise InvalidInput(
            f"parameter 'sequence_id' must be an unsigned 64-bit integer, got {corrid}"
        )
    if spec.corrid is not None:
        name, datatype = spec.corrid
        sent = "BYTES" if isinstance(corrid, str) else "UINT64"
        if (sent == "BYTES") != (datatype == "BYTES"):
            raise InvalidInput(
                f"sequence batching control '{name}' data-type is '{sent}', but model "
                f"'{model}' expects '{datatype}'"
            )
    if batch_size > 1:
        raise InvalidInput(
            f"inference request to model '{model}' must specify batch-size 1 due to "
            "requirements of sequence batcher"
        )
    if corrid in (0, ""):
        raise InvalidInput(
            f"inference request to model '{model}' must specify a non-zero or non-empty "
            "correlation ID"
        )
    if closing:
        raise Unavailable(
            f"Server is stopping, scheduler for model '{model}' has stopped accepting "
            "new inference requests"
        )
    return corrid, start, end


def control_values(
    spec: SequenceSpec, ready: bool, start: bool, end: bool, corrid: int | str | None
) -> dict[str, Array]:
    """The control inputs of one row ([1, 1] when the model batches, else [1]).

    A padding row has READY false and CORRID 0 (the model must not read its other inputs)."""
    shape = (1, 1) if spec.max_batch_size > 0 else (1,)
    flags = {START: start, END: end, READY: ready}
    out: dict[str, Array] = {}
    for ctl in spec.controls:
        value = ctl.true_value if flags[ctl.kind] else ctl.false_value
        out[ctl.name] = np.full(shape, value, dtype=NP_BY_V2[ctl.datatype])
    if spec.corrid is not None:
        name, datatype = spec.corrid
        if datatype == "BYTES":
            array = np.empty(shape, dtype=np.object_)
            array.fill(corrid.encode() if isinstance(corrid, str) else b"")
            out[name] = array
        else:
            # An id wider than the tensor keeps its low bits, as Triton's copy does.
            wide = np.full(shape, corrid if isinstance(corrid, int) else 0, dtype=np.uint64)
            out[name] = wide.astype(NP_BY_V2[datatype])
    return out


def zeros_like(array: Array) -> Array:
    """A padding row's input: zeros (empty bytes for BYTES) of the real row's shape."""
    if array.dtype.kind in "OSU":
        out = np.empty(array.shape, dtype=np.object_)
        out.fill(b"")
        return out
    return np.zeros_like(array)


def run_rows(
    inst: Backend, rows: list[Row]
) -> tuple[list[dict[str, Array] | Exception], int, int, int, int]:
    """Execute `rows` on `inst` (blocking): per-row outputs (or errors) and the four timestamps
    (start, inputs gathered, executed, outputs split)."""
    t0 = time.perf_counter_ns()
    if getattr(inst, "takes_requests", False):
        execute: Any = getattr(inst, "execute")  # noqa: B009 (not on the Backend protocol)
        per_request: list[dict[str, Array] | Exception] = list(
            execute([row.inputs for row in rows])
        )
        if len(per_request) != len(rows):
            raise ValueError(f"the backend returned {len(per_request)} results for {len(rows)}")
        t2 = time.perf_counter_ns()
        return per_request, t0, t0, t2, t2
    if len(rows) == 1:
        inputs = rows[0].inputs
    else:
        inputs = {name: np.concatenate([r.inputs[name] for r in rows]) for name in rows[0].inputs}
    t1 = time.perf_counter_ns()
    outputs = inst.infer(inputs)
    t2 = time.perf_counter_ns()
    if len(rows) == 1:
        return [dict(outputs)], t0, t1, t2, time.perf_counter_ns()
    total = len(rows)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise ValueError(
                f"output '{name}' has shape {list(value.shape)}, expected batch size {total}"
            )
    split: list[dict[str, Array] | Exception] = [
        {k: v[n : n + 1] for k, v in outputs.items()} for n in range(total)
    ]
    return split, t0, t1, t2, time.perf_counter_ns()


def shape_key(inputs: dict[str, Array]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Rows batch together only when every input has the same shape."""
    return tuple((k, v.shape) for k, v in inputs.items())


def resolve(
    fut: asyncio.Future[tuple[Outputs, RequestTimes]],
    outcome: tuple[Outputs, RequestTimes] | BaseException,
) -> None:
    """Complete a request's future unless its caller went away."""
    if fut.done():  # the client went away
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
