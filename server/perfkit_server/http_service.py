"""KServe v2 over HTTP: routes on the lean `http_wire` server, JSON and binary tensor data.

Maps ServerError subclasses to HTTP statuses (400/404/503/500) with Triton's `{"error": msg}` body.
The infer route answers without a task or an await when the model can run the request at once
(`DataPlane.infer_direct`); every other route, and queued inference, runs as a coroutine.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from perfkit_server.dataplane import DataPlane
from perfkit_server.errors import (
    DecoupledUnary,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServerError,
    Unavailable,
)
from perfkit_server.http_wire import Reply, Request, error_reply, json_reply, path_param
from perfkit_server.shm import AlreadyExists, SharedMemory, ShmRef, Unsupported
from perfkit_server.shm_http import ShmRoutes, shm_ref
from perfkit_server.types import (
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    array_from_json,
    array_to_json,
    array_to_raw,
    check_shape,
    deserialize_bytes,
    raw_layout,
)

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_STATUS = {
    AlreadyExists: 400,
    DecoupledUnary: 501,
    InvalidInput: 400,
    ModelNotFound: 404,
    Unavailable: 503,
    InternalError: 500,
    Unsupported: 501,
}
_OK = Reply(200)
_NOT_FOUND = Reply(404, b"404: Not Found", "text/plain; charset=utf-8")
_NOT_ALLOWED = Reply(405, b"405: Method Not Allowed", "text/plain; charset=utf-8")
_MAX_ROUTES = 1024
_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"

Handler = Callable[[Request, dict[str, str]], Reply | Awaitable[Reply]]


def _status(exc: ServerError) -> int:
    for cls, status in _STATUS.items():
        if isinstance(exc, cls):
            return status
    return 400


def _parse_json(raw: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(raw)) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"failed to parse the {what} JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"failed to parse the {what} JSON: nested too deeply") from None


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    """A JSON shape: a list of integers (Triton refuses 1.5 and 16.0 alike, and so do we)."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"input '{name}': shape must be a list of integers, got {shape!r}")
    return check_shape(name, shape)


@dataclass(frozen=True, slots=True, eq=False)
class _Header:
    """An infer request's JSON header, parsed and checked: what every body starting with it shares.

    `inputs` holds (name, datatype, shape, binary_data_size or None, numpy dtype or None for
    BYTES, element count, JSON data, or the input's ShmRef) per input; dtype and count come from
    `raw_layout`. `shm_outputs` are the requested outputs' shared-memory parameters.
    Headers without JSON tensor data are cached and double as the request's `signature`: a load
    generator sends the same header with every request, so the JSON is parsed once, and the
    dataplane checks the request once.
    """

    inputs: tuple[tuple[str, str, tuple[int, ...], int | None, Any, int, Any], ...]
    outputs: list[RequestedOutput]
    id: str
    priority: int
    timeout_us: int | None
    binary_default: bool
    cacheable: bool
    shm_outputs: tuple[tuple[str, ShmRef], ...] = ()
    params: dict[str, Any] | None = None


# Request parameters the transport and scheduler read themselves; the rest go to
# InferRequest.parameters.
_TRANSPORT_PARAMS = frozenset({"priority", "timeout", "binary_data_output"})
_HEADERS: dict[bytes, _Header] = {}
_MAX_HEADERS = 256
_MAX_CACHED_HEADER = 4096


