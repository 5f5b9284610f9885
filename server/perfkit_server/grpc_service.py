"""KServe v2 over gRPC: GRPCInferenceService's methods on the lean HTTP/2 server (`grpc_wire`).

Every call runs on the server's event loop, beside HTTP: protobuf parsing, decoding, the
DataPlane call and response encoding. A model that can run a request now (no dynamic batcher, a
short non-blocking backend, an idle instance: `DataPlane.infer_direct`) answers within the call;
anything else is awaited. Messages are tritonclient's generated classes (upb protobuf); no
vendored protos. Inputs come as `raw_input_contents` (or typed `contents`); outputs always go
back as `raw_output_contents`. ServerError subclasses map to INVALID_ARGUMENT, NOT_FOUND,
UNAVAILABLE and INTERNAL.

ModelStreamInfer answers as Triton's stream handler: a model that is not decoupled gets one
response per request, in request order; a decoupled model's responses (`DataPlane.infer_stream`)
go out as the model sends them, interleaved with other requests' responses. Every response
carries the request's id and the parameter `triton_final_response`; an error is a message with
`error_message` (and the id), and the stream goes on. ModelInfer on a decoupled model is refused
with Triton's words.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from perfkit.datatypes import DATATYPES, NP_BY_V2
from perfkit_server.dataplane import DataPlane
from perfkit_server.errors import (
    DecoupledUnary,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServerError,
    Unavailable,
)
from perfkit_server.grpc_wire import (
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    UNAVAILABLE,
    UNIMPLEMENTED,
    GrpcError,
    GrpcServer,
    Method,
)
from perfkit_server.h2_limits import H2Limits
from perfkit_server.shm import AlreadyExists, SharedMemory, ShmRef, Unsupported
from perfkit_server.shm_grpc import ShmRpcs
from perfkit_server.types import (
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    array_from_raw,
    array_to_raw,
    check_shape,
)

SERVICE = "inference.GRPCInferenceService"

_ALREADY_EXISTS = 6
_CODES = {
    AlreadyExists: _ALREADY_EXISTS,
    DecoupledUnary: UNIMPLEMENTED,
    Unsupported: UNIMPLEMENTED,
    InvalidInput: INVALID_ARGUMENT,
    ModelNotFound: NOT_FOUND,
    Unavailable: UNAVAILABLE,
    InternalError: INTERNAL,
}
# KServe v2 datatype -> the InferTensorContents field of its typed values (none: raw only).
_CONTENTS_FIELD = {d.v2: d.grpc_contents for d in DATATYPES if d.grpc_contents is not None}


def _code(exc: ServerError) -> int:
    for cls, code in _CODES.items():
        if isinstance(exc, cls):
            return code
    return INVALID_ARGUMENT


def _param(params: Any, key: str) -> int | None:
    if key not in params:
        return None
    p = params[key]
    which = p.WhichOneof("parameter_choice")
    if which in ("int64_param", "uint64_param"):
        return int(getattr(p, which))
    raise InvalidInput(f"parameter '{key}' must be an integer")


def _param_value(p: Any) -> Any:
    """An InferParameter's value (bool, int, float or str); None when none is set."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


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


def _shm_ref(tensor: Any) -> ShmRef | None:
    """A tensor's shared-memory parameters (Triton's ParseSharedMemoryParams), None without them."""
    params = tensor.parameters
    if not params:
        return None
    values: dict[str, Any] = {}
    for key, kind in (
        ("shared_memory_region", "string_param"),
        ("shared_memory_offset", "int64_param"),
        ("shared_memory_byte_size", "int64_param"),
    ):
        if key not in params:
            continue
        if key != "shared_memory_region" and "shared_memory_region" not in values:
            raise InvalidInput(
                f"'{key}' can not be specified without 'shared_memory_region' parameter for "
                f"tensor '{tensor.name}'"
            )
        if params[key].WhichOneof("parameter_choice") != kind:
            raise InvalidInput(
                f"invalid value type for '{key}' parameter for tensor '{tensor.name}', "
                f"expected {kind}."
            )
        values[key] = getattr(params[key], kind)
    if "shared_memory_region" not in values:
        return None
    return ShmRef(
        values["shared_memory_region"],
        values.get("shared_memory_offset", 0),
        values.get("shared_memory_byte_size", 0),
    )


