"""`Server`: one running server under contract (perfkit_server or tritonserver), with cached clients."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.contract._models import IdentitySpec

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Server:
    """One running server under contract, with ready-made clients."""

    kind: str  # PERFKIT or TRITON
    repo: Path
    http_url: str
    grpc_url: str
    metrics_url: str  # "host:port"
    log_path: Path | None
    specs: dict[str, IdentitySpec]
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, protocol: str) -> Any:
        """A cached tritonclient for "http" or "grpc"."""
        if protocol not in self._clients:
            if protocol == "http":
                self._clients[protocol] = httpclient.InferenceServerClient(self.http_url)
            else:
                self._clients[protocol] = grpcclient.InferenceServerClient(self.grpc_url)
        return self._clients[protocol]

    def metrics(self) -> str:
        with _OPENER.open(f"http://{self.metrics_url}/metrics", timeout=10) as resp:
            return bytes(resp.read()).decode()

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """A raw HTTP request: (status, body), without raising on 4xx/5xx."""
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with _OPENER.open(request, timeout=30) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
