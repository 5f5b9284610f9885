"""KServe v2 over gRPC on grpcio's sync server (handler threads), bridged into the asyncio loop.

grpcio's sync server spends much less CPU per call than grpc.aio (no per-call asyncio machinery
in Cython), so every RPC runs in a handler thread: protobuf parsing, decoding and response
encoding happen there, and only the DataPlane call hops onto the event loop (where the
registry and schedulers live) through `run_coroutine_threadsafe`. A model without a dynamic
batcher, with a short non-blocking backend and an idle instance, runs right in the handler thread
(`DataPlane.infer_direct`): no hop at all.
Messages are tritonclient's generated classes (upb protobuf); no vendored protos. Inputs come as
`raw_input_contents` (or typed `contents`); outputs always go back as `raw_output_contents`.
ServerError subclasses map to INVALID_ARGUMENT/NOT_FOUND/UNAVAILABLE/INTERNAL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

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

SERVICE = "inference.GRPCInferenceService"
# Handler threads: each in-flight call (or open stream) holds one while it waits for the loop.
MAX_WORKERS = 256

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


def _abort(context: Any, exc: ServerError) -> NoReturn:
    context.abort(_code(exc), str(exc))
    raise AssertionError("unreachable")  # context.abort raises


def _param(params: Any, key: str) -> int | None:
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param"):
        return int(getattr(p, which))
    raise InvalidInput(f"parameter '{key}' must be an integer")


def _typed_contents(name: str, datatype: str, shape: tuple[int, ...], tensor: Any) -> Any:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None or datatype not in NP_BY_V2:
        raise InvalidInput(
            f"input '{name}': datatype '{datatype}' must be sent in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    count = int(np.prod(shape)) if shape else 1
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': got {len(values)} elements, expected {count} for shape {list(shape)}"
        )
    if datatype == "BYTES":
        data = np.empty(count, dtype=np.object_)
        data[:] = list(values)
        return data.reshape(shape)
    return np.asarray(values, dtype=NP_BY_V2[datatype]).reshape(shape)


def decode_request(request: Any) -> InferRequest:
    """ModelInferRequest -> InferRequest."""
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidInput(
            f"expected {len(tensors)} raw_input_contents (one per input), got {len(raw)}"
        )
    inputs: list[InferInput] = []
    for i, tensor in enumerate(tensors):
        name = tensor.name
        datatype = tensor.datatype
        shape = check_shape(name, tensor.shape)
        if raw:
            data = array_from_raw(name, datatype, shape, raw[i])
        else:
            data = _typed_contents(name, datatype, shape, tensor)
        inputs.append(InferInput(name, datatype, shape, data))
    if not inputs:
        raise InvalidInput("the inference request has no inputs")
    params = request.parameters
    priority = timeout = None
    if params:
        priority = _param(params, "priority")
        timeout = _param(params, "timeout")
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=[RequestedOutput(o.name) for o in request.outputs],
        priority=priority or 0,
        timeout_us=timeout,
    )


def encode_response(response: InferResponse) -> Any:
    """InferResponse -> ModelInferResponse with raw_output_contents."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for out in response.outputs:
        tensor = msg.outputs.add()
        tensor.name = out.name
        tensor.datatype = out.datatype
        tensor.shape.extend(out.shape)
        msg.raw_output_contents.append(array_to_raw(out.data))
    return msg


Unary = Callable[[Any], Coroutine[Any, Any, Any]]


class GrpcService:
    """GRPCInferenceService on the DataPlane; `server()` builds the grpcio server."""

    def __init__(self, dataplane: DataPlane, loop: asyncio.AbstractEventLoop) -> None:
        self._dp = dataplane
        self._loop = loop

    def server(self, max_message_bytes: int) -> grpc.Server:
        """A grpcio sync server with every RPC registered (not started, no port yet)."""
        server = grpc.server(
            ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        server.add_generic_rpc_handlers((self._handler(),))
        return server

    def _handler(self) -> grpc.GenericRpcHandler:
        unary: dict[str, tuple[Any, Any, Unary]] = {
            "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse, self._live),
            "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse, self._ready),
            "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse, self._model_ready),
            "ServerMetadata": (
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
                self._server_metadata,
            ),
            "ModelMetadata": (
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
                self._model_metadata,
            ),
            "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse, self._model_config),
            "ModelStatistics": (
                pb.ModelStatisticsRequest,
                pb.ModelStatisticsResponse,
                self._statistics,
            ),
            "RepositoryIndex": (
                pb.RepositoryIndexRequest,
                pb.RepositoryIndexResponse,
                self._index,
            ),
            "RepositoryModelLoad": (
                pb.RepositoryModelLoadRequest,
                pb.RepositoryModelLoadResponse,
                self._load,
            ),
            "RepositoryModelUnload": (
                pb.RepositoryModelUnloadRequest,
                pb.RepositoryModelUnloadResponse,
                self._unload,
            ),
        }
        handlers: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(
                self._bridged(fn),
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )
            for name, (req, resp, fn) in unary.items()
        }
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self._model_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # -- the thread side -----------------------------------------------------------------------

    def _bridged(self, fn: Unary) -> Callable[[Any, Any], Any]:
        def handle(request: Any, context: Any) -> Any:
            try:
                return asyncio.run_coroutine_threadsafe(fn(request), self._loop).result()
            except ServerError as exc:
                _abort(context, exc)

        return handle

    def _infer(self, request: Any) -> Any:
        decoded = decode_request(request)
        response = self._dp.infer_direct(decoded, wait=True)
        if response is None:
            future = asyncio.run_coroutine_threadsafe(self._dp.infer(decoded), self._loop)
            response = future.result()
        return encode_response(response)

    def _model_infer(self, request: Any, context: Any) -> Any:
        try:
            return self._infer(request)
        except ServerError as exc:
            _abort(context, exc)

    def _stream_infer(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        for request in requests:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request))
            except ServerError as exc:
                yield pb.ModelStreamInferResponse(error_message=str(exc))

    # -- the loop side -------------------------------------------------------------------------

    async def _live(self, request: Any) -> Any:
        return pb.ServerLiveResponse(live=self._dp.live())

    async def _ready(self, request: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._dp.ready())

    async def _model_ready(self, request: Any) -> Any:
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    async def _server_metadata(self, request: Any) -> Any:
        return pb.ServerMetadataResponse(**self._dp.server_metadata())

    async def _model_metadata(self, request: Any) -> Any:
        meta = self._dp.model_metadata(request.name, request.version)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    async def _model_config(self, request: Any) -> Any:
        return pb.ModelConfigResponse(config=self._dp.model_config(request.name, request.version))

    async def _statistics(self, request: Any) -> Any:
        stats = self._dp.statistics(request.name, request.version)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def _index(self, request: Any) -> Any:
        entries = self._dp.repository_index(request.ready)
        return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

    async def _load(self, request: Any) -> Any:
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
        return pb.RepositoryModelLoadResponse()

    async def _unload(self, request: Any) -> Any:
        await self._dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()