def _parse_header(raw: bytes | memoryview) -> _Header:
    obj = _parse_json(raw, "inference request")
    if not isinstance(obj, dict):
        raise InvalidInput("the inference request must be a JSON object")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the inference request needs a non-empty 'inputs' list")
    inputs: list[tuple[str, str, tuple[int, ...], int | None, Any, int, Any]] = []
    cacheable = True
    for item in raw_inputs:
        if not isinstance(item, dict) or "name" not in item:
            raise InvalidInput("each input must be an object with name, shape, datatype and data")
        name = str(item["name"])
        datatype = str(item.get("datatype", ""))
        shape = _shape(name, item.get("shape"))
        iparams = item.get("parameters") or {}
        size = iparams.get("binary_data_size") if isinstance(iparams, dict) else None
        ref = shm_ref(iparams)
        if ref is not None:
            if size is not None or "data" in item:
                set_ = (" 'data'" if "data" in item else "") + (
                    " 'binary_data_size'" if size is not None else ""
                )
                raise InvalidInput(
                    "Input must set only one of the following fields: 'data', 'binary_data_size' "
                    f"in 'parameters', 'shared_memory_region' in 'parameters'. But set{set_} "
                    "'shared_memory_region'"
                )
            inputs.append((name, datatype, shape, None, None, 0, ref))
        elif size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(
                    f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}"
                )
            dtype, count = raw_layout(name, datatype, shape, size)
            inputs.append((name, datatype, shape, size, dtype, count, None))
        else:
            if "data" not in item:
                raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs.append((name, datatype, shape, None, None, 0, item["data"]))
            cacheable = False
    outputs: list[RequestedOutput] = []
    shm_outputs: list[tuple[str, ShmRef]] = []
    for item in obj.get("outputs") or []:
        if not isinstance(item, dict) or "name" not in item:
            raise InvalidInput("each requested output must be an object with a name")
        oparams = item.get("parameters") or {}
        out_ref = shm_ref(oparams)
        if out_ref is not None:
            if oparams.get("classification"):
                raise InvalidInput(
                    "Output can't set both 'shared_memory_region' and 'classification'"
                )
            if oparams.get("binary_data"):
                raise InvalidInput("Output can't set both 'shared_memory_region' and 'binary_data'")
            shm_outputs.append((str(item["name"]), out_ref))
        if isinstance(oparams, dict) and oparams.get("classification"):
            raise InvalidInput("the classification extension is not supported by perfkit_server")
        binary_flag = oparams.get("binary_data") if isinstance(oparams, dict) else None
        outputs.append(
            RequestedOutput(str(item["name"]), None if binary_flag is None else bool(binary_flag))
        )
    priority = params.get("priority", 0)
    timeout = params.get("timeout")
    if not isinstance(priority, int) or (timeout is not None and not isinstance(timeout, int)):
        raise InvalidInput("parameters 'priority' and 'timeout' must be integers")
    extra = {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS}
    for key, value in extra.items():
        if not isinstance(value, bool | int | float | str):
            raise InvalidInput(
                f"parameter '{key}' must be a bool, number or string, got {type(value).__name__}"
            )
    return _Header(
        tuple(inputs),
        outputs,
        str(obj.get("id", "")),
        priority,
        timeout,
        bool(params.get("binary_data_output", False)),
        cacheable,
        tuple(shm_outputs),
        extra or None,
    )


def decode_infer_request(
    body: bytes,
    header_length: str | None,
    model: str,
    version: str,
    shm: SharedMemory | None = None,
) -> tuple[InferRequest, bool]:
    """Decode a v2 infer body (JSON, or JSON + binary tensors). Returns (request, binary_default).

    Tensors in shared memory are read from (inputs), or checked and held for (outputs), `shm`'s
    regions.
    """
    view = memoryview(body)
    signature: _Header | None = None  # only a cached header: one object for many requests
    if header_length is None:
        header = _parse_header(view)
        binary = view[:0]
    else:
        try:
            json_len = int(header_length)
        except ValueError:
            raise InvalidInput(
                f"{HEADER_LENGTH} must be an integer, got '{header_length}'"
            ) from None
        if json_len < 0 or json_len > len(view):
            raise InvalidInput(
                f"{HEADER_LENGTH} {json_len} is larger than the request body ({len(view)} bytes)"
            )
        key = body[:json_len]
        cached = _HEADERS.get(key)
        if cached is None:
            header = _parse_header(key)
            if header.cacheable and json_len <= _MAX_CACHED_HEADER:
                if len(_HEADERS) >= _MAX_HEADERS:
                    _HEADERS.clear()
                _HEADERS[key] = signature = header
        else:
            header = signature = cached
        binary = view[json_len:]
    inputs: list[InferInput] = []
    offset = 0
    left = len(binary)
    for name, datatype, shape, size, dtype, count, data in header.inputs:
        if isinstance(data, ShmRef):
            if shm is None:
                raise InvalidInput(f"input '{name}': shared memory is not available here")
            array = shm.input_array(data, name, datatype, shape, model)
        elif size is None:
            array = array_from_json(name, datatype, shape, data)
        else:
            if offset + size > left:
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} exceeds the binary data in the "
                    f"body ({left - offset} bytes left)"
                )
            if dtype is None:
                raw = binary[offset : offset + size]
                array = deserialize_bytes(name, raw, count).reshape(shape)
            else:
                array = np.frombuffer(binary, dtype, count, offset).reshape(shape)
            offset += size
        inputs.append(InferInput(name, datatype, shape, array))
    if offset != left:
        raise InvalidInput(
            f"unexpected {left - offset} trailing bytes after the binary tensor data: the "
            "body is larger than its inputs' binary_data_size values add up to"
        )
    request = InferRequest(
        model,
        version,
        header.id,
        inputs,
        header.outputs,
        header.priority,
        header.timeout_us,
        signature,
        parameters=header.params,
    )
    if header.shm_outputs:
        if shm is None:
            raise InvalidInput("requested outputs: shared memory is not available here")
        request.shm_outputs = {n: shm.output_slot(ref) for n, ref in header.shm_outputs}
    return request, header.binary_default


