"""perfkit_server: a Triton-compatible KServe v2 inference server (HTTP + gRPC) bundled with perfkit."""

from __future__ import annotations

__version__ = "0.1.0"
SERVER_NAME = "perfkit_server"
