"""`ControlClient`: a Triton server's control plane through tritonclient's public clients, and
`wait_for`, the one bounded wait (readiness of a server, of a model, of a launched process).

Sync calls use tritonclient's http/grpc clients; the calls made on a running event loop use their
`aio` variants. Errors go through `perfkit.control.errors.map_error`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import numpy.typing as npt

from perfkit.control.errors import client_errors, error_text, map_error
from perfkit.control.sniff import check_port
from perfkit.control.values import (
    ServerProtocol,
    model_config,
    model_metadata,
    np_to_triton,
    sum_model_stats,
)
from perfkit.errors import ConfigError, ModelError, PerfkitError, ServerError, ServerUnavailable
from perfkit.tls import (
    Header,
    TlsSettings,
    check_scheme,
    grpc_metadata,
    is_peer_close,
    is_tls_failure,
)

logger = logging.getLogger(__name__)

PROTOCOLS: tuple[ServerProtocol, ...] = ("http", "grpc")

# One readiness probe, and each call made on a running loop, waits at most this long.
PROBE_TIMEOUT_S = 1.0
ASYNC_TIMEOUT_S = 5.0


def check_protocol(protocol: str) -> ServerProtocol:
    """`protocol` as a `ServerProtocol`; ConfigError for anything but "http" or "grpc"."""
    if protocol == "http":
        return "http"
    if protocol == "grpc":
        return "grpc"
    raise ConfigError(f"unknown protocol {protocol!r}; expected 'http' or 'grpc' (-i http|grpc)")


def address(url: str) -> str:
    """tritonclient's "host:port" form of a URL: scheme, path and trailing "/" dropped (a scheme
    perfkit does not speak is refused, never dropped)."""
    check_scheme(url)
    bare = url.split("://", 1)[-1]
    return bare.split("/", 1)[0]


def wait_for(
    probe: Callable[[], str | None], timeout_s: float, *, interval_s: float = 0.05
) -> str | None:
    """Call `probe` until it returns None (done) or `timeout_s` passed; return None when done,
    else the last reason it gave. The probe is always called at least once and may raise to stop
    the wait early (a server process that exited). Each probe should be bounded (PROBE_TIMEOUT_S).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        reason = probe()
        if reason is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return reason
        time.sleep(min(interval_s, left))


# -- the adapter -----------------------------------------------------------------------------------


