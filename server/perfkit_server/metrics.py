"""Prometheus text metrics with Triton's names and `model`/`version` labels: a prometheus_client
Collector over the same ModelStats objects the statistics extension reports, so the two always
agree, written by prometheus_client's text exposition (label escaping, value format). The polled
GPU and CPU families (perfkit_server.system_metrics) follow the inference families."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from perfkit_server.registry import LoadedVersion, Registry
from perfkit_server.response_cache import ResponseCache
from perfkit_server.stats import ModelStats
from perfkit_server.system_metrics import COUNTER_FAMILIES, SystemMetrics

# (metric, help, value of a version's statistics); the failure counter is per reason, below.
_COUNTERS: list[tuple[str, str, Callable[[ModelStats], int] | None]] = [
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", None),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        lambda s: s.compute_output.ns // 1000,
    ),
]
# Per-model response cache counters, only for models whose config enables the cache (as Triton).
_CACHE_COUNTERS: list[tuple[str, str, Callable[[ModelStats], int]]] = [
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", lambda s: s.cache_hit.count),
    (
        "nv_cache_num_misses_per_model",
        "Number of cache misses per model",
        lambda s: s.cache_miss.count,
    ),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        lambda s: s.cache_hit.ns // 1000,
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (insert+lookup) duration per model, in microseconds",
        lambda s: s.cache_miss.ns // 1000,
    ),
]
# The local cache's server-wide gauges (no labels), while the server has a cache.
_CACHE_GAUGES: list[tuple[str, str, Callable[[ResponseCache], float]]] = [
    ("nv_cache_num_entries", "Number of responses stored in response cache", len),
    (
        "nv_cache_num_lookups",
        "Number of cache lookups in response cache",
        lambda c: c.hits + c.misses,
    ),
    ("nv_cache_num_hits", "Number of cache hits in response cache", lambda c: c.hits),
    ("nv_cache_num_misses", "Number of cache misses in response cache", lambda c: c.misses),
    (
        "nv_cache_num_evictions",
        "Number of cache evictions in response cache",
        lambda c: c.evictions,
    ),
    (
        "nv_cache_lookup_duration",
        "Total cache lookup duration (hit and miss), in microseconds",
        lambda c: c.lookup_ns // 1000,
    ),
    (
        "nv_cache_insertion_duration",
        "Total cache insertion duration, in microseconds",
        lambda c: c.insert_ns // 1000,
    ),
    ("nv_cache_util", "Cache utilization [0.0 - 1.0]", lambda c: c.used / c.size),
]
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
PENDING = "nv_inference_pending_request_count"

# prometheus_client's Prometheus text format names a counter family `<name>_total` in its # HELP
# and # TYPE lines (OpenMetrics' rule); Triton's counters have no suffix, and their samples here
# keep Triton's names, so those two lines are given Triton's family names back.
_HEADER_NAMES = [
    (f"# {kind} {name}_total ".encode(), f"# {kind} {name} ".encode())
    for name in [*(n for n, _, _ in _COUNTERS + _CACHE_COUNTERS), *COUNTER_FAMILIES]
    for kind in ("HELP", "TYPE")
]


class StatsCollector(Collector):
    """Triton's inference metrics of every loaded model version, read when scraped."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        versions = self._registry.loaded_versions()
        for name, help_text, value in _COUNTERS:
            family = Metric(name, help_text, "counter")
            for lv in versions:
                s = lv.stats
                if value is None:  # the failure counter, per reason
                    for reason in FAILURE_REASONS:
                        family.add_sample(
                            name,
                            {"model": lv.name, "reason": reason, "version": str(lv.version)},
                            s.fail_reasons.get(reason, 0),
                        )
                else:
                    family.add_sample(
                        name, {"model": lv.name, "version": str(lv.version)}, value(s)
                    )
            yield family
        gauge = Metric(PENDING, "Instantaneous number of pending requests", "gauge")
        for lv in versions:
            gauge.add_sample(
                PENDING, {"model": lv.name, "version": str(lv.version)}, lv.scheduler.pending
            )
        yield gauge
        yield from _cache_families(self._registry, versions)


def _cache_families(registry: Registry, versions: list[LoadedVersion]) -> Iterator[Metric]:
    cached = [lv for lv in versions if lv.config.response_cache.enable]
    for name, help_text, value in _CACHE_COUNTERS if cached else ():
        family = Metric(name, help_text, "counter")
        for lv in cached:
            family.add_sample(name, {"model": lv.name, "version": str(lv.version)}, value(lv.stats))
        yield family
    cache = registry.response_cache
    if cache is None:
        return
    for name, help_text, read in _CACHE_GAUGES:
        family = Metric(name, help_text, "gauge")
        family.add_sample(name, {}, read(cache))
        yield family


class _Page(Collector):
    """The inference families, then the polled GPU/CPU ones (their last snapshot)."""

    def __init__(self, registry: Registry, system: SystemMetrics | None) -> None:
        self._stats = StatsCollector(registry)
        self._system = system

    def collect(self) -> Iterator[Metric]:
        yield from self._stats.collect()
        if self._system is not None:
            yield from self._system.collect()


def render(registry: Registry, system: SystemMetrics | None = None) -> bytes:
    """The /metrics page (Prometheus text format 0.0.4, UTF-8)."""
    page = generate_latest(_Page(registry, system))
    for prometheus_name, triton_name in _HEADER_NAMES:
        page = page.replace(prometheus_name, triton_name, 1)
    return page


def metrics_app(registry: Registry, system: SystemMetrics | None = None) -> web.Application:
    """An aiohttp app serving GET /metrics."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=render(registry, system), content_type="text/plain", charset="utf-8"
        )

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
