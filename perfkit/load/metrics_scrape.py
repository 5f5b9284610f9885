"""--collect-metrics: scrape a Prometheus text endpoint (Triton's metrics) during a level.

Runs as a task on the engine's loop with its own tiny HTTP GET, so it never blocks the load.
Aggregates as perf_analyzer: average GPU utilization and power, max GPU memory used, total GPU
memory, per GPU UUID. On a machine without a GPU the series are absent and the result is empty.
The server's CPU metrics (nv_cpu_utilization averaged, nv_cpu_memory_used_bytes the peak,
nv_cpu_memory_total_bytes) are kept too, under the key "" (Model Analyzer's cpu_used_ram).

Where the GPU numbers come from (`MetricsScraper.gpu_source`, decided on the first page read):
"server" when the page has nv_gpu_* families; "nvml" when it has none but the server is on this
host (a loopback URL, as the embedded server's is): perfkit then reads NVML itself (perfkit.nvml,
off the loop) at the same interval, as Model Analyzer does for a server without GPU metrics;
"none" otherwise (a remote server without them, or no GPU here): empty GPU columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from perfkit.nvml import Nvml

logger = logging.getLogger(__name__)

GpuSource = Literal["server", "nvml", "none"]

# perf_analyzer's names -> Triton's metric families.
GPU_METRICS = {
    "gpu_utilization": "nv_gpu_utilization",
    "gpu_power_usage": "nv_gpu_power_usage",
    "gpu_memory_used_bytes": "nv_gpu_memory_used_bytes",
    "gpu_memory_total_bytes": "nv_gpu_memory_total_bytes",
}
# The server's host CPU and RAM (Triton's nv_cpu_* families, no labels).
CPU_METRICS = {
    "cpu_utilization": "nv_cpu_utilization",
    "cpu_memory_used_bytes": "nv_cpu_memory_used_bytes",
    "cpu_memory_total_bytes": "nv_cpu_memory_total_bytes",
}
_ALL = {**GPU_METRICS, **CPU_METRICS}
_AVERAGED = frozenset({"gpu_utilization", "gpu_power_usage", "cpu_utilization"})
_PEAK = frozenset({"gpu_memory_used_bytes", "cpu_memory_used_bytes"})
_WANTED = frozenset(_ALL.values())
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
    """perf_analyzer's aggregation over the samples of a level (the CPU families alike)."""
    res: dict[str, dict[str, float]] = {k: {} for k in _ALL}
    for key, fam in _ALL.items():
        per: dict[str, list[float]] = {}
        for s in samples:
            for uuid, v in s.get(fam, {}).items():
                per.setdefault(uuid, []).append(v)
        for uuid, vals in per.items():
            if key in _AVERAGED:
                res[key][uuid] = sum(vals) / len(vals)
            elif key in _PEAK:
                res[key][uuid] = max(vals)
            else:
                res[key][uuid] = vals[0]
    return res


def nvml_sample(nvml: Nvml) -> dict[str, dict[str, float]]:
    """One NVML reading in the shape of `parse_prometheus` (Triton's units; blocking)."""
    out: dict[str, dict[str, float]] = {}
    for r in nvml.read():
        for fam, value in (
            ("nv_gpu_utilization", r.utilization),
            ("nv_gpu_power_usage", r.power_usage_w),
            ("nv_gpu_memory_used_bytes", r.memory_used_bytes),
            ("nv_gpu_memory_total_bytes", r.memory_total_bytes),
        ):
            if value is not None:
                out.setdefault(fam, {})[r.uuid] = float(value)
    return out


def is_local(url: str) -> bool:
    """Does `url` name this host (localhost or a loopback address)?"""
    host = _split(url)[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """Start before a level, stop after it: samples every `interval_ms`.

    `gpu_source` and `note` say where the GPU numbers came from once the first page was read.
    """

    def __init__(self, url: str, interval_ms: int) -> None:
        self.url = url
        self.interval_s = interval_ms / 1000.0
        self.samples: list[dict[str, dict[str, float]]] = []
        self.errors: list[str] = []
        self.gpu_source: GpuSource | None = None
        self.note = ""
        self._nvml: Nvml | None = None
        # A read still running in its thread when stop() cancels the task must not meet close().
        self._nvml_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.samples = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                sample = parse_prometheus(await fetch(self.url))
            except (TimeoutError, OSError, ValueError) as exc:
                if len(self.errors) < 3:
                    self.errors.append(str(exc))
                    logger.warning("metrics scrape of %s failed: %s", self.url, exc)
            else:
                if self.gpu_source is None:
                    await self._choose_source(sample)
                if self.gpu_source == "nvml":
                    sample.update(await self._read_nvml())
                self.samples.append(sample)
            await asyncio.sleep(self.interval_s)

    async def _choose_source(self, sample: dict[str, dict[str, float]]) -> None:
        if any(fam in sample for fam in GPU_METRICS.values()):
            self._decide("server", f"GPU metrics: from the server's nv_gpu_* at {self.url}.")
            return
        if is_local(self.url):
            self._nvml = await asyncio.to_thread(Nvml.open)
            if self._nvml is not None and self._nvml.gpus():
                count = len(self._nvml.gpus())
                self._decide(
                    "nvml",
                    f"GPU metrics: read from NVML on this host ({count} GPU(s)); the server at "
                    f"{self.url} exports no nv_gpu_* metrics.",
                )
                return
            await self._close_nvml()
            self._decide("none", "GPU metrics: none (no nv_gpu_* from the server, no GPU here).")
            return
        self._decide(
            "none", f"GPU metrics: none (the server at {self.url} exports no nv_gpu_* metrics)."
        )

    def _decide(self, source: GpuSource, note: str) -> None:
        self.gpu_source, self.note = source, note
        logger.info("%s", note)

    async def _read_nvml(self) -> dict[str, dict[str, float]]:
        if self._nvml is None:  # closed at the end of the last level
            self._nvml = await asyncio.to_thread(Nvml.open)
        if self._nvml is None:
            return {}
        nvml = self._nvml

        def read() -> dict[str, dict[str, float]]:
            with self._nvml_lock:
                return nvml_sample(nvml)

        try:
            return await asyncio.to_thread(read)
        except Exception as exc:  # a driver error: this sample has no GPU numbers
            if len(self.errors) < 3:
                self.errors.append(str(exc))
                logger.warning("reading NVML failed: %s", exc)
            return {}

    async def _close_nvml(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is not None:

            def close() -> None:
                with self._nvml_lock:
                    nvml.close()

            await asyncio.to_thread(close)

    async def stop(self) -> dict[str, dict[str, float]]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_nvml()
        return aggregate(self.samples)
