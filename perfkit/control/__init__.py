"""One adapter over a Triton server's control plane, through tritonclient's public API only.

`ControlClient` speaks KServe v2 plus Triton's extensions (server and model metadata, model config,
statistics, repository index/load/unload, model readiness, system shared memory) over HTTP or gRPC:
tritonclient's sync clients, and their `aio` variants for calls made on a running event loop.
Everything that is not a measured request goes through it: the load generator's session, the
tuner's model (re)loads and the launchers' readiness waits. `wait_for` is the one bounded wait
and `map_error` the one place where tritonclient, grpc and socket errors become `perfkit.errors`.

Used by `perfkit.load`, `perfkit.tune` and `perfkit.launch`, so it imports none of them (nor
perfkit_server); tritonclient is imported lazily (its gRPC client alone takes ~0.1 s to import).
"""

from __future__ import annotations

from perfkit.control.client import (
    ASYNC_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    PROTOCOLS,
    ControlClient,
    address,
    check_protocol,
    wait_for,
)
from perfkit.control.errors import client_errors, error_text, is_unavailable, map_error
from perfkit.control.values import ServerProtocol, np_to_triton, server_info, sum_model_stats

__all__ = [
    "ASYNC_TIMEOUT_S",
    "PROBE_TIMEOUT_S",
    "PROTOCOLS",
    "ControlClient",
    "ServerProtocol",
    "address",
    "check_protocol",
    "client_errors",
    "error_text",
    "is_unavailable",
    "map_error",
    "np_to_triton",
    "server_info",
    "sum_model_stats",
    "wait_for",
]
