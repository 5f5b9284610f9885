"""`python -m perfkit_server`: parse tritonserver-named flags, configure logging, run the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from perfkit_server.app import serve
from perfkit_server.rate_limiter import parse_mode, parse_resource
from perfkit_server.response_cache import parse_cache_config
from perfkit_server.settings import ServerSettings
from perfkit_server.tls import from_flags


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The flag set, named as tritonserver's."""
    p = argparse.ArgumentParser(
        prog="perfkit_server",
        description="Triton-compatible KServe v2 inference server (HTTP, gRPC, metrics).",
    )
    p.add_argument("--model-repository", "--model-store", required=True, type=Path)
    p.add_argument("--http-address", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-address", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-address", default="127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--allow-http", type=_bool, default=True)
    p.add_argument("--allow-grpc", type=_bool, default=True)
    p.add_argument("--allow-metrics", type=_bool, default=True)
    p.add_argument("--allow-gpu-metrics", type=_bool, default=True)
    p.add_argument("--allow-cpu-metrics", type=_bool, default=True)
    p.add_argument(
        "--metrics-interval-ms",
        type=int,
        default=2000,
        help="GPU and CPU metrics are polled every half of this many ms (as tritonserver)",
    )
    p.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default="none")
    p.add_argument("--repository-poll-secs", type=float, default=15.0)
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        help="model to load at start (explicit mode); '*' = all",
    )
    p.add_argument("--strict-model-config", type=_bool, nargs="?", const=True, default=False)
    p.add_argument("--disable-auto-complete-config", action="store_true")
    p.add_argument("--log-verbose", type=int, nargs="?", const=1, default=0)
    p.add_argument("--log-info", type=_bool, default=True)
    p.add_argument("--exit-timeout-secs", type=float, default=30.0)
    p.add_argument(
        "--http-max-input-size",
        type=int,
        default=256 * 1024 * 1024,
        help="largest request body (HTTP) / message (gRPC) in bytes",
    )
    # HTTP/1.1 bounds tritonserver has no flags for (its libevhtp sets its own).
    p.add_argument(
        "--http-max-header-size",
        type=int,
        default=16 * 1024,
        help="largest HTTP request head (request line and header fields) in bytes; 431 beyond",
    )
    p.add_argument(
        "--http-max-header-count",
        type=int,
        default=100,
        help="most header fields in an HTTP request; 431 beyond",
    )
    p.add_argument(
        "--http-max-connections",
        type=int,
        default=0,
        help="most open HTTP connections (a new one beyond gets 503 and is closed); "
        "0 = the open-file limit less 256",
    )
    p.add_argument(
        "--http-header-timeout-secs",
        type=float,
        default=30.0,
        help="seconds a connection may take to send a request head; then 408 and closed",
    )
    p.add_argument(
        "--http-keepalive-timeout-secs",
        type=float,
        default=75.0,
        help="seconds an HTTP connection may idle (or leave its replies unread) before it is closed",
    )
    # HTTP/2 bounds for the gRPC port, in the --grpc-http2-* family of tritonserver's flags.
    p.add_argument("--grpc-http2-max-concurrent-streams", type=int, default=1024)
    p.add_argument("--grpc-http2-max-header-list-size", type=int, default=16 * 1024)
    p.add_argument("--grpc-http2-max-reset-burst", type=int, default=1000)
    p.add_argument("--grpc-http2-max-resets-per-second", type=float, default=33.0)
    p.add_argument(
        "--max-instances-per-model",
        type=int,
        default=64,
        help="most instances a model load may ask for (instance_group counts summed)",
    )
    p.add_argument(
        "--max-threads-per-instance",
        type=int,
        default=4 * (os.cpu_count() or 1),
        help="largest backend thread count per instance (intra_op/inter_op_thread_count); "
        "default 4 x the CPU count",
    )
    p.add_argument(
        "--max-warmup-count",
        type=int,
        default=1000,
        help="largest model_warmup count (runs of one warmup request on each instance)",
    )
    p.add_argument(
        "--allow-client-shm",
        type=_bool,
        default=False,
        help="let clients register system/CUDA shared-memory regions (Triton's flag, default off)",
    )
    p.add_argument(
        "--max-shared-memory-regions",
        type=int,
        default=1024,
        help="most shared-memory regions registered at once (both kinds)",
    )
    _tls_flags(p)
    _cache_and_rate_limit_flags(p)
    return p


