"""Starting and reaching servers: the embedded perfkit_server, a local tritonserver, docker, or a remote URL.

Every launcher is a context manager that yields a `ServerHandle` (URLs in tritonclient's "host:port"
form) once the server is ready, and stops it on exit. Never imports perfkit_server.
"""

from __future__ import annotations

from perfkit.launch._base import ServerHandle, free_ports, log_tail
from perfkit.launch._probe import PROTOCOLS, ServerProtocol, server_info, wait_ready
from perfkit.launch.docker import DEFAULT_IMAGE, DockerTriton
from perfkit.launch.embedded import EmbeddedServer
from perfkit.launch.remote import RemoteServer
from perfkit.launch.triton import LocalTriton, find_tritonserver

__all__ = [
    "DEFAULT_IMAGE",
    "PROTOCOLS",
    "DockerTriton",
    "EmbeddedServer",
    "LocalTriton",
    "RemoteServer",
    "ServerHandle",
    "ServerProtocol",
    "find_tritonserver",
    "free_ports",
    "log_tail",
    "server_info",
    "wait_ready",
]
