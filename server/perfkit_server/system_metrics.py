"""Triton's polled metrics: GPU (`nv_gpu_*`, `nv_energy_consumption`, through perfkit.nvml) and
CPU (`nv_cpu_*`, from /proc), read on a timer, never on a scrape.

As tritonserver (core src/metrics.cc `StartPollingThread`): one thread wakes every
`--metrics-interval-ms` / 2 and polls; a scrape only reads the last snapshot, so a slow NVML call
(milliseconds on a busy driver) never delays /metrics or the event loop. The GPU families are
labelled `gpu_uuid` and exist only when NVML shows at least one visible GPU (Triton omits them
otherwise); the CPU families have no labels.

Units and sources as Triton's:
- `nv_gpu_utilization` a fraction 0..1, memory in bytes, power and its limit in watts; a reading
  NVML refuses is 0 (Triton sets 0 when DCGM gives a blank value).
- `nv_energy_consumption` (a counter) joules since the server started: the first poll's total is
  the baseline.
- `nv_cpu_utilization`: (user + nice + system + irq + softirq + steal) over that plus
  (idle + iowait), the deltas of /proc/stat's aggregate `cpu` line between two polls.
- `nv_cpu_memory_total_bytes` = MemTotal, `nv_cpu_memory_used_bytes` = MemTotal - MemAvailable
  (/proc/meminfo, kB x 1024); 0 when /proc cannot be read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import Metric

from perfkit.nvml import GpuReading, Nvml

logger = logging.getLogger(__name__)

# (family, HELP, type, the reading's value); Triton's names and HELP texts (core src/metrics.cc).
# The energy counter's value is replaced by its growth since the first poll in `collect`.
GPU_FAMILIES: tuple[tuple[str, str, str, Callable[[GpuReading], float | None]], ...] = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge", lambda r: r.utilization),
    (
        "nv_gpu_memory_total_bytes",
        "GPU total memory, in bytes",
        "gauge",
        lambda r: r.memory_total_bytes,
    ),
    (
        "nv_gpu_memory_used_bytes",
        "GPU used memory, in bytes",
        "gauge",
        lambda r: r.memory_used_bytes,
    ),
    ("nv_gpu_power_usage", "GPU power usage in watts", "gauge", lambda r: r.power_usage_w),
    (
        "nv_gpu_power_limit",
        "GPU power management limit in watts",
        "gauge",
        lambda r: r.power_limit_w,
    ),
)
ENERGY = "nv_energy_consumption"
ENERGY_HELP = "GPU energy consumption in joules since the Triton Server started"
CPU_FAMILIES: tuple[tuple[str, str], ...] = (
    ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]"),
    ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes"),
    ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes"),
)
COUNTER_FAMILIES = (ENERGY,)

# /proc/stat's aggregate line: user nice system idle iowait irq softirq steal (guest* excluded,
# as Triton's CpuInfo reads only these eight).
_BUSY = (0, 1, 2, 5, 6, 7)
_IDLE = (3, 4)


@dataclass(frozen=True, slots=True)
class CpuReading:
    utilization: float
    memory_total_bytes: int
    memory_used_bytes: int


def read_cpu_times(proc: Path = Path("/proc")) -> tuple[int, ...] | None:
    """The first eight counters of /proc/stat's aggregate `cpu ` line, or None."""
    try:
        with (proc / "stat").open(encoding="ascii") as f:
            line = f.readline()
    except OSError:
        return None
    if not line.startswith("cpu "):
        return None
    try:
        times = tuple(int(x) for x in line.split()[1:9])
    except ValueError:
        return None
    return times if len(times) == 8 else None


def cpu_utilization(new: tuple[int, ...], old: tuple[int, ...]) -> float:
    """Triton's `CpuUtilization`: busy / (busy + idle) over the deltas (a counter that went
    backwards counts 0); 0 when no time passed."""
    busy = sum(max(new[i] - old[i], 0) for i in _BUSY)
    idle = sum(max(new[i] - old[i], 0) for i in _IDLE)
    return busy / (busy + idle) if busy + idle else 0.0