@functools.lru_cache(maxsize=1024)
def _json_name(name: str) -> str:
    """A model, version or tensor name as a JSON string (these come from the server's configs)."""
    return json.dumps(name)


def encode_infer_response(
    response: InferResponse, request: InferRequest, binary_default: bool
) -> Reply:
    """The v2 response: the JSON header written out directly (json.dumps of a dict costs more than
    the identity model's whole run), then the binary outputs."""
    entries: list[str] = []
    chunks: list[bytes] = []
    in_shm = request.shm_outputs or {}
    for out in response.outputs:
        if out.name in in_shm:  # as Triton: the tensor is in the region; no data, no parameters
            entries.append(
                f'{{"name":{_json_name(out.name)},"datatype":"{out.datatype}",'
                f'"shape":[{",".join([str(d) for d in out.shape])}]}}'
            )
            continue
        flag = None
        for wanted in request.outputs:
            if wanted.name == out.name:
                flag = wanted.binary
                break
        head = (
            f'{{"name":{_json_name(out.name)},"datatype":"{out.datatype}",'
            f'"shape":[{",".join([str(d) for d in out.shape])}],'
        )
        if flag if flag is not None else binary_default:
            raw = array_to_raw(out.data)
            entries.append(f'{head}"parameters":{{"binary_data_size":{len(raw)}}}}}')
            chunks.append(raw)
        else:
            # inf and NaN as Triton writes them (rapidjson's kWriteNanAndInfFlag): Infinity,
            # -Infinity, NaN. Not strict JSON, but what Triton's clients parse; a client that
            # needs strict JSON asks for the output as binary_data.
            entries.append(f'{head}"data":{json.dumps(array_to_json(out.data))}}}')
    ident = f',"id":{json.dumps(response.id)}' if response.id else ""
    head_bytes = (
        f'{{"model_name":{_json_name(response.model_name)},'
        f'"model_version":{_json_name(response.model_version)},'
        f'"outputs":[{",".join(entries)}]{ident}}}'
    ).encode()
    if not chunks:
        return Reply(200, head_bytes, "application/json")
    return Reply(
        200,
        b"".join([head_bytes, *chunks]),
        "application/octet-stream",
        ((HEADER_LENGTH, str(len(head_bytes))),),
    )