class ControlClient:
    """Control-plane calls to one server (and optionally one model on it). Context manager.

    Args:
        url: "host:port" (an http://, https:// or grpc:// prefix is accepted).
        protocol: "http" or "grpc".
        model: the model the model calls are about ("" when only server calls are made).
        model_version: "" for the server's choice.
        connect_timeout_s: the bounded wait of `wait_live` / `wait_ready` by default.
        network_timeout_s: the longest one sync call may take (a model load can be slow).
        tls: reach the server over TLS with these settings (an https:// URL alone means TLS
            with the defaults).
        headers: sent with every call (HTTP headers; gRPC metadata, names lowercased).
    """

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        *,
        model: str = "",
        model_version: str = "",
        connect_timeout_s: float = 10.0,
        network_timeout_s: float = 60.0,
        tls: TlsSettings | None = None,
        headers: Sequence[Header] = (),
    ) -> None:
        self.protocol = check_protocol(protocol)
        self.url = address(url)
        if tls is None and url.startswith("https://"):
            tls = TlsSettings()
        self._tls = tls
        self._headers = dict(grpc_metadata(headers) if protocol == "grpc" else headers)
        self.model = model
        self.model_version = model_version
        self.connect_timeout_s = connect_timeout_s
        self.network_timeout_s = network_timeout_s
        self._grpc = self.protocol == "grpc"
        self._clients: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------------
    def _client(self, probe: bool = False) -> Any:
        """The sync client; HTTP probes get their own with short timeouts (gRPC calls take one)."""
        key = "probe" if probe and not self._grpc else "main"
        client = self._clients.get(key)
        if client is None:
            tls = self._tls
            if self._grpc:
                import tritonclient.grpc as tg

                client = tg.InferenceServerClient(self.url, **(tls.grpc_options() if tls else {}))
            else:
                import tritonclient.http as th

                timeout = PROBE_TIMEOUT_S if probe else self.network_timeout_s
                client = th.InferenceServerClient(
                    self.url,
                    connection_timeout=min(timeout, 5.0),
                    network_timeout=timeout,
                    **(tls.sync_http_options() if tls else {}),
                )
            self._add_headers(client)
            self._clients[key] = client
        return client

    def _add_headers(self, client: Any) -> None:
        """Every call of `client` carries the -H headers (tritonclient's plugin hook)."""
        if self._headers:
            headers = self._headers

            def plugin(request: Any) -> None:
                request.headers.update(headers)

            client.register_plugin(plugin)

    def _kw(self, as_json: bool, timeout_s: float) -> dict[str, Any]:
        if not self._grpc:
            return {}
        return (
            {"as_json": True, "client_timeout": timeout_s}
            if as_json
            else {"client_timeout": timeout_s}
        )

    def _error(self, exc: BaseException, what: str, kind: type[PerfkitError]) -> PerfkitError:
        return map_error(exc, what, url=self.url, protocol=self.protocol, kind=kind)

    def _call(
        self,
        method: str,
        *args: Any,
        what: str,
        kind: type[PerfkitError] = ServerError,
        as_json: bool = True,
        **kwargs: Any,
    ) -> Any:
        try:
            fn = getattr(self._client(), method)
            return fn(*args, **kwargs, **self._kw(as_json, self.network_timeout_s))
        except client_errors() as exc:
            raise self._error(exc, what, kind) from exc

    @contextlib.asynccontextmanager
    async def _aio(self) -> AsyncIterator[Any]:
        # One aio client per call: an aio client belongs to the loop it was made on, and each
        # level runs its own loop. ~1 ms of CPU a call, a few calls per measurement window.
        tls = self._tls
        if self._grpc:
            import tritonclient.grpc.aio as tga

            client: Any = tga.InferenceServerClient(self.url, **(tls.grpc_options() if tls else {}))
        else:
            import tritonclient.http.aio as tha

            client = tha.InferenceServerClient(
                self.url,
                conn_timeout=ASYNC_TIMEOUT_S,
                ssl=tls is not None,
                ssl_context=tls.context() if tls else None,
            )
        self._add_headers(client)
        try:
            yield client
        finally:
            await client.close()

    async def _acall(
        self, method: str, *args: Any, what: str, kind: type[PerfkitError] = ServerError
    ) -> Any:
        try:
            async with self._aio() as client:
                return await getattr(client, method)(*args, **self._kw(True, ASYNC_TIMEOUT_S))
        except client_errors() as exc:
            raise self._error(exc, what, kind) from exc

    def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        errors: tuple[type[BaseException], ...] = (*client_errors(), RuntimeError, ValueError)
        for client in clients:
            try:
                client.close()
            except errors as exc:  # closing must never mask the outcome
                logger.debug("closing a %s client failed: %s", self.protocol, exc)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ControlClient {self.protocol}={self.url} model={self.model!r}>"

    # -- health ----------------------------------------------------------------------------------
    def not_ready(self, *, live: bool = False) -> str | None:
        """One bounded probe: None when the server is ready (`live`: live), else why not."""
        what = "live" if live else "ready"
        method = "is_server_live" if live else "is_server_ready"
        try:
            client = self._client(probe=True)
            kw = {"client_timeout": PROBE_TIMEOUT_S} if self._grpc else {}
            if getattr(client, method)(**kw):
                return None
            return f"the server answered: not {what}"
        except client_errors() as exc:
            if self._tls is not None:
                self._check_tls(exc)
            return error_text(exc)

    def _check_tls(self, exc: BaseException) -> None:
        """Raise ServerUnavailable at once, on one line, for a TLS failure: waiting does not
        help a CA or host name that does not match, nor a server that closes each connection
        after the handshake (it wants a client certificate, or does not serve TLS here)."""
        text = error_text(exc)
        where = f"{self.url} ({self.protocol})"
        if is_tls_failure(exc):
            raise ServerUnavailable(
                f"TLS with {where} failed: {text}. Check the CA file and the host name in -u."
            ) from exc
        if is_peer_close(text):
            flags = (
                "--ssl-grpc-certificate-chain-file and --ssl-grpc-private-key-file"
                if self._grpc
                else "--ssl-https-client-certificate-file and --ssl-https-private-key-file"
            )
            why = (
                "it did not accept the client certificate"
                if self._tls is not None and self._tls.cert_file
                else f"it may require a client certificate (mutual TLS: {flags})"
            )
            raise ServerUnavailable(
                f"{where} closed the TLS connection without answering ({text}): {why}, or it "
                "does not serve TLS on this port."
            ) from exc

    def is_ready(self) -> bool:
        return self.not_ready() is None

    def wait_live(self, timeout_s: float | None = None) -> None:
        """Wait until the server is live; ServerUnavailable naming the URL after `timeout_s`."""
        self._wait(live=True, timeout_s=timeout_s)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the server is ready; ServerUnavailable naming the URL after `timeout_s`."""
        self._wait(live=False, timeout_s=timeout_s)

    def _wait(self, *, live: bool, timeout_s: float | None) -> None:
        timeout = self.connect_timeout_s if timeout_s is None else timeout_s
        sniffed = self._tls is not None  # plain TCP only: is it the other protocol's port?

        def probe() -> str | None:
            nonlocal sniffed
            reason = self.not_ready(live=live)
            if reason is not None and not sniffed:
                sniffed = True
                check_port(self.url, self.protocol)  # ConfigError: -u is the other port
            return reason

        last = wait_for(probe, timeout)
        if last is not None:
            raise ServerUnavailable(
                f"No server {'answered' if live else 'ready'} at {self.url} ({self.protocol}) "
                f"within {timeout:g} s (last error: {last}). Check that the server is running "
                "and that -u/-i are right, or leave out -u to use the embedded server."
            )

    # -- server ----------------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        """{"name", "version", "extensions"} as the server reports them."""
        return dict(self._call("get_server_metadata", what=f"server metadata from {self.url}"))

    def repository_index(self) -> list[dict[str, Any]]:
        """The repository's models: [{"name", "version", "state", "reason"}, ...]."""
        idx = self._call("get_model_repository_index", what=f"repository index of {self.url}")
        models = idx.get("models", []) if isinstance(idx, dict) else idx
        return [dict(m) for m in models]

    def _model_names(self) -> list[str]:
        try:
            models = self.repository_index()
        except PerfkitError:  # optional extension: only used to make an error message better
            return []
        return sorted({str(m.get("name")) for m in models if m.get("name")})

    # -- the model -------------------------------------------------------------------------------
    def _model_what(self, what: str) -> str:
        ver = f" version {self.model_version}" if self.model_version else ""
        return f"{what} of '{self.model}'{ver} from {self.url}"

    def model_metadata(self) -> dict[str, Any]:
        """Model metadata with integer shapes; ModelError (with the server's message and the
        models it has) if the model or version is not there."""
        try:
            md = self._call(
                "get_model_metadata", self.model, self.model_version,
                what="metadata", kind=ModelError,
            )  # fmt: skip
        except ModelError as exc:
            names = self._model_names()
            known = f" Models on the server: {', '.join(names)}." if names else ""
            ver = f" version {self.model_version}" if self.model_version else ""
            message = str(exc).removeprefix("metadata: ")
            raise ModelError(
                f"Model '{self.model}'{ver} is not available on {self.url}: {message}.{known}"
            ) from exc.__cause__
        return model_metadata(md)

    def model_config(self, model: str | None = None, version: str = "") -> dict[str, Any]:
        """The config the server serves for the model, or for `model` (another model on the
        server: an ensemble's step, a BLS model's composing model), in Triton's JSON form."""
        if model is None:
            model, version, what = self.model, self.model_version, self._model_what("model config")
        else:
            what = f"model config of '{model}'" + (f" version {version}" if version else "")
        reply = self._call("get_model_config", model, version, what=what, kind=ModelError)
        return model_config(reply)

    def statistics(self) -> dict[str, Any] | None:
        """Cumulative statistics of the model (all versions summed, `sum_model_stats`), or None
        when the server does not offer them (an optional extension)."""
        try:
            raw = self._call(
                "get_inference_statistics", self.model, self.model_version, what="statistics"
            )
        except PerfkitError as exc:
            logger.debug("statistics unavailable: %s", exc)
            return None
        return sum_model_stats(raw.get("model_stats", []))

    async def statistics_async(self) -> dict[str, Any] | None:
        """`statistics` on the running loop (tritonclient's aio client)."""
        try:
            raw = await self._acall(
                "get_inference_statistics", self.model, self.model_version, what="statistics"
            )
        except PerfkitError as exc:
            logger.debug("statistics unavailable: %s", exc)
            return None
        return sum_model_stats(raw.get("model_stats", []))

    async def all_statistics_async(self) -> list[dict[str, Any]] | None:
        """Every model's statistics entries (Triton's ModelStatistics, JSON form, one per model
        version), or None when the server does not offer them: what an ensemble's or a BLS
        model's composing breakdown is read from, as perf_analyzer reads it."""
        try:
            raw = await self._acall("get_inference_statistics", "", "", what="statistics")
        except PerfkitError as exc:
            logger.debug("statistics unavailable: %s", exc)
            return None
        return list(raw.get("model_stats", []))

    def is_model_ready(self) -> bool:
        try:
            client = self._client(probe=True)
            kw = {"client_timeout": PROBE_TIMEOUT_S} if self._grpc else {}
            return bool(client.is_model_ready(self.model, self.model_version, **kw))
        except client_errors() as exc:
            logger.debug("model readiness of %s: %s", self.model, error_text(exc))
            return False

    def load_model(self, config_json: str | None = None) -> None:
        """Load (or reload) the model; `config_json` (Triton's JSON form) overrides its
        config.pbtxt. ServerError with the server's message when it refused."""
        kw: dict[str, Any] = {} if config_json is None else {"config": config_json}
        self._call(
            "load_model", self.model, what=f"loading {self.model!r} failed", as_json=False, **kw
        )

    def unload_model(self) -> None:
        self._call("unload_model", self.model, what=f"unloading {self.model!r}", as_json=False)

    def reload_from_disk(self, timeout_s: float = 30.0) -> None:
        """Unload, wait until unloaded, then load, so the server serves the config.pbtxt on disk
        (a config override is sticky across plain loads)."""
        try:
            self.unload_model()
        except ServerError as exc:
            logger.debug("unload of %s failed: %s", self.model, exc)
        if wait_for(lambda: "still ready" if self.is_model_ready() else None, timeout_s):
            logger.debug(
                "%s still ready %g s after its unload; loading it anyway", self.model, timeout_s
            )
        self.load_model(None)

    # -- system shared memory ----------------------------------------------------------------------
    def register_system_shm(self, name: str, key: str, byte_size: int) -> None:
        what = f"--shared-memory system: {self.url} refused region {name}"
        try:
            self._call(
                "register_system_shared_memory", name, key, byte_size, what=what, as_json=False
            )
        except ServerError as exc:
            status = getattr(exc.__cause__, "status", lambda: "")()
            disabled = "allow-client-shm" in str(exc)  # the server says how to enable it
            if not disabled and (
                str(status) in ("404", "StatusCode.UNIMPLEMENTED") or "Not Found" in str(exc)
            ):
                raise ServerError(
                    f"--shared-memory system: the server at {self.url} does not offer the system "
                    "shared-memory extension; run without --shared-memory."
                ) from exc.__cause__
            raise

    def unregister_system_shm(self, name: str) -> None:
        """Best effort (clean-up): failures are logged at debug level."""
        try:
            self._call("unregister_system_shared_memory", name, what="unregister", as_json=False)
        except PerfkitError as exc:
            logger.debug("unregistering shared-memory region %s: %s", name, exc)

    def register_cuda_shm(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None:
        """Register a CUDA region (`raw_handle`: the base64 cudaIpcMemHandle_t tritonclient gives)."""
        what = f"--shared-memory cuda: {self.url} refused region {name}"
        self._call(
            "register_cuda_shared_memory", name, raw_handle, device_id, byte_size, what=what,
            as_json=False,
        )  # fmt: skip

    def unregister_cuda_shm(self, name: str) -> None:
        """Best effort (clean-up): failures are logged at debug level."""
        try:
            self._call("unregister_cuda_shared_memory", name, what="unregister", as_json=False)
        except PerfkitError as exc:
            logger.debug("unregistering CUDA shared-memory region %s: %s", name, exc)

    # -- one real request --------------------------------------------------------------------------
    def infer_error(
        self, inputs: Mapping[str, npt.NDArray[Any]], shm: Mapping[str, tuple[str, int]]
    ) -> str:
        """Send one request through tritonclient and return the server's error message."""
        if self._grpc:
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        ins = []
        for name, arr in inputs.items():
            i = mod.InferInput(name, list(arr.shape), np_to_triton(arr.dtype))
            if name in shm:
                i.set_shared_memory(shm[name][0], shm[name][1])
            else:
                i.set_data_from_numpy(arr)
            ins.append(i)
        try:
            self._client().infer(self.model, ins, model_version=self.model_version)
        except client_errors() as exc:  # the error is what we came for
            return error_text(exc)
        return "the request failed once and then succeeded"