def read_memory(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """(MemTotal, MemTotal - MemAvailable) in bytes from /proc/meminfo, or None."""
    values: dict[str, int] = {}
    try:
        with (proc / "meminfo").open(encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    values[name] = int(fields[0]) * 1024
    except OSError:
        return None
    total, available = values.get("MemTotal"), values.get("MemAvailable")
    if total is None or available is None or available > total:
        return None
    return total, total - available


class SystemMetrics:
    """The polling thread and its last snapshot; a prometheus_client collector (`collect`)."""

    def __init__(
        self, *, gpu: bool, cpu: bool, interval_ms: int, proc: Path = Path("/proc")
    ) -> None:
        self._want_gpu = gpu
        self._want_cpu = cpu
        self._period_s = interval_ms / 2000.0  # Triton sleeps half the interval between polls
        self._proc = proc
        self._nvml: Nvml | None = None
        self._energy_base: dict[str, float] = {}
        self._last_cpu: tuple[int, ...] | None = None
        self._gpus: tuple[GpuReading, ...] = ()
        self._cpu: CpuReading | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def start(self) -> None:
        """Open NVML, take the first readings and start polling (blocking: run it off the loop)."""
        if self._want_gpu:
            self._nvml = Nvml.open()
            if self._nvml is None:
                logger.info("GPU metrics not available: no NVML or no GPU on this host")
            else:
                for gpu in self._nvml.gpus():
                    logger.info("Collecting metrics for GPU %d: %s", gpu.device_id, gpu.name)
        if self._want_cpu:
            self._last_cpu = read_cpu_times(self._proc)
            logger.info("Collecting CPU metrics")
        if self._nvml is None and not self._want_cpu:
            return
        self.poll()
        self._thread = threading.Thread(target=self._run, name="metrics-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            try:
                self.poll()
            except Exception as exc:  # a driver hiccup must not end the polling for good
                if not self._warned:
                    self._warned = True
                    logger.warning("polling GPU/CPU metrics failed: %s", exc)

    def poll(self) -> None:
        """Read every source once and publish the snapshot (one reference swap each)."""
        if self._nvml is not None:
            readings = self._nvml.read()
            for r in readings:
                if r.energy_j is not None:
                    self._energy_base.setdefault(r.uuid, r.energy_j)
            self._gpus = tuple(readings)
        if self._want_cpu:
            times = read_cpu_times(self._proc)
            util = 0.0
            if times is not None and self._last_cpu is not None:
                util = cpu_utilization(times, self._last_cpu)
            if times is not None:
                self._last_cpu = times
            memory = read_memory(self._proc) or (0, 0)
            self._cpu = CpuReading(util, memory[0], memory[1])

    def collect(self) -> Iterator[Metric]:
        gpus, cpu = self._gpus, self._cpu
        if gpus:
            for name, help_text, kind, read in GPU_FAMILIES:
                family = Metric(name, help_text, kind)
                for r in gpus:
                    family.add_sample(name, {"gpu_uuid": r.uuid}, float(read(r) or 0.0))
                yield family
            energy = Metric(ENERGY, ENERGY_HELP, "counter")
            for r in gpus:
                base = self._energy_base.get(r.uuid)
                joules = 0.0 if r.energy_j is None or base is None else max(r.energy_j - base, 0.0)
                energy.add_sample(ENERGY, {"gpu_uuid": r.uuid}, joules)
            yield energy
        if cpu is not None:
            values = (cpu.utilization, cpu.memory_total_bytes, cpu.memory_used_bytes)
            for (name, help_text), number in zip(CPU_FAMILIES, values, strict=True):
                family = Metric(name, help_text, "gauge")
                family.add_sample(name, {}, float(number))
                yield family
