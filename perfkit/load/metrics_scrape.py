"""--collect-metrics: scrape a Prometheus text endpoint (Triton's metrics) during a level.

Runs as a task on the engine's loop with its own tiny HTTP GET, so it never blocks the load.
Aggregates as perf_analyzer: average GPU utilization and power, max GPU memory used, total GPU
memory, per GPU UUID. On a machine without a GPU the series are absent and the result is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

# perf_analyzer's names -> Triton's metric families.
GPU_METRICS = {
    "gpu_utilization": "nv_gpu_utilization",
    "gpu_power_usage": "nv_gpu_power_usage",
    "gpu_memory_used_bytes": "nv_gpu_memory_used_bytes",
    "gpu_memory_total_bytes": "nv_gpu_memory_total_bytes",
}
_WANTED = frozenset(GPU_METRICS.values())
_WANTED_PREFIXES = tuple(sorted(_WANTED))


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Family -> {gpu uuid (or "" when unlabelled) -> value} for the GPU families only.

    The samples are read by prometheus_client's text parser (escaped label values included); a
    page it cannot parse raises ValueError, which the scraper counts as a failed scrape. Only the
    lines of the GPU families are handed to it: the parser is pure Python, about 60 µs a line, and
    this runs on the load generator's loop, where a whole page (9.5 ms for 140 lines) would delay
    every completion due meanwhile; 8 GPU lines of that page take about 0.45 ms, as its old regex
    parse of every line did.
    """
    lines = "\n".join(line for line in text.splitlines() if line.startswith(_WANTED_PREFIXES))
    wanted = _WANTED
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(lines):
        for sample in family.samples:
            if sample.name in wanted:
                out.setdefault(sample.name, {})[sample.labels.get("gpu_uuid", "")] = sample.value
    return out


def aggregate(samples: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """perf_analyzer's aggregation over the samples of a level."""
    res: dict[str, dict[str, float]] = {k: {} for k in GPU_METRICS}
    for key, fam in GPU_METRICS.items():
        per: dict[str, list[float]] = {}
        for s in samples:
            for uuid, v in s.get(fam, {}).items():
                per.setdefault(uuid, []).append(v)
        for uuid, vals in per.items():
            if key in ("gpu_utilization", "gpu_power_usage"):
                res[key][uuid] = sum(vals) / len(vals)
            elif key == "gpu_memory_used_bytes":
                res[key][uuid] = max(vals)
            else:
                res[key][uuid] = vals[0]
    return res


def _split(url: str) -> tuple[str, int, str]:
    u = url.split("://", 1)[-1]
    hostport, _, path = u.partition("/")
    host, _, port = hostport.rpartition(":")
    if not host:
        host, port = hostport, "80"
    return host or "localhost", int(port), "/" + (path or "metrics")


async def http_get(host: str, port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET on the running loop: (status, body).

    /metrics is not part of tritonclient's API, and the scrape runs on the generator's loop every
    few hundred ms, where a read to EOF is all it needs. `asyncio.timeout`, not `wait_for`: on Python 3.11 wait_for can
    swallow a cancellation (Ctrl-C) that lands as its inner call completes.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        async with asyncio.timeout(timeout_s):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        raise OSError(f"not an HTTP answer from {host}:{port}{path}")
    return int(head[9:12]), body


async def fetch(url: str, timeout_s: float = 2.0) -> str:
    """GET a metrics page (HTTP/1.0, read to EOF)."""
    host, port, path = _split(url)
    status, body = await http_get(host, port, path, timeout_s)
    if status != 200:
        raise OSError(f"metrics endpoint {url} answered HTTP {status}")
    return body.decode(errors="replace")


class MetricsScraper:
    """Start before a level, stop after it: samples every `interval_ms`."""

    def __init__(self, url: str, interval_ms: int) -> None:
        self.url = url
        self.interval_s = interval_ms / 1000.0
        self.samples: list[dict[str, dict[str, float]]] = []
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.samples = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append(parse_prometheus(await fetch(self.url)))
            except (TimeoutError, OSError, ValueError) as exc:
                if len(self.errors) < 3:
                    self.errors.append(str(exc))
                    logger.warning("metrics scrape of %s failed: %s", self.url, exc)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> dict[str, dict[str, float]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        return aggregate(self.samples)
