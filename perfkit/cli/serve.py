"""`perfkit serve`: run the bundled perfkit_server (`python -m perfkit_server`) with tritonserver's flags.

perfkit never imports perfkit_server: the server replaces this process (os.execv), so signals,
exit code and logs are the server's own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

_CONTROL_MODES = ["none", "explicit", "poll"]


@click.command(
    "serve",
    context_settings={"ignore_unknown_options": False},
    help="Run the bundled Triton-compatible server (KServe v2 over HTTP and gRPC, Prometheus metrics).",
)
@click.option(
    "--model-repository",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model repository: one directory per model with config.pbtxt and numbered versions.",
)
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--http-address", default="127.0.0.1", show_default=True)
@click.option("--grpc-address", default="127.0.0.1", show_default=True)
@click.option("--metrics-address", default="127.0.0.1", show_default=True)
@click.option(
    "--model-control-mode", type=click.Choice(_CONTROL_MODES), default="none", show_default=True
)
@click.option("--repository-poll-secs", type=float, default=15.0, show_default=True)
@click.option(
    "--load-model",
    "load_models",
    multiple=True,
    help="Model to load at start (explicit mode); '*' = all.",
)
@click.option(
    "--strict-model-config",
    type=bool,
    default=False,
    show_default=True,
    help="If false, complete missing inputs/outputs/max_batch_size from the ONNX graph.",
)
@click.option(
    "--disable-auto-complete-config", is_flag=True, help="Never complete configs from the model."
)
@click.option(
    "--log-verbose", type=int, default=0, show_default=True, help="> 0 logs every request (debug)."
)
@click.option(
    "--exit-timeout-secs",
    type=float,
    default=30.0,
    show_default=True,
    help="On SIGINT/SIGTERM, wait this long for in-flight requests.",
)
@click.option(
    "--http-max-input-size",
    type=int,
    default=256 * 1024 * 1024,
    show_default=True,
    help="Largest request body (HTTP) or message (gRPC), in bytes.",
)
@click.option(
    "--allow-client-shm",
    type=bool,
    default=False,
    show_default=True,
    help="Let clients register system/CUDA shared-memory regions (perfkit run --shared-memory).",
)
@click.option(
    "--cache-config",
    "cache_configs",
    multiple=True,
    metavar="<cache>,<key>=<value>",
    help="The response cache, as tritonserver: local,size=<bytes> (models opt in with "
    "response_cache { enable: true }).",
)
@click.option(
    "--rate-limit",
    default="off",
    show_default=True,
    metavar="execution_count|off",
    help="execution_count: instances run only while they hold their rate_limiter resources.",
)
@click.option(
    "--rate-limit-resource",
    "rate_limit_resources",
    multiple=True,
    metavar="<name>:<count>[:<device>]",
    help="Copies of a rate-limiter resource (no device: every device); repeatable.",
)
def serve(
    model_repository: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    http_address: str,
    grpc_address: str,
    metrics_address: str,
    model_control_mode: str,
    repository_poll_secs: float,
    load_models: tuple[str, ...],
    strict_model_config: bool,
    disable_auto_complete_config: bool,
    log_verbose: int,
    exit_timeout_secs: float,
    http_max_input_size: int,
    allow_client_shm: bool,
    cache_configs: tuple[str, ...],
    rate_limit: str,
    rate_limit_resources: tuple[str, ...],
) -> None:
    """Replace this process with `python -m perfkit_server ...`."""
    from perfkit.launch import require_server_stack

    require_server_stack()
    args = [
        sys.executable,
        "-m",
        "perfkit_server",
        f"--model-repository={model_repository}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        f"--http-address={http_address}",
        f"--grpc-address={grpc_address}",
        f"--metrics-address={metrics_address}",
        f"--model-control-mode={model_control_mode}",
        f"--repository-poll-secs={repository_poll_secs}",
        f"--strict-model-config={str(strict_model_config).lower()}",
        f"--log-verbose={log_verbose}",
        f"--exit-timeout-secs={exit_timeout_secs}",
        f"--http-max-input-size={http_max_input_size}",
        f"--allow-client-shm={str(allow_client_shm).lower()}",
        *(f"--load-model={name}" for name in load_models),
        # Checked by the server, which says what is wrong with a value.
        *(f"--cache-config={value}" for value in cache_configs),
        f"--rate-limit={rate_limit}",
        *(f"--rate-limit-resource={value}" for value in rate_limit_resources),
    ]
    if disable_auto_complete_config:
        args.append("--disable-auto-complete-config")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)


COMMANDS: list[click.Command] = [serve]
