"""What machine a result was measured on (`MachineInfo`). Stdlib only; imports nothing of perfkit's
but `perfkit.results`."""

from __future__ import annotations

import contextlib
import os
import platform
import socket

from perfkit.results import MachineInfo


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("AMD EPYC 7B13"), else what `platform` says."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> MachineInfo:
    """This host: hostname, CPU model and logical CPU count."""
    return MachineInfo(
        hostname=socket.gethostname(), cpu=cpu_model(), cpu_count=os.cpu_count() or 1
    )
