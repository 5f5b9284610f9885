"""The composition root: registry + dataplane on one asyncio loop, with HTTP and gRPC (lean
asyncio servers on that loop) and metrics services.

Startup loads the models first (as tritonserver does), then starts the services and logs Triton's
"Started ... at ADDRESS:PORT" lines. SIGINT/SIGTERM stop accepting, drain queued and running
requests, unload the models and return 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from perfkit_server.dataplane import DataPlane
from perfkit_server.grpc_service import GrpcService
from perfkit_server.grpc_wire import GrpcServer
from perfkit_server.h2_limits import H2Limits
from perfkit_server.header_tap import install_header_tap
from perfkit_server.http_limits import HttpLimits
from perfkit_server.http_service import HttpService
from perfkit_server.http_wire import HttpServer
from perfkit_server.metrics import metrics_app
from perfkit_server.registry import Registry
from perfkit_server.settings import ServerSettings
from perfkit_server.system_metrics import SystemMetrics

logger = logging.getLogger(__name__)


async def _start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
            break
    return runner, bound


async def serve(settings: ServerSettings) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    registry = Registry(settings)
    dataplane = DataPlane(settings, registry)
    await registry.load_startup()

    runners: list[web.AppRunner] = []
    system: SystemMetrics | None = None
    grpc_server: GrpcServer | None = None
    http_server: HttpServer | None = None
    try:
        if settings.allow_grpc:
            grpc_server = GrpcService(dataplane).server(_h2_limits(settings))
            grpc_tls = settings.grpc_tls
            install_header_tap(grpc_server)
            try:
                port = await grpc_server.start(
                    settings.grpc_address,
                    settings.grpc_port,
                    ssl=grpc_tls.context() if grpc_tls else None,
                )
            except OSError as exc:
                address = f"{settings.grpc_address}:{settings.grpc_port}"
                raise OSError(f"cannot bind the gRPC port {address}: {exc}") from exc
            logger.info("Started GRPCInferenceService at %s:%d", settings.grpc_address, port)
            if grpc_tls is not None:
                logger.info("GRPCInferenceService serves %s", grpc_tls.describe())
        if settings.allow_http:
            http_server = HttpServer(HttpService(dataplane).dispatch, _http_limits(settings))
            http_tls = settings.http_tls
            install_header_tap(http_server)
            port = await http_server.start(
                settings.http_address,
                settings.http_port,
                ssl=http_tls.context() if http_tls else None,
            )
            logger.info("Started HTTPService at %s:%d", settings.http_address, port)
            if http_tls is not None:
                logger.info("HTTPService serves %s", http_tls.describe())
        if settings.allow_metrics:
            system = SystemMetrics(
                gpu=settings.allow_gpu_metrics,
                cpu=settings.allow_cpu_metrics,
                interval_ms=settings.metrics_interval_ms,
            )
            await asyncio.to_thread(system.start)  # NVML's init can take a while
            runner, port = await _start_site(
                metrics_app(registry, system), settings.metrics_address, settings.metrics_port
            )
            runners.append(runner)
            logger.info("Started Metrics Service at %s:%d", settings.metrics_address, port)
        # Everything alive now (modules, models, sessions) lives as long as the server: keep it out
        # of the collector's full passes, which otherwise rescan it every few thousand requests.
        gc.freeze()
        dataplane.set_ready(True)
        await stop.wait()
        logger.info("Signal received, draining in-flight requests")
    finally:
        dataplane.set_ready(False)
        if http_server is not None:
            await http_server.stop(settings.drain_secs)
        if grpc_server is not None:
            await grpc_server.stop(settings.drain_secs)
        for runner in runners:
            await runner.shutdown()
            await runner.cleanup()
        if system is not None:
            await asyncio.to_thread(system.stop)
        await registry.close()
        logger.info("Server stopped")
    return 0


def _h2_limits(settings: ServerSettings) -> H2Limits:
    return H2Limits(
        max_message_bytes=settings.max_request_bytes,
        max_header_list_bytes=settings.grpc_max_header_list_size,
        max_concurrent_streams=settings.grpc_max_concurrent_streams,
        reset_burst=settings.grpc_max_reset_burst,
        reset_rate_per_s=settings.grpc_max_resets_per_second,
    )


def _http_limits(settings: ServerSettings) -> HttpLimits:
    return HttpLimits(
        max_body=settings.max_request_bytes,
        max_header_bytes=settings.http_max_header_bytes,
        max_header_count=settings.http_max_header_count,
        max_connections=settings.http_max_connections,
        header_timeout_secs=settings.http_header_timeout_secs,
        keepalive_timeout_secs=settings.http_keepalive_timeout_secs,
    )
