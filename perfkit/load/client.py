"""Control-plane calls (tritonclient) and wire encoding of inference requests.

The only tritonclient importer in `perfkit.load`: server liveness, model metadata and config,
statistics and shared-memory registration go through tritonclient's sync clients; the request a
level sends is encoded here once (HTTP binary tensor extension, or a serialized ModelInferRequest)
and the hot path in `perfkit.load.transport` only writes those bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from perfkit.errors import ModelError, ServerError, ServerUnavailable
from perfkit.load.spec import TargetSpec

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]


def _int(v: Any) -> int:
    return int(v) if v not in (None, "") else 0


class ControlClient:
    """tritonclient for everything but the measured requests. Use as a context manager."""

    def __init__(self, target: TargetSpec) -> None:
        self.target = target
        host, port = target.host_port
        self.url = f"{host}:{port}"
        self._grpc = target.protocol == "grpc"
        if self._grpc:
            import tritonclient.grpc as tg

            self._c: Any = tg.InferenceServerClient(self.url)
        else:
            import tritonclient.http as th

            self._c = th.InferenceServerClient(
                self.url, connection_timeout=5.0, network_timeout=60.0
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a client that never connected
            self._c.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _err(self, exc: Exception) -> str:
        msg = getattr(exc, "message", None)
        text = msg() if callable(msg) else str(exc)
        return str(text).strip() or type(exc).__name__

    def wait_live(self, timeout_s: float | None = None) -> None:
        """Wait (bounded) until the server answers `live`; raise ServerUnavailable naming the URL."""
        deadline = time.monotonic() + (
            timeout_s if timeout_s is not None else self.target.connect_timeout_s
        )
        last = "no answer"
        while True:
            try:
                if self._c.is_server_live():
                    return
                last = "server answered: not live"
            except Exception as exc:  # tritonclient raises many types for a missing server
                last = self._err(exc)
            if time.monotonic() >= deadline:
                raise ServerUnavailable(
                    f"No server answered at {self.url} ({self.target.protocol}) within "
                    f"{timeout_s if timeout_s is not None else self.target.connect_timeout_s:g} s "
                    f"(last error: {last}). Check -u/-i, or leave out -u to use the embedded server."
                )
            time.sleep(0.1)

    def server_metadata(self) -> dict[str, Any]:
        try:
            md = self._c.get_server_metadata(**({"as_json": True} if self._grpc else {}))
        except Exception as exc:  # tritonclient error types vary by protocol
            raise ServerError(f"server metadata from {self.url}: {self._err(exc)}") from exc
        return dict(md)

    def _model_names(self) -> list[str]:
        try:
            idx = self._c.get_model_repository_index(**({"as_json": True} if self._grpc else {}))
        except Exception:  # optional extension: only used to make an error message better
            return []
        models = idx.get("models", []) if isinstance(idx, dict) else idx
        return sorted({str(m.get("name")) for m in models if m.get("name")})

    def model_metadata(self) -> dict[str, Any]:
        """Model metadata with integer shapes; ModelError if the model/version is not there."""
        t = self.target
        try:
            kw: dict[str, Any] = {"as_json": True} if self._grpc else {}
            md = dict(self._c.get_model_metadata(t.model, t.model_version, **kw))
        except Exception as exc:  # InferenceServerException / RpcError
            names = self._model_names()
            known = f" Models on the server: {', '.join(names)}." if names else ""
            ver = f" version {t.model_version}" if t.model_version else ""
            raise ModelError(
                f"Model '{t.model}'{ver} is not available on {self.url}: {self._err(exc)}.{known}"
            ) from exc
        for key in ("inputs", "outputs"):
            md[key] = [
                {"name": str(x["name"]), "datatype": str(x["datatype"]),
                 "shape": [int(d) for d in x.get("shape", [])]}
                for x in md.get(key, [])
            ]  # fmt: skip
        return md

    def model_config(self) -> dict[str, Any]:
        t = self.target
        try:
            if self._grpc:
                cfg = self._c.get_model_config(t.model, t.model_version, as_json=True)
                return dict(cfg.get("config", cfg))
            return dict(self._c.get_model_config(t.model, t.model_version))
        except Exception as exc:  # InferenceServerException / RpcError
            raise ModelError(
                f"model config of '{t.model}' from {self.url}: {self._err(exc)}"
            ) from exc

    def statistics(self) -> dict[str, Any] | None:
        """Cumulative statistics of the model (all versions summed), or None if unsupported."""
        t = self.target
        try:
            kw: dict[str, Any] = {"as_json": True} if self._grpc else {}
            raw = self._c.get_inference_statistics(t.model, t.model_version, **kw)
        except Exception as exc:  # statistics is an optional extension
            logger.debug("statistics unavailable: %s", self._err(exc))
            return None
        return sum_model_stats(raw.get("model_stats", []))

    async def statistics_async(self) -> dict[str, Any] | None:
        """`statistics` without blocking the running loop (HTTP: a raw GET on the loop, because
        tritonclient's gevent client is bound to its thread; gRPC: tritonclient in a thread)."""
        if self._grpc:
            return await asyncio.get_running_loop().run_in_executor(None, self.statistics)
        t = self.target
        host, port = t.host_port
        path = f"/v2/models/{t.model}" + (f"/versions/{t.model_version}" if t.model_version else "")
        try:
            status, body = await http_get(host, port, path + "/stats")
            if status != 200:
                return None
            return sum_model_stats(json.loads(body).get("model_stats", []))
        except (TimeoutError, OSError, ValueError) as exc:
            logger.debug("statistics unavailable: %s", exc)
            return None

    def register_system_shm(self, name: str, key: str, byte_size: int) -> None:
        try:
            self._c.register_system_shared_memory(name, key, byte_size)
        except Exception as exc:  # InferenceServerException / RpcError
            err = self._err(exc)
            if "404" in err or "Not Found" in err or "UNIMPLEMENTED" in err:
                raise ServerError(
                    f"--shared-memory system: the server at {self.url} does not offer the system "
                    "shared-memory extension; run without --shared-memory."
                ) from exc
            raise ServerError(
                f"--shared-memory system: {self.url} refused region {name}: {err}"
            ) from exc

    def unregister_system_shm(self, name: str) -> None:
        with contextlib.suppress(Exception):  # best effort at clean-up
            self._c.unregister_system_shared_memory(name)

    def infer_error(self, inputs: Mapping[str, Array], shm: Mapping[str, tuple[str, int]]) -> str:
        """Send one request through tritonclient to get the server's error message."""
        t = self.target
        import importlib

        mod: Any = importlib.import_module(
            "tritonclient.grpc" if self._grpc else "tritonclient.http"
        )
        ins = []
        for name, arr in inputs.items():
            i = mod.InferInput(name, list(arr.shape), np_to_triton(arr.dtype))
            if name in shm:
                i.set_shared_memory(shm[name][0], shm[name][1])
            else:
                i.set_data_from_numpy(arr)
            ins.append(i)
        try:
            self._c.infer(t.model, ins, model_version=t.model_version)
        except Exception as exc:  # the error is what we came for
            return self._err(exc)
        return "the request failed once and then succeeded"


async def http_get(host: str, port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET on the running loop: (status, body).

    `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for can swallow a cancellation (Ctrl-C)
    that lands as its inner call completes, and the sweep would then run on to the end.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        async with asyncio.timeout(timeout_s):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        raise OSError(f"not an HTTP answer from {host}:{port}{path}")
    return int(head[9:12]), body


_STAT_KEYS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def sum_model_stats(model_stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Flatten Triton's ModelStatistics (JSON form, any protocol) into summed ints:
    {"inference_count", "execution_count", "<key>_count", "<key>_ns", "batch": {size: count}}."""
    out: dict[str, Any] = {"inference_count": 0, "execution_count": 0, "batch": {}}
    for k in _STAT_KEYS:
        out[f"{k}_count"] = 0
        out[f"{k}_ns"] = 0
    for ms in model_stats:
        out["inference_count"] += _int(ms.get("inference_count"))
        out["execution_count"] += _int(ms.get("execution_count"))
        st = ms.get("inference_stats", {})
        for k in _STAT_KEYS:
            d = st.get(k, {})
            out[f"{k}_count"] += _int(d.get("count"))
            out[f"{k}_ns"] += _int(d.get("ns"))
        for b in ms.get("batch_stats", []) or []:
            size = _int(b.get("batch_size"))
            n = _int(b.get("compute_infer", {}).get("count"))
            out["batch"][size] = out["batch"].get(size, 0) + n
    return out


_NP_TO_TRITON = {
    "bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "object": "BYTES",
}  # fmt: skip


def np_to_triton(dtype: np.dtype[Any]) -> str:
    return _NP_TO_TRITON.get(str(dtype), "BYTES")


def http_request_bytes(
    target: TargetSpec,
    inputs: Mapping[str, Array],
    output_names: Sequence[str],
    *,
    shm: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """One complete HTTP/1.1 request (headers + body) using Triton's binary tensor extension."""
    import tritonclient.http as th
    from tritonclient.http import _utils as hu

    ins = []
    for name, arr in inputs.items():
        i = th.InferInput(name, list(arr.shape), np_to_triton(arr.dtype))
        if shm and name in shm:
            i.set_shared_memory(shm[name][0], shm[name][1])
        else:
            i.set_data_from_numpy(arr, binary_data=True)
        ins.append(i)
    outs = [th.InferRequestedOutput(n, binary_data=True) for n in output_names]
    body, json_size = hu._get_inference_request(
        inputs=ins, request_id="", outputs=outs, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, custom_parameters=None,
    )  # fmt: skip
    if isinstance(body, str):
        body = body.encode()
    host, port = target.host_port
    path = f"/v2/models/{target.model}"
    if target.model_version:
        path += f"/versions/{target.model_version}"
    head = [
        f"POST {path}/infer HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: keep-alive",
    ]
    if json_size is not None:
        head.append("Content-Type: application/octet-stream")
        head.append(f"Inference-Header-Content-Length: {json_size}")
    else:
        head.append("Content-Type: application/json")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + bytes(body)


def grpc_request_bytes(
    target: TargetSpec,
    inputs: Mapping[str, Array],
    *,
    shm: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """A serialized ModelInferRequest (raw_input_contents; all outputs returned raw)."""
    import tritonclient.grpc as tg
    from tritonclient.grpc import _utils as gu

    ins = []
    for name, arr in inputs.items():
        i = tg.InferInput(name, list(arr.shape), np_to_triton(arr.dtype))
        if shm and name in shm:
            i.set_shared_memory(shm[name][0], shm[name][1])
        else:
            i.set_data_from_numpy(arr)
        ins.append(i)
    req = gu._get_inference_request(
        model_name=target.model, inputs=ins, model_version=target.model_version, request_id="",
        outputs=None, sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
        timeout=None, parameters=None,
    )  # fmt: skip
    return bytes(req.SerializeToString())
