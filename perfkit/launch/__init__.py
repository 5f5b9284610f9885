"""Starting and reaching servers: the embedded perfkit_server, a local tritonserver, docker, or a remote URL.

Every launcher is a context manager that yields a `ServerHandle` (URLs in tritonclient's "host:port"
form) once the server is ready, and stops it on exit. `LaunchSettings` (`settings`) says which one
`perfkit run` and `perfkit tune` start, and `start.launcher` builds it. Never imports perfkit_server.

The launchers are imported on first use of these names, so `perfkit.launch.settings` (read with
every sweep file) stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfkit.launch.settings import (
    DEFAULT_IMAGE,
    LAUNCH_MODES,
    LaunchSettings,
    parse_env,
    parse_gpus,
)

if TYPE_CHECKING:
    from perfkit.launch._base import ServerHandle, free_ports, log_tail
    from perfkit.launch._probe import PROTOCOLS, ServerProtocol, server_info, wait_ready
    from perfkit.launch.docker import DockerTriton
    from perfkit.launch.embedded import EmbeddedServer, require_server_stack
    from perfkit.launch.remote import RemoteServer
    from perfkit.launch.start import launcher
    from perfkit.launch.triton import LocalTriton, find_tritonserver

__all__ = [
    "DEFAULT_IMAGE",
    "LAUNCH_MODES",
    "PROTOCOLS",
    "DockerTriton",
    "EmbeddedServer",
    "LaunchSettings",
    "LocalTriton",
    "RemoteServer",
    "ServerHandle",
    "ServerProtocol",
    "find_tritonserver",
    "free_ports",
    "launcher",
    "log_tail",
    "parse_env",
    "parse_gpus",
    "require_server_stack",
    "server_info",
    "wait_ready",
]

_HOMES = {
    "ServerHandle": "perfkit.launch._base",
    "free_ports": "perfkit.launch._base",
    "log_tail": "perfkit.launch._base",
    "PROTOCOLS": "perfkit.launch._probe",
    "ServerProtocol": "perfkit.launch._probe",
    "server_info": "perfkit.launch._probe",
    "wait_ready": "perfkit.launch._probe",
    "DockerTriton": "perfkit.launch.docker",
    "EmbeddedServer": "perfkit.launch.embedded",
    "require_server_stack": "perfkit.launch.embedded",
    "RemoteServer": "perfkit.launch.remote",
    "launcher": "perfkit.launch.start",
    "LocalTriton": "perfkit.launch.triton",
    "find_tritonserver": "perfkit.launch.triton",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
