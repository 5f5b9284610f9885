"""FAKE NVML: a stand-in for nvidia-ml-py's `pynvml`, for hosts without an NVIDIA GPU.

NVML is a true external boundary (the driver of a GPU this machine does not have), so the tests
of GPU metrics, placement and GPU-aware tuning put this directory first on PYTHONPATH of the
process under test (see tests/fixtures/fake_nvml.py); `import pynvml` then finds this module.

Its GPUs come from the JSON file named by PERFKIT_FAKE_NVML, re-read on every call so a test can
change them while a server runs:

    {"gpus": [{"uuid": "GPU-fake-0", "name": "FAKE NVIDIA H100", "memory_total": 85899345920,
               "memory_used": [1000000000], "utilization": [10, 90], "power_mw": [100000, 300000],
               "power_limit_mw": 700000}]}

A list value cycles: each read of that counter takes the next entry, so utilization and power
change while the load runs. Energy grows by each power reading (mJ, one second per read). With
no PERFKIT_FAKE_NVML, nvmlInit fails as it does on a host without the driver.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

FAKE = True
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_NOT_SUPPORTED = 3

_reads: dict[tuple[int, str], int] = {}
_energy: dict[int, float] = {}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"FAKE NVML error {value}")
        self.value = value


def _state() -> dict[str, Any]:
    path = os.environ.get("PERFKIT_FAKE_NVML")
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    with open(path, encoding="utf-8") as f:
        return dict(json.load(f))


def _gpu(handle: int) -> dict[str, Any]:
    return dict(_state()["gpus"][handle])


def _next(handle: int, key: str) -> Any:
    value = _gpu(handle).get(key)
    if value is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    if not isinstance(value, list):
        return value
    n = _reads.get((handle, key), 0)
    _reads[(handle, key)] = n + 1
    return value[n % len(value)]


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    used: int
    free: int


def nvmlInit() -> None:
    _state()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return len(_state()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
    return index


def nvmlDeviceGetUUID(handle: int) -> str:
    return str(_gpu(handle)["uuid"])


def nvmlDeviceGetName(handle: int) -> str:
    return str(_gpu(handle).get("name", "FAKE NVIDIA GPU"))


def nvmlDeviceGetUtilizationRates(handle: int) -> _Utilization:
    return _Utilization(gpu=int(_next(handle, "utilization")), memory=0)


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    total = int(_gpu(handle)["memory_total"])
    used = int(_next(handle, "memory_used"))
    return _Memory(total=total, used=used, free=total - used)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    power = int(_next(handle, "power_mw"))
    _energy[handle] = _energy.get(handle, 0.0) + power
    return power


def nvmlDeviceGetEnforcedPowerLimit(handle: int) -> int:
    return int(_next(handle, "power_limit_mw"))


def nvmlDeviceGetTotalEnergyConsumption(handle: int) -> int:
    if "power_mw" not in _gpu(handle):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(_energy.get(handle, 0.0))
