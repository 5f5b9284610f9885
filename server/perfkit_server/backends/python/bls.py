"""BLS for the python backend: a stub's `InferenceRequest.exec()` run through the server.

The request arrives as a frame from the stub; it runs through the registry's internal_infer on the
serving loop while one of the instance's BLS threads waits for it (never the loop); its response,
or its error as Triton's request executor reports it, goes back as a frame.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from perfkit_server.backends.python.ipc import Header, ProtocolError, decode_tensors, encode_tensors
from perfkit_server.errors import (
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ServerError,
    Unavailable,
)
from perfkit_server.types import (
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    v2_of_array,
)

# TritonError codes (TRITONSERVER_Error_Code) <-> this server's errors; others are INTERNAL (1).
CODE_ERRORS: dict[int, type[ServerError]] = {2: ModelNotFound, 3: InvalidInput, 4: Unavailable}
_POLL_S = 0.5  # how often a BLS wait checks whether the instance is closing

InternalInfer = Callable[[InferRequest], Future[InferResponse]]


def bls_request(header: Header, buffers: list[bytearray]) -> InferRequest:
    """The server request of a stub's BLS frame (correlation id and sequence flags become the
    sequence parameters, as Triton's request does)."""
    version = int(header.get("model_version", -1))
    inputs = [
        InferInput(name, v2_of_array(array), tuple(array.shape), array)
        for name, array in decode_tensors(header["inputs"], buffers)
    ]
    parameters: dict[str, Any] = json.loads(header.get("parameters") or "{}")
    if not isinstance(parameters, dict):
        raise ValueError("parameters must be a JSON object")
    correlation = header.get("correlation_id", 0)
    if correlation:
        parameters["sequence_id"] = correlation
    flags = int(header.get("flags", 0))
    if flags & 1:
        parameters["sequence_start"] = True
    if flags & 2:
        parameters["sequence_end"] = True
    timeout_us = int(header.get("timeout", 0))
    return InferRequest(
        model_name=str(header["model_name"]),
        model_version="" if version < 0 else str(version),
        id=str(header.get("request_id", "")),
        inputs=inputs,
        outputs=[RequestedOutput(str(n)) for n in header.get("requested_output_names", [])],
        timeout_us=timeout_us or None,
        parameters=parameters or None,
    )


def run_bls(
    internal_infer: InternalInfer | None,
    header: Header,
    buffers: list[bytearray],
    closing: Callable[[], bool],
) -> InferResponse | Exception:
    """Run one BLS frame and wait for it (a BLS thread); its response, or the error to send."""
    if internal_infer is None:
        return Unavailable("BLS needs the server: this instance runs outside one")
    try:
        request = bls_request(header, buffers)
    except (ProtocolError, KeyError, TypeError, ValueError) as exc:
        return InvalidInput(f"BLS request: {exc}")
    try:
        future = internal_infer(request)
    except ServerError as exc:
        return exc
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            if closing():
                future.cancel()
                return Unavailable(f"model '{request.model_name}': the calling model is unloading")
        except ServerError as exc:
            return exc
        except Exception as exc:  # the server's request boundary, as a client would see it
            return InferenceFailed(str(exc))


def bls_reply(header: Header, result: InferResponse | Exception) -> tuple[Header, list[Any]]:
    """The frame answering a BLS request: its outputs, or its error with Triton's code and words."""
    buffers: list[Any] = []
    reply: Header = {"op": "bls_result", "id": header.get("id")}
    if isinstance(result, ModelNotFound | InvalidInput):
        # Refused before it ran (Triton's request executor): INTERNAL, with its prefix.
        name = header.get("model_name", "")
        why = (
            f"Failed for execute the inference request. Model '{name}' is not ready."
            if isinstance(result, ModelNotFound)
            else str(result)
        )
        reply["error"] = {
            "message": f"Model {name} - Error when running inference: {why}",
            "code": 1,
        }
    elif isinstance(result, Exception):
        code = next((c for c, cls in CODE_ERRORS.items() if isinstance(result, cls)), 1)
        reply["error"] = {"message": str(result), "code": code}
    else:
        reply["outputs"] = encode_tensors(((o.name, o.data) for o in result.outputs), buffers)
    return reply, buffers