class HttpService:
    """The KServe v2 routes, dispatched in order (the hot path first) to the DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane
        get, post = "GET", "POST"
        routes: list[tuple[str, str, Handler]] = [
            (post, _MODEL + "/infer", self.infer),
            (get, "/v2/health/live", self.live),
            (get, "/v2/health/ready", self.ready),
            (get, "/v2", self.server_metadata),
            (get, "/v2/models/stats", self.stats),
            (post, "/v2/repository/index", self.index),
            # `.+` so that a name with an (encoded) slash reaches the name check and gets a 400.
            (post, "/v2/repository/models/(?P<model>.+)/load", self.load),
            (post, "/v2/repository/models/(?P<model>.+)/unload", self.unload),
            (get, _MODEL, self.model_metadata),
            (get, _MODEL + "/ready", self.model_ready),
            (get, _MODEL + "/config", self.model_config),
            (get, _MODEL + "/stats", self.stats),
            *ShmRoutes(dataplane.shm).routes(),
        ]
        self._routes = [(m, re.compile(pattern + "$"), h) for m, pattern, h in routes]
        # (method, path) -> its route: clients repeat the same few paths, and matching the route
        # table's regular expressions costs more than the identity model's whole run.
        self._route_cache: dict[tuple[str, str], tuple[Handler, dict[str, str]] | Reply] = {}

    def dispatch(self, request: Request) -> Reply | Awaitable[Reply]:
        """Route one request; a Reply now, or a coroutine that gives one."""
        method = "GET" if request.method == "HEAD" else request.method
        key = (method, request.path)
        route = self._route_cache.get(key)
        if route is None:
            route = self._route(method, request.path)
            if len(self._route_cache) >= _MAX_ROUTES:
                self._route_cache.clear()
            self._route_cache[key] = route
        if isinstance(route, Reply):
            return route
        handler, params = route
        try:
            result = handler(request, params)
        except ServerError as exc:
            return error_reply(_status(exc), str(exc))
        except Exception:  # the request boundary: a server bug answers 500 and is logged
            logger.exception("unhandled error on %s %s", request.method, request.path)
            return error_reply(500, "internal server error; see the server log")
        if isinstance(result, Reply):
            return result
        return _guarded(result, request)

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | Reply:
        """The handler and path parameters of a request, or its 404/405 reply."""
        allowed = False
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            if route_method != method:
                allowed = True
                continue
            return handler, {
                k: path_param(v) for k, v in match.groupdict().items() if v is not None
            }
        return _NOT_ALLOWED if allowed else _NOT_FOUND

    def live(self, request: Request, params: dict[str, str]) -> Reply:
        return _OK if self._dp.live() else Reply(503)

    def ready(self, request: Request, params: dict[str, str]) -> Reply:
        return _OK if self._dp.ready() else Reply(503)

    def server_metadata(self, request: Request, params: dict[str, str]) -> Reply:
        return json_reply(self._dp.server_metadata())

    def model_metadata(self, request: Request, params: dict[str, str]) -> Reply:
        return json_reply(self._dp.model_metadata(params["model"], params.get("version", "")))

    def model_ready(self, request: Request, params: dict[str, str]) -> Reply:
        if self._dp.model_ready(params["model"], params.get("version", "")):
            return _OK
        return error_reply(400, "Model version not ready")

    def model_config(self, request: Request, params: dict[str, str]) -> Reply:
        return json_reply(self._dp.model_config_json(params["model"], params.get("version", "")))

    def stats(self, request: Request, params: dict[str, str]) -> Reply:
        return json_reply(self._dp.statistics(params.get("model", ""), params.get("version", "")))

    def index(self, request: Request, params: dict[str, str]) -> Reply:
        obj = _parse_json(request.body, "repository index request")
        ready = bool(obj.get("ready", False)) if isinstance(obj, dict) else False
        return json_reply(self._dp.repository_index(ready))

    async def load(self, request: Request, params: dict[str, str]) -> Reply:
        obj = _parse_json(request.body, "load request")
        body_params = obj.get("parameters") if isinstance(obj, dict) else None
        config: Any = None
        if isinstance(body_params, dict):
            for key in body_params:
                if key.startswith("file:"):
                    raise InvalidInput("loading model files through the load API is not supported")
            config = body_params.get("config")
            if config is not None and not isinstance(config, str | dict):
                raise InvalidInput("parameters.config must be the model config as a JSON string")
            if isinstance(config, str):
                config = _parse_json(config.encode(), "parameters.config")
        await self._dp.load_model(params["model"], config)
        return _OK

    async def unload(self, request: Request, params: dict[str, str]) -> Reply:
        obj = _parse_json(request.body, "unload request")
        body = obj.get("parameters") if isinstance(obj, dict) else None
        dependents = body.get("unload_dependents", False) if isinstance(body, dict) else False
        if not isinstance(dependents, bool):
            raise InvalidInput("parameters.unload_dependents must be a boolean")
        await self._dp.unload_model(params["model"], dependents)
        return _OK

    def infer(self, request: Request, params: dict[str, str]) -> Reply | Awaitable[Reply]:
        try:
            infer_request, binary_default = decode_infer_request(
                request.body,
                request.header_length,
                params["model"],
                params.get("version", ""),
                self._dp.shm,
            )
        except RecursionError:  # tensor data nested deeper than the decoder can follow
            raise InvalidInput("the inference request's tensor data is nested too deeply") from None
        try:
            response = self._dp.infer_direct(infer_request)
        except DecoupledUnary:  # Triton's words for this endpoint
            raise DecoupledUnary("HTTP end point") from None
        if response is None:
            return self._infer_queued(infer_request, binary_default)
        return encode_infer_response(response, infer_request, binary_default)

    async def _infer_queued(self, infer_request: InferRequest, binary_default: bool) -> Reply:
        response = await self._dp.infer(infer_request)
        return encode_infer_response(response, infer_request, binary_default)


async def _guarded(result: Awaitable[Reply], request: Request) -> Reply:
    try:
        return await result
    except ServerError as exc:
        return error_reply(_status(exc), str(exc))
    except Exception:  # the request boundary: a server bug answers 500 and is logged
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_reply(500, "internal server error; see the server log")
