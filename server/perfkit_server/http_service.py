"""KServe v2 over HTTP: routes on the lean `http_wire` server, JSON and binary tensor data.

Maps ServerError subclasses to HTTP statuses (400/404/503/500) with Triton's `{"error": msg}` body.
The infer route answers without a task or an await when the model can run the request at once
(`DataPlane.infer_direct`); every other route, and queued inference, runs as a coroutine.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from perfkit_server.dataplane import DataPlane
from perfkit_server.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServerError,
    Unavailable,
)
from perfkit_server.http_wire import Reply, Request, error_reply, json_reply, path_param
from perfkit_server.types import (
    InferInput,
    InferRequest,
    InferResponse,
    RequestedOutput,
    array_from_json,
    array_from_raw,
    array_to_json,
    array_to_raw,
    check_shape,
)

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_STATUS = {InvalidInput: 400, ModelNotFound: 404, Unavailable: 503, InternalError: 500}
_OK = Reply(200)
_NOT_FOUND = Reply(404, b"404: Not Found", "text/plain; charset=utf-8")
_NOT_ALLOWED = Reply(405, b"405: Method Not Allowed", "text/plain; charset=utf-8")
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


def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str
) -> tuple[InferRequest, bool]:
    """Decode a v2 infer body (JSON, or JSON + binary tensors). Returns (request, binary_default)."""
    view = memoryview(body)
    if header_length is not None:
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
        head, binary = view[:json_len], view[json_len:]
    else:
        head, binary = view, view[:0]
    obj = _parse_json(head, "inference request")
    if not isinstance(obj, dict):
        raise InvalidInput("the inference request must be a JSON object")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be a JSON object")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("the inference request needs a non-empty 'inputs' list")
    inputs: list[InferInput] = []
    offset = 0
    for item in raw_inputs:
        if not isinstance(item, dict) or "name" not in item:
            raise InvalidInput("each input must be an object with name, shape, datatype and data")
        name = str(item["name"])
        datatype = str(item.get("datatype", ""))
        shape = check_shape(name, item.get("shape"))
        iparams = item.get("parameters") or {}
        size = iparams.get("binary_data_size") if isinstance(iparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} exceeds the binary data in the "
                    f"body ({len(binary) - offset} bytes left)"
                )
            data = array_from_raw(name, datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size")
            data = array_from_json(name, datatype, shape, item["data"])
        inputs.append(InferInput(name, datatype, shape, data))
    if offset != len(binary):
        raise InvalidInput(
            f"unexpected {len(binary) - offset} trailing bytes after the binary tensor data: the "
            "body is larger than its inputs' binary_data_size values add up to"
        )
    outputs: list[RequestedOutput] = []
    for item in obj.get("outputs") or []:
        if not isinstance(item, dict) or "name" not in item:
            raise InvalidInput("each requested output must be an object with a name")
        oparams = item.get("parameters") or {}
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
    request = InferRequest(
        model_name=model,
        model_version=version,
        id=str(obj.get("id", "")),
        inputs=inputs,
        outputs=outputs,
        priority=priority,
        timeout_us=timeout,
    )
    return request, bool(params.get("binary_data_output", False))


def encode_infer_response(
    response: InferResponse, request: InferRequest, binary_default: bool
) -> Reply:
    binary_of = {o.name: o.binary for o in request.outputs}
    out_json: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in response.outputs:
        flag = binary_of.get(out.name)
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
        }
        if flag if flag is not None else binary_default:
            raw = array_to_raw(out.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array_to_json(out.data)
        out_json.append(entry)
    head: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": out_json,
    }
    if response.id:
        head["id"] = response.id
    head_bytes = json.dumps(head).encode()
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
        ]
        self._routes = [(m, re.compile(pattern + "$"), h) for m, pattern, h in routes]

    def dispatch(self, request: Request) -> Reply | Awaitable[Reply]:
        """Route one request; a Reply now, or a coroutine that gives one."""
        method = "GET" if request.method == "HEAD" else request.method
        allowed = False
        for route_method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            if route_method != method:
                allowed = True
                continue
            params = {k: path_param(v) for k, v in match.groupdict().items() if v is not None}
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
        await self._dp.unload_model(params["model"])
        return _OK

    def infer(self, request: Request, params: dict[str, str]) -> Reply | Awaitable[Reply]:
        infer_request, binary_default = decode_infer_request(
            request.body, request.header_length, params["model"], params.get("version", "")
        )
        response = self._dp.infer_direct(infer_request)
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
