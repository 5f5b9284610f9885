"""KServe v2 over HTTP (aiohttp.web): JSON tensors and Triton's binary tensor data extension.

Maps ServerError subclasses to HTTP statuses (400/404/503/500) with Triton's `{"error": msg}` body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from perfkit_server.dataplane import DataPlane
from perfkit_server.errors import (
    InternalError,
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
    array_from_json,
    array_from_raw,
    array_to_json,
    array_to_raw,
    check_shape,
)

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_STATUS = {InvalidInput: 400, ModelNotFound: 404, Unavailable: 503, InternalError: 500}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status(exc: ServerError) -> int:
    for cls, status in _STATUS.items():
        if isinstance(exc, cls):
            return status
    return 400


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=json.dumps({"error": message}).encode(), content_type="application/json"
    )


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(obj).encode(), content_type="application/json"
    )


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServerError as exc:
        return _error(_status(exc), str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return _error(413, f"{exc.text} Raise --http-max-input-size to accept larger bodies.")
    except web.HTTPException:
        raise
    except Exception:  # the request boundary: a server bug answers 500 and is logged
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error; see the server log")


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
) -> web.Response:
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
        return web.Response(body=head_bytes, content_type="application/json")
    return web.Response(
        body=b"".join([head_bytes, *chunks]),
        headers={HEADER_LENGTH: str(len(head_bytes)), "Content-Type": "application/octet-stream"},
    )


class HttpService:
    """aiohttp routes that delegate to the DataPlane."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self._dp = dataplane
        self.app = web.Application(middlewares=[_errors], client_max_size=max_request_bytes)
        r = self.app.router
        # aiohttp tries routes in registration order: the hot path goes first.
        r.add_post("/v2/models/{model}/infer", self.infer)
        r.add_post("/v2/models/{model}/versions/{version}/infer", self.infer)
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_get("/v2", self.server_metadata)
        r.add_get("/v2/models/stats", self.stats)
        r.add_post("/v2/repository/index", self.index)
        # `.+` so that a name with an (encoded) slash reaches the name check and gets a 400.
        r.add_post("/v2/repository/models/{model:.+}/load", self.load)
        r.add_post("/v2/repository/models/{model:.+}/unload", self.unload)
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            r.add_get(prefix, self.model_metadata)
            r.add_get(prefix + "/ready", self.model_ready)
            r.add_get(prefix + "/config", self.model_config)
            r.add_get(prefix + "/stats", self.stats)

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._dp.live() else 503)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._dp.ready() else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(self._dp.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(self._dp.model_metadata(m["model"], m.get("version", "")))

    async def model_ready(self, request: web.Request) -> web.Response:
        m = request.match_info
        if self._dp.model_ready(m["model"], m.get("version", "")):
            return web.Response(status=200)
        return _error(400, "Model version not ready")

    async def model_config(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(self._dp.model_config_json(m["model"], m.get("version", "")))

    async def stats(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _json(self._dp.statistics(m.get("model", ""), m.get("version", "")))

    async def index(self, request: web.Request) -> web.Response:
        obj = _parse_json(await request.read(), "repository index request")
        ready = bool(obj.get("ready", False)) if isinstance(obj, dict) else False
        return _json(self._dp.repository_index(ready))

    async def load(self, request: web.Request) -> web.Response:
        obj = _parse_json(await request.read(), "load request")
        params = obj.get("parameters") if isinstance(obj, dict) else None
        config: Any = None
        if isinstance(params, dict):
            for key in params:
                if key.startswith("file:"):
                    raise InvalidInput("loading model files through the load API is not supported")
            config = params.get("config")
            if config is not None and not isinstance(config, str | dict):
                raise InvalidInput("parameters.config must be the model config as a JSON string")
            if isinstance(config, str):
                config = _parse_json(config.encode(), "parameters.config")
        await self._dp.load_model(request.match_info["model"], config)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        await request.read()
        await self._dp.unload_model(request.match_info["model"])
        return web.Response(status=200)

    async def infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        m = request.match_info
        infer_request, binary_default = decode_infer_request(
            body, request.headers.get(HEADER_LENGTH), m["model"], m.get("version", "")
        )
        response = await self._dp.infer(infer_request)
        return encode_infer_response(response, infer_request, binary_default)