def _cache_and_rate_limit_flags(p: argparse.ArgumentParser) -> None:
    """tritonserver's response cache and rate limiter flags (perfkit_server.response_cache,
    perfkit_server.rate_limiter check their values)."""
    p.add_argument(
        "--cache-config",
        action="append",
        default=[],
        metavar="<cache>,<key>=<value>",
        help="the response cache: local,size=<bytes> (models opt in with response_cache)",
    )
    p.add_argument(
        "--response-cache-byte-size",
        type=int,
        default=None,
        help="deprecated (as in tritonserver): --cache-config=local,size=<bytes>",
    )
    p.add_argument(
        "--rate-limit",
        default="off",
        metavar="execution_count|off",
        help="execution_count: instances execute only with their rate_limiter resources",
    )
    p.add_argument(
        "--rate-limit-resource",
        action="append",
        default=[],
        metavar="<name>:<count>[:<device>]",
        help="copies of a rate-limiter resource (no device: every device); repeatable",
    )


def _tls_flags(p: argparse.ArgumentParser) -> None:
    """tritonserver's gRPC TLS flags, and the same family for HTTPS (which tritonserver lacks)."""
    for service in ("grpc", "http"):
        name = "HTTPS" if service == "http" else "gRPC"
        p.add_argument(f"--{service}-use-ssl", type=_bool, default=False, help=f"{name} over TLS")
        p.add_argument(
            f"--{service}-use-ssl-mutual",
            type=_bool,
            default=False,
            help=f"{name} over mutual TLS (implies --{service}-use-ssl): clients need a "
            f"certificate signed by --{service}-root-cert",
        )
        p.add_argument(f"--{service}-server-cert", type=Path, help="PEM server certificate")
        p.add_argument(f"--{service}-server-key", type=Path, help="PEM server private key")
        p.add_argument(
            f"--{service}-root-cert", type=Path, help="PEM CA of the client certificates (mutual)"
        )


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        model_repository=args.model_repository,
        http_address=args.http_address,
        http_port=args.http_port,
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        allow_http=args.allow_http,
        allow_grpc=args.allow_grpc,
        allow_metrics=args.allow_metrics,
        allow_gpu_metrics=args.allow_gpu_metrics,
        allow_cpu_metrics=args.allow_cpu_metrics,
        metrics_interval_ms=args.metrics_interval_ms,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=tuple(args.load_model),
        strict_model_config=args.strict_model_config,
        auto_complete_config=not args.disable_auto_complete_config,
        log_verbose=args.log_verbose,
        drain_secs=args.exit_timeout_secs,
        max_request_bytes=args.http_max_input_size,
        http_max_header_bytes=args.http_max_header_size,
        http_max_header_count=args.http_max_header_count,
        http_max_connections=args.http_max_connections,
        http_header_timeout_secs=args.http_header_timeout_secs,
        http_keepalive_timeout_secs=args.http_keepalive_timeout_secs,
        grpc_max_concurrent_streams=args.grpc_http2_max_concurrent_streams,
        grpc_max_header_list_size=args.grpc_http2_max_header_list_size,
        grpc_max_reset_burst=args.grpc_http2_max_reset_burst,
        grpc_max_resets_per_second=args.grpc_http2_max_resets_per_second,
        max_instances_per_model=args.max_instances_per_model,
        max_threads_per_instance=args.max_threads_per_instance,
        max_warmup_count=args.max_warmup_count,
        allow_client_shm=args.allow_client_shm,
        max_shared_memory_regions=args.max_shared_memory_regions,
        grpc_tls=from_flags(
            "grpc",
            use_ssl=args.grpc_use_ssl,
            mutual=args.grpc_use_ssl_mutual,
            server_cert=args.grpc_server_cert,
            server_key=args.grpc_server_key,
            root_cert=args.grpc_root_cert,
        ),
        response_cache_bytes=parse_cache_config(args.cache_config, args.response_cache_byte_size),
        rate_limit=parse_mode(args.rate_limit),
        rate_limit_resources=tuple(parse_resource(a) for a in args.rate_limit_resource),
        http_tls=from_flags(
            "http",
            use_ssl=args.http_use_ssl,
            mutual=args.http_use_ssl_mutual,
            server_cert=args.http_server_cert,
            server_key=args.http_server_key,
            root_cert=args.http_root_cert,
        ),
    )


def _run(main_coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (much less CPU per request), else on asyncio's loop."""
    if os.environ.get("PERFKIT_SERVER_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main_coro)
    return asyncio.run(main_coro)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    level = (
        logging.DEBUG
        if settings.log_verbose > 0
        else (logging.INFO if args.log_info else logging.WARNING)
    )
    logging.basicConfig(
        level=level,
        format="%(levelname).1s%(asctime)s.%(msecs)03d %(process)d %(filename)s:%(lineno)d] %(message)s",
        datefmt="%m%d %H:%M:%S",
        stream=sys.stderr,
    )
    if not settings.model_repository.is_dir():
        logging.getLogger("perfkit_server").error(
            "--model-repository %s does not exist or is not a directory", settings.model_repository
        )
        return 1
    try:
        return _run(serve(settings))
    except OSError as exc:
        logging.getLogger("perfkit_server").error("failed to start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
