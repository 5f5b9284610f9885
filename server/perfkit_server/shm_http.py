"""Triton's shared-memory extensions over HTTP: the v2/systemsharedmemory and v2/cudasharedmemory
routes, and the infer JSON's shared_memory_* parameters, on `perfkit_server.shm`'s registry."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from perfkit_server.errors import InvalidInput
from perfkit_server.http_wire import Reply, Request, json_reply
from perfkit_server.shm import SharedMemory, ShmRef

_OK = Reply(200)
_REGION = r"(?:/region/(?P<region>[^/]+))?"
Handler = Callable[[Request, dict[str, str]], Reply]


def _parse(raw: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(raw)) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(
            f"failed to parse the shared memory register request JSON: {exc}"
        ) from None


def shm_ref(params: Any) -> ShmRef | None:
    """A tensor's shared-memory parameters (Triton's CheckSharedMemoryData), None without them."""
    if not isinstance(params, dict) or "shared_memory_region" not in params:
        return None
    region = params["shared_memory_region"]
    if not isinstance(region, str):
        raise InvalidInput("Unable to parse 'shared_memory_region': expected a string")
    values = []
    for key in ("shared_memory_offset", "shared_memory_byte_size"):
        value = params.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"Unable to parse '{key}': expected an unsigned integer")
        values.append(value)
    return ShmRef(region, values[0], values[1])


def register_fields(obj: Any, fields: dict[str, type]) -> list[Any]:
    """A register request's fields, in order: Triton's messages for a missing or mistyped one."""
    if not isinstance(obj, dict):
        raise InvalidInput("the shared memory register request must be a JSON object")
    values: list[Any] = []
    for key, kind in fields.items():
        if key not in obj:
            if key == "offset":
                values.append(0)
                continue
            raise InvalidInput(f"Shared memory register request has no '{key}' field")
        value = obj[key]
        if kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidInput(f"'{key}' must be an unsigned integer, got {value!r}")
        elif not isinstance(value, kind):
            raise InvalidInput(f"'{key}' must be a JSON {'string' if kind is str else 'object'}")
        values.append(value)
    return values


class ShmRoutes:
    """The shared-memory routes: status, register and unregister of both kinds."""

    def __init__(self, shm: SharedMemory) -> None:
        self._shm = shm

    def routes(self) -> list[tuple[str, str, Handler]]:
        get, post = "GET", "POST"
        system, cuda = "/v2/systemsharedmemory" + _REGION, "/v2/cudasharedmemory" + _REGION
        return [
            (get, system + "/status", self.system_shm_status),
            (post, system + "/register", self.system_shm_register),
            (post, system + "/unregister", self.system_shm_unregister),
            (get, cuda + "/status", self.cuda_shm_status),
            (post, cuda + "/register", self.cuda_shm_register),
            (post, cuda + "/unregister", self.cuda_shm_unregister),
        ]

    def system_shm_status(self, request: Request, params: dict[str, str]) -> Reply:
        return json_reply(self._shm.status(params.get("region", ""), "system"))

    def system_shm_register(self, request: Request, params: dict[str, str]) -> Reply:
        name = params.get("region", "")
        self._shm.check_register(name, "system")
        obj = _parse(request.body)
        key, offset, size = register_fields(obj, {"key": str, "offset": int, "byte_size": int})
        self._shm.register_system(name, key, offset, size)
        return _OK

    def system_shm_unregister(self, request: Request, params: dict[str, str]) -> Reply:
        self._shm.unregister(params.get("region", ""), "system")
        return _OK

    def cuda_shm_status(self, request: Request, params: dict[str, str]) -> Reply:
        return json_reply(self._shm.status(params.get("region", ""), "cuda"))

    def cuda_shm_register(self, request: Request, params: dict[str, str]) -> Reply:
        name = params.get("region", "")
        self._shm.check_register(name, "cuda")
        obj = _parse(request.body)
        raw, device, size = register_fields(
            obj, {"raw_handle": dict, "device_id": int, "byte_size": int}
        )
        b64 = raw.get("b64")
        if not isinstance(b64, str):
            raise InvalidInput("Shared memory register request has no 'raw_handle.b64' field")
        try:
            handle = base64.b64decode(b64, validate=True)
        except ValueError:
            raise InvalidInput(
                "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t"
            ) from None
        self._shm.register_cuda(name, handle, device, size)
        return _OK

    def cuda_shm_unregister(self, request: Request, params: dict[str, str]) -> Reply:
        self._shm.unregister(params.get("region", ""), "cuda")
        return _OK
