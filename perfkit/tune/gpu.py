"""Where a tune's GPU metrics come from: one read of the server's Prometheus endpoint (and of NVML
here) before the first trial.

The tuner scrapes during every trial when this finds GPUs: the server's `nv_gpu_*` families
labelled `gpu_uuid` (as tritonserver and perfkit_server export them), or, for a server on this
host that exports none, NVML read directly (the scraper's fallback, `perfkit.load.metrics_scrape`).
A GPU objective or constraint is refused up front when it finds none (`perfkit.tune.api`).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from perfkit.load.metrics_scrape import is_local, parse_prometheus
from perfkit.nvml import Nvml

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class GpuSource:
    """The GPUs a tune records (UUIDs, sorted) and where their metrics come from, in words."""

    gpus: tuple[str, ...]
    where: str


def exported_gpus(metrics_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """The GPU UUIDs the endpoint at `metrics_url` ("host:port/metrics", perf_analyzer's form,
    "host:port" for /metrics, or an http:// URL) reports now, sorted; [] when it exports no GPU
    family.

    Raises OSError (TimeoutError included) when the endpoint cannot be read or does not answer
    200, ValueError when the page is not Prometheus text.
    """
    url = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"metrics URL {metrics_url!r} is not http(s)")
    if "/" not in url.split("://", 1)[1]:
        url += "/metrics"  # "host:port", as the scraper takes it too
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        text = reply.read().decode("utf-8", errors="replace")
    families = parse_prometheus(text)
    return sorted({uuid for per_gpu in families.values() for uuid in per_gpu if uuid})


def gpu_source(metrics_url: str) -> GpuSource:
    """The GPUs the trials will have metrics for: the server's, else (a server on this host that
    exports none) NVML's visible GPUs here; no GPU: an empty `gpus`. Raises as `exported_gpus`."""
    gpus = exported_gpus(metrics_url)
    if gpus:
        return GpuSource(tuple(gpus), f"the server's nv_gpu_* metrics at {metrics_url}")
    if is_local(metrics_url):
        nvml = Nvml.open()
        if nvml is not None:
            try:
                local = sorted(g.uuid for g in nvml.gpus())
            finally:
                nvml.close()
            if local:
                return GpuSource(tuple(local), "NVML on this host (the server exports none)")
    return GpuSource((), f"none: {metrics_url} exports no nv_gpu_* metrics")
