"""KServe v2 over gRPC: a subclass of tritonclient's generated servicer on grpc.aio (no vendored protos).

Inputs come as `raw_input_contents` (or typed `contents`); outputs always go back as
`raw_output_contents`. Maps ServerError subclasses to INVALID_ARGUMENT/NOT_FOUND/UNAVAILABLE/INTERNAL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perfkit_server.dataplane import DataPlane
from perfkit_server.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServerError,
    Unavailable,
)
from perfkit_server.types import (
    NP_BY_V2,
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    array_from_raw,
    array_to_raw,
    check_shape,
)

logger = logging.getLogger(__name__)

_CODES = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    InternalError: grpc.StatusCode.INTERNAL,
}
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _code(exc: ServerError) -> grpc.StatusCode:
    for cls, code in _CODES.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: ServerError) -> NoReturn:
    await context.abort(_code(exc), str(exc))
    raise AssertionError("unreachable")  # context.abort raises


def _param(params: Any, key: str) -> int | None:
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param"):
        return int(getattr(p, which))
    raise InvalidInput(f"parameter '{key}' must be an integer")


def decode_request(request: Any) -> InferRequest:
    """ModelInferRequest -> InferRequest."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"expected {len(request.inputs)} raw_input_contents (one per input), got {len(raw)}"
        )
    inputs: list[InferInput] = []
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        datatype = tensor.datatype
        shape = check_shape(name, tensor.shape)
        if raw:
            data = array_from_raw(name, datatype, shape, raw[i])
        else:
            field = _CONTENTS_FIELD.get(datatype)
            if field is None or datatype not in NP_BY_V2:
                raise InvalidInput(
                    f"input '{name}': datatype '{datatype}' must be sent in raw_input_contents"
                )
            values = getattr(tensor.contents, field)
            count = int(np.prod(shape)) if shape else 1
            if len(values) != count:
                raise InvalidInput(
                    f"input '{name}': got {len(values)} elements, expected {count} for shape "
                    f"{list(shape)}"
                )
            if datatype == "BYTES":
                data = np.empty(count, dtype=np.object_)
                data[:] = list(values)
                data = data.reshape(shape)
            else:
                data = np.asarray(values, dtype=NP_BY_V2[datatype]).reshape(shape)
        inputs.append(InferInput(name, datatype, shape, data))
    if not inputs:
        raise InvalidInput("the inference request has no inputs")
    priority = _param(request.parameters, "priority") or 0
    timeout = _param(request.parameters, "timeout")
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=[RequestedOutput(o.name) for o in request.outputs],
        priority=priority,
        timeout_us=timeout,
    )


def encode_response(response: InferResponse) -> Any:
    """InferResponse -> ModelInferResponse with raw_output_contents."""
    msg = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for out in response.outputs:
        tensor = msg.outputs.add()
        tensor.name = out.name
        tensor.datatype = out.datatype
        tensor.shape.extend(out.shape)
        msg.raw_output_contents.append(array_to_raw(out.data))
    return msg


class GrpcService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """GRPCInferenceService implemented on the DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=self._dp.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self._dp.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(
            ready=self._dp.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(**self._dp.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            meta = self._dp.model_metadata(request.name, request.version)
        except ServerError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        try:
            config = self._dp.model_config(request.name, request.version)
        except ServerError as exc:
            await _abort(context, exc)
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        try:
            stats = self._dp.statistics(request.name, request.version)
        except ServerError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        entries = self._dp.repository_index(request.ready)
        return json_format.ParseDict({"models": entries}, service_pb2.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        try:
            config: Any = None
            for key in request.parameters:
                if key.startswith("file:"):
                    raise InvalidInput("loading model files through the load API is not supported")
            if "config" in request.parameters:
                text = request.parameters["config"].string_param
                try:
                    config = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"failed to parse parameters.config JSON: {exc}") from None
            await self._dp.load_model(request.model_name, config)
        except ServerError as exc:
            await _abort(context, exc)
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        try:
            await self._dp.unload_model(request.model_name)
        except ServerError as exc:
            await _abort(context, exc)
        return service_pb2.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            response = await self._dp.infer(decode_request(request))
        except ServerError as exc:
            await _abort(context, exc)
        return encode_response(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in request_iterator:
            try:
                response = await self._dp.infer(decode_request(request))
                yield service_pb2.ModelStreamInferResponse(infer_response=encode_response(response))
            except ServerError as exc:
                yield service_pb2.ModelStreamInferResponse(error_message=str(exc))