def decode_request(request: Any, shm: SharedMemory | None = None) -> InferRequest:
    """ModelInferRequest -> InferRequest; tensors in shared memory through `shm`'s regions."""
    raw = request.raw_input_contents
    tensors = request.inputs
    refs = [_shm_ref(t) for t in tensors] if shm is not None else [None] * len(tensors)
    expected = sum(ref is None for ref in refs)
    if raw and len(raw) != expected:
        raise InvalidInput(
            f"expected {expected} raw_input_contents (one per input not in shared memory), got "
            f"{len(raw)}"
        )
    inputs: list[InferInput] = []
    index = 0
    for tensor, ref in zip(tensors, refs, strict=True):
        name = tensor.name
        datatype = tensor.datatype
        shape = check_shape(name, tensor.shape)
        if ref is not None and shm is not None:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    "unexpected 'content' provided when using shared memory for input tensor "
                    f"'{name}' for model '{request.model_name}'"
                )
            data = shm.input_array(ref, name, datatype, shape, request.model_name)
        elif raw:
            data = array_from_raw(name, datatype, shape, raw[index])
            index += 1
        else:
            data = _typed_contents(name, datatype, shape, tensor)
        inputs.append(InferInput(name, datatype, shape, data))
    if not inputs:
        raise InvalidInput("the inference request has no inputs")
    params = request.parameters
    priority = timeout = None
    extra: dict[str, Any] | None = None
    if params:
        priority = _param(params, "priority")
        timeout = _param(params, "timeout")
        extra = {
            key: _param_value(params[key]) for key in params if key not in ("priority", "timeout")
        } or None
    decoded = InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=[RequestedOutput(o.name) for o in request.outputs],
        priority=priority or 0,
        timeout_us=timeout,
        parameters=extra,
    )
    if shm is not None:
        slots = {}
        for out in request.outputs:
            ref = _shm_ref(out)
            if ref is not None:
                slots[out.name] = shm.output_slot(ref)
        if slots:
            decoded.shm_outputs = slots
    return decoded


def encode_response(response: InferResponse, request: InferRequest | None = None) -> Any:
    """InferResponse -> ModelInferResponse with raw_output_contents (empty for an output written
    to shared memory, as Triton sends)."""
    in_shm = request.shm_outputs if request is not None and request.shm_outputs else {}
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for out in response.outputs:
        tensor = msg.outputs.add()
        tensor.name = out.name
        tensor.datatype = out.datatype
        tensor.shape.extend(out.shape)
        msg.raw_output_contents.append(b"" if out.name in in_shm else array_to_raw(out.data))
    return msg


Unary = Callable[[Any], Coroutine[Any, Any, Any]]


def _stream_message(response: Any, final: bool) -> Any:
    """A stream's response message: the parameter triton_final_response says whether it is the
    request's last (Triton sets it on every stream response)."""
    response.parameters["triton_final_response"].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)


def _stream_error(request_id: str, exc: ServerError) -> Any:
    """A request's error on a stream: the message, and the id so the client knows which."""
    return pb.ModelStreamInferResponse(
        error_message=str(exc), infer_response=pb.ModelInferResponse(id=request_id)
    )


def error_status(exc: Exception) -> GrpcError | None:
    """A ServerError's gRPC status; None for anything else (a server bug: INTERNAL, logged)."""
    if isinstance(exc, ServerError):
        return GrpcError(_code(exc), str(exc))
    return None


