"""The responses of one request to a decoupled model, as `DataPlane.infer_stream` yields them.

Triton's rules (its gRPC stream handler and statistics): every response the model sends goes to
the client in order, an error response as an error (the stream goes on); a FINAL sent without
outputs (a flags-only response) reaches the client as an empty final response only when the
request asked for it with the parameter `triton_enable_empty_final_response` (a bool), which is
the server's, not the model's. The request counts as a success or failure once its FINAL is in.
Each response counts in `response_stats` under its index (stats.py) when the backend says it
reports them (`response_statistics = True`): in Triton a backend reports them itself
(TRITONBACKEND_ModelInstanceReportResponseStatistics), and the python and repeat backends do not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from perfkit_server.errors import InvalidInput, ServerError, Unavailable
from perfkit_server.scheduler import Scheduler
from perfkit_server.shm import write_output
from perfkit_server.types import InferOutput, InferRequest, InferResponse, v2_of_array

if TYPE_CHECKING:
    from perfkit_server.registry import LoadedVersion

EMPTY_FINAL = "triton_enable_empty_final_response"


def empty_final_wanted(params: dict[str, Any] | None) -> tuple[bool, dict[str, Any] | None]:
    """(whether the request asked for an empty final response, its parameters without that
    server parameter); a value that is not a bool is refused as Triton refuses it."""
    if not params or EMPTY_FINAL not in params:
        return False, params
    value = params[EMPTY_FINAL]
    if not isinstance(value, bool):
        raise InvalidInput(
            f"invalid value type for '{EMPTY_FINAL}' parameter, expected bool_param."
        )
    rest = {k: v for k, v in params.items() if k != EMPTY_FINAL}
    return value, rest or None


async def decoupled_responses(
    lv: LoadedVersion,
    request: InferRequest,
    inputs: dict[str, Any],
    batch_size: int,
    wanted: list[str],
) -> AsyncIterator[InferResponse]:
    """Queue `request` on `lv`'s scheduler and yield each of its responses (see module doc)."""
    empty_final, params = empty_final_wanted(request.parameters)
    start = time.perf_counter_ns()
    scheduler = lv.scheduler
    assert isinstance(scheduler, Scheduler), "only a model's own scheduler is decoupled"
    try:
        stream = scheduler.submit_stream(
            inputs, batch_size, request.priority, request.timeout_us, params
        )
    except ServerError as exc:
        reason = "REJECTED" if isinstance(exc, Unavailable) else "BACKEND"
        lv.stats.record_failure(time.perf_counter_ns() - start, reason)
        raise
    version = str(lv.version)
    index = 0
    failed = False
    complete = False
    try:
        async for r in stream:
            if r.error is not None:
                kind = "fail"
                failed = True
            else:
                kind = "success" if r.outputs is not None else "empty_response"
            if stream.report:
                lv.stats.record_response(index, kind, r.start_ns, r.end_ns)
            index += 1
            if r.final:
                complete = True
                duration = time.perf_counter_ns() - start
                if failed:
                    lv.stats.record_failure(duration, "BACKEND")
                elif r.times is not None:
                    lv.stats.record_success(duration, r.times)
            if r.error is not None:
                yield InferResponse(lv.name, version, request.id, [], r.error, r.final)
            elif r.outputs is not None:
                outs = _outputs(lv, request, wanted, r.outputs)
                yield InferResponse(lv.name, version, request.id, outs, None, r.final)
            elif r.final and empty_final:
                yield InferResponse(lv.name, version, request.id, [], None, True)
    except (asyncio.CancelledError, GeneratorExit):  # the client went away (Triton: CANCELED)
        if not complete:
            lv.stats.record_failure(time.perf_counter_ns() - start, "CANCELED")
        raise
    finally:
        stream.close()


def _outputs(
    lv: LoadedVersion, request: InferRequest, wanted: list[str], outputs: dict[str, Any]
) -> list[InferOutput]:
    """A response's tensors: those requested (all, in config order, when none are), as far as
    this response has them; outputs bound to shared memory are written there."""
    names = (
        [n for n in wanted if n in outputs] if wanted else [n for n in lv.outputs if n in outputs]
    )
    if not wanted:
        names += [n for n in outputs if n not in lv.outputs]
    result: list[InferOutput] = []
    for name in names:
        array = outputs[name]
        spec = lv.outputs.get(name)
        datatype = spec.datatype if spec is not None else v2_of_array(array)
        result.append(InferOutput(name, datatype, array.shape, array))
        slot = request.shm_outputs.get(name) if request.shm_outputs else None
        if slot is not None:
            write_output(slot, name, array)
    return result
