"""HttpLimits: what one HTTP/1.1 peer may hold and how long it may idle (perfkit_server.http_wire
enforces them). Imports nothing of perfkit_server."""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    """What one HTTP/1.1 peer may hold: body, head, connections, and how long it may idle.

    `max_connections` 0 means the open-file limit less 256 (at least 64): the rest is left to
    gRPC, model files and logs.
    """

    max_body: int = 256 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_connections: int = 0
    header_timeout_secs: float = 30.0
    keepalive_timeout_secs: float = 75.0

    def __post_init__(self) -> None:
        for name in ("max_body", "max_header_bytes", "max_header_count", "max_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("header_timeout_secs", "keepalive_timeout_secs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def connection_cap(self) -> int:
        if self.max_connections:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return 1 << 20
        return max(64, soft - 256)

    def sweep_secs(self) -> float:
        """How often the server sweeps its connections: a quarter of the shortest timeout,
        between 50 ms and 1 s."""
        return max(0.05, min(1.0, min(self.header_timeout_secs, self.keepalive_timeout_secs) / 4))
