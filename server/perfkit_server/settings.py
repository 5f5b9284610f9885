"""Frozen ServerSettings, built from tritonserver-named flags by __main__."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from perfkit_server.rate_limiter import RateLimitMode
from perfkit_server.tls import ServerTls

ModelControlMode = Literal["none", "explicit", "poll"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Everything the server needs to start; no component sees argparse."""

    model_repository: Path
    http_address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_address: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    # Triton's polled metrics: GPU (nv_gpu_*, through NVML) and CPU (nv_cpu_*, from /proc), read
    # every metrics_interval_ms / 2 by a thread (perfkit_server.system_metrics).
    allow_gpu_metrics: bool = True
    allow_cpu_metrics: bool = True
    metrics_interval_ms: int = 2000
    model_control_mode: ModelControlMode = "none"
    repository_poll_secs: float = 15.0
    load_models: tuple[str, ...] = field(default_factory=tuple)
    strict_model_config: bool = True
    auto_complete_config: bool = True
    log_verbose: int = 0
    # Largest request body accepted (HTTP body / gRPC message), in bytes.
    max_request_bytes: int = 256 * 1024 * 1024
    # Seconds to wait for in-flight requests on SIGINT/SIGTERM.
    drain_secs: float = 30.0
    # HTTP/1.1 per-peer bounds (perfkit_server.http_limits.HttpLimits): request head size and field
    # count, open connections (0: the open-file limit less 256), and the header-read and idle
    # keep-alive timeouts.
    http_max_header_bytes: int = 16 * 1024
    http_max_header_count: int = 100
    http_max_connections: int = 0
    http_header_timeout_secs: float = 30.0
    http_keepalive_timeout_secs: float = 75.0
    # HTTP/2 (gRPC) per-connection bounds (perfkit_server.h2_limits.H2Limits): streams open at
    # once, a request header block's size, and the peer's stream resets (burst, then per second).
    grpc_max_concurrent_streams: int = 1024
    grpc_max_header_list_size: int = 16 * 1024
    grpc_max_reset_burst: int = 1000
    grpc_max_resets_per_second: float = 33.0
    # Caps on what a model load (config.pbtxt or the load API's override) may ask for: instances
    # summed over its instance groups, and each backend thread knob (e.g. intra_op_thread_count).
    max_instances_per_model: int = 64
    max_threads_per_instance: int = field(default_factory=lambda: 4 * (os.cpu_count() or 1))
    # Runs of one model_warmup request per instance (its `count`): a load cannot be made endless.
    max_warmup_count: int = 1000
    # Triton's --allow-client-shm (off by default since 2026-04): shared-memory register/unregister;
    # and the most regions held at once (Triton has no cap; each holds a descriptor and a mapping).
    allow_client_shm: bool = False
    max_shared_memory_regions: int = 1024
    # TLS of each listener (tritonserver's --grpc-use-ssl family, and --http-use-ssl...); None:
    # plain text.
    grpc_tls: ServerTls | None = None
    http_tls: ServerTls | None = None
    # Triton's response cache (--cache-config local,size=<bytes>): its size in bytes; 0: none.
    response_cache_bytes: int = 0
    # Triton's rate limiter: --rate-limit (off or execution_count) and --rate-limit-resource
    # values as (name, count, device; -1: every device).
    rate_limit: RateLimitMode = "off"
    rate_limit_resources: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be 0..65535, got {port}")
        if self.model_control_mode not in ("none", "explicit", "poll"):
            raise ValueError(
                f"--model-control-mode must be none, explicit or poll, got {self.model_control_mode!r}"
            )
        for cap in (
            "max_instances_per_model",
            "max_threads_per_instance",
            "max_warmup_count",
            "max_shared_memory_regions",
        ):
            value = getattr(self, cap)
            if value < 1:
                raise ValueError(f"--{cap.replace('_', '-')} must be >= 1, got {value}")
        for flag, value in (
            ("--http-max-header-size", self.http_max_header_bytes),
            ("--http-max-header-count", self.http_max_header_count),
            ("--http-header-timeout-secs", self.http_header_timeout_secs),
            ("--http-keepalive-timeout-secs", self.http_keepalive_timeout_secs),
        ):
            if not value > 0:
                raise ValueError(f"{flag} must be > 0, got {value}")
        if self.http_max_connections < 0:
            raise ValueError(
                f"--http-max-connections must be >= 0, got {self.http_max_connections}"
            )
        if self.metrics_interval_ms < 1:
            raise ValueError(f"--metrics-interval-ms must be >= 1, got {self.metrics_interval_ms}")
        if self.rate_limit not in ("off", "execution_count"):
            raise ValueError(
                f"--rate-limit must be execution_count or off, got {self.rate_limit!r}"
            )
        if self.response_cache_bytes < 0:
            raise ValueError(
                f"the response cache size must be >= 0, got {self.response_cache_bytes}"
            )
        if self.repository_poll_secs <= 0:
            raise ValueError(f"--repository-poll-secs must be > 0, got {self.repository_poll_secs}")