class GrpcService:
    """GRPCInferenceService on the DataPlane; `server()` builds the lean gRPC server."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    def server(self, limits: H2Limits) -> GrpcServer:
        """A GrpcServer with every RPC registered (not started, no port yet)."""
        unary: dict[str, tuple[Any, Unary]] = {
            "ServerLive": (pb.ServerLiveRequest, self._live),
            "ServerReady": (pb.ServerReadyRequest, self._ready),
            "ModelReady": (pb.ModelReadyRequest, self._model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self._server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self._model_metadata),
            "ModelConfig": (pb.ModelConfigRequest, self._model_config),
            "ModelStatistics": (pb.ModelStatisticsRequest, self._statistics),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self._index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self._load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self._unload),
            **ShmRpcs(self._dp.shm).rpcs(),
        }
        methods = {
            f"/{SERVICE}/{name}": Method(req.FromString, fn) for name, (req, fn) in unary.items()
        }
        methods[f"/{SERVICE}/ModelInfer"] = Method(pb.ModelInferRequest.FromString, self._infer)
        methods[f"/{SERVICE}/ModelStreamInfer"] = Method(
            pb.ModelInferRequest.FromString, self._stream_infer, streaming=True
        )
        return GrpcServer(methods, error_status, limits)

    # -- inference -----------------------------------------------------------------------------

    def _infer(self, request: Any) -> Any:
        """ModelInfer: answered at once when the model can run it now, else an awaitable."""
        decoded = decode_request(request, self._dp.shm)
        try:
            response = self._dp.infer_direct(decoded)
        except DecoupledUnary:
            raise DecoupledUnary("ModelInfer RPC") from None
        if response is None:
            return self._infer_queued(decoded)
        return encode_response(response, decoded)

    async def _infer_queued(self, decoded: InferRequest) -> Any:
        return encode_response(await self._dp.infer(decoded), decoded)

    def _stream_infer(self, request: Any) -> Any:
        """ModelStreamInfer: one response per request, in order, or a decoupled model's feed of
        responses; an error is a message, not the end."""
        try:
            decoded = decode_request(request, self._dp.shm)
            response = self._dp.infer_direct(decoded)
        except DecoupledUnary:
            return self._stream_decoupled(decoded)
        except ServerError as exc:
            return _stream_error(request.id, exc)
        if response is None:
            return self._stream_queued(decoded)
        return _stream_message(encode_response(response, decoded), True)

    async def _stream_queued(self, decoded: InferRequest) -> Any:
        try:
            response = await self._dp.infer(decoded)
        except ServerError as exc:
            return _stream_error(decoded.id, exc)
        return _stream_message(encode_response(response, decoded), True)

    async def _stream_decoupled(self, decoded: InferRequest) -> AsyncIterator[Any]:
        """Each response of a decoupled model's request, as it comes (grpc_wire sends a feed)."""
        try:
            responses = self._dp.infer_stream(decoded)
        except ServerError as exc:
            yield _stream_error(decoded.id, exc)
            return
        try:
            async for response in responses:
                if response.error is not None:
                    failed = pb.ModelInferResponse(
                        model_name=response.model_name,
                        model_version=response.model_version,
                        id=response.id,
                    )
                    failed.parameters["triton_final_response"].bool_param = response.final
                    yield pb.ModelStreamInferResponse(
                        error_message=str(response.error), infer_response=failed
                    )
                else:
                    yield _stream_message(encode_response(response, decoded), response.final)
        except ServerError as exc:  # refused before it ran (queue full, timeout, unloading)
            yield _stream_error(decoded.id, exc)
        finally:
            await responses.aclose()  # type: ignore[attr-defined]

    # -- the other RPCs ------------------------------------------------------------------------

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
        dependents = False
        if "unload_dependents" in request.parameters:
            param = request.parameters["unload_dependents"]
            if param.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidInput("parameter 'unload_dependents' must be a bool_param")
            dependents = param.bool_param
        await self._dp.unload_model(request.model_name, dependents)
        return pb.RepositoryModelUnloadResponse()
