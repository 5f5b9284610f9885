"""The GPUs of this host through NVML (nvidia-ml-py's `pynvml`), read the way Triton reads them.

Pure and shared: perfkit_server exports these readings as Triton's `nv_gpu_*` metrics and places
KIND_GPU instances on the visible GPUs; perfkit reads them directly (`--collect-metrics` against a
server on this host that exports none, and the tuner's GPU records). No GPU, no driver or no
pynvml is not an error here: `Nvml.open()` gives None and callers report empty GPU columns.

Visible GPUs follow CUDA_VISIBLE_DEVICES (indexes or `GPU-` UUIDs, as CUDA reads it): the list is
cut at the first entry that names no GPU, and an empty value hides every GPU. Device ids are
CUDA's: positions in that list.

Units are Triton's: utilization a fraction 0..1, memory in bytes, power in watts, energy in joules.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One visible GPU: its CUDA device id, NVML index, UUID and name."""

    device_id: int
    nvml_index: int
    uuid: str
    name: str


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU's counters at one moment; a value NVML cannot give is None."""

    uuid: str
    utilization: float | None  # fraction 0..1
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_usage_w: float | None
    power_limit_w: float | None
    energy_j: float | None  # since the driver loaded


def _visible(gpus: list[GpuInfo], spec: str | None) -> list[GpuInfo]:
    """`gpus` as CUDA_VISIBLE_DEVICES shows them, renumbered 0.. in its order."""
    if spec is None:
        return gpus
    shown: list[GpuInfo] = []
    for entry in (e.strip() for e in spec.split(",")):
        match: GpuInfo | None = None
        if entry.isdigit():
            match = next((g for g in gpus if g.nvml_index == int(entry)), None)
        elif entry.startswith("GPU-"):
            match = next((g for g in gpus if g.uuid.startswith(entry)), None)
        if match is None or match in shown:
            break  # CUDA stops at the first entry that names no (new) device
        shown.append(match)
    return [GpuInfo(i, g.nvml_index, g.uuid, g.name) for i, g in enumerate(shown)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """An initialized NVML session: `Nvml.open()`, then `gpus()` and `read()`; `close()` at the end."""

    def __init__(self, module: Any) -> None:
        self._nvml = module
        self._handles: dict[str, Any] = {}
        self._gpus: list[GpuInfo] = []
        count = module.nvmlDeviceGetCount()
        every: list[GpuInfo] = []
        for index in range(count):
            handle = module.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(module.nvmlDeviceGetUUID(handle))
            self._handles[uuid] = handle
            every.append(GpuInfo(index, index, uuid, _text(module.nvmlDeviceGetName(handle))))
        self._gpus = _visible(every, os.environ.get("CUDA_VISIBLE_DEVICES"))

    @classmethod
    def open(cls) -> Nvml | None:
        """A session, or None when this host has no NVML (no pynvml, driver or GPU)."""
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # pynvml.NVMLError and its many subclasses
            logger.debug("NVML is not available: %s", exc)
            return None
        try:
            return cls(pynvml)
        except Exception as exc:
            logger.debug("NVML could not list the GPUs: %s", exc)
            cls._shutdown(pynvml)
            return None

    def gpus(self) -> list[GpuInfo]:
        """The visible GPUs, by CUDA device id."""
        return list(self._gpus)

    def read(self) -> list[GpuReading]:
        """Every visible GPU's counters now (a counter NVML refuses is None)."""
        return [self._read(gpu.uuid) for gpu in self._gpus]

    def _read(self, uuid: str) -> GpuReading:
        nvml, handle = self._nvml, self._handles[uuid]

        def ask(name: str) -> Any:
            try:
                return getattr(nvml, name)(handle)
            except Exception:  # NVML_ERROR_NOT_SUPPORTED and friends: this counter is absent
                return None

        util = ask("nvmlDeviceGetUtilizationRates")
        memory = ask("nvmlDeviceGetMemoryInfo")
        power = ask("nvmlDeviceGetPowerUsage")  # mW
        limit = ask("nvmlDeviceGetEnforcedPowerLimit")  # mW
        energy = ask("nvmlDeviceGetTotalEnergyConsumption")  # mJ
        return GpuReading(
            uuid=uuid,
            utilization=None if util is None else float(util.gpu) / 100.0,
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            power_usage_w=None if power is None else float(power) / 1000.0,
            power_limit_w=None if limit is None else float(limit) / 1000.0,
            energy_j=None if energy is None else float(energy) / 1000.0,
        )

    def close(self) -> None:
        self._shutdown(self._nvml)

    @staticmethod
    def _shutdown(module: Any) -> None:
        try:
            module.nvmlShutdown()
        except Exception as exc:
            logger.debug("nvmlShutdown failed: %s", exc)


def visible_gpus() -> list[GpuInfo]:
    """The GPUs CUDA would show this process (empty without NVML)."""
    nvml = Nvml.open()
    if nvml is None:
        return []
    try:
        return nvml.gpus()
    finally:
        nvml.close()
