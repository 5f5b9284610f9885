"""The client's shared-memory regions for `--shared-memory system|cuda`, as perf_analyzer makes them.

One region per input (filled with the first input set) and one per output, named
`perfkit_<pid>_<tag>_<tensor>`, each registered with the server; system regions are POSIX shm
objects at key `/<region>` (tritonclient.utils.shared_memory), CUDA regions device memory on GPU 0
shared by IPC handle (tritonclient.utils.cuda_shared_memory, which needs cuda-python: imported
only for `cuda`). An output's region holds its batch-1 byte size times the batch size, or
`--output-shared-memory-size` when the model's metadata does not fix it (a variable dim, BYTES).
`close` unregisters and destroys every region, with Ctrl-C and SIGTERM held off until it is done,
so no region stays registered and no /dev/shm object stays behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from perfkit.datatypes import NP_BY_V2
from perfkit.errors import ConfigError

# perf_analyzer places CUDA regions on device 0.
CUDA_DEVICE = 0


class _Control(Protocol):
    def register_system_shm(self, name: str, key: str, byte_size: int) -> None: ...
    def unregister_system_shm(self, name: str) -> None: ...
    def register_cuda_shm(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int
    ) -> None: ...
    def unregister_cuda_shm(self, name: str) -> None: ...


def cuda_module() -> Any:
    """tritonclient's CUDA shared-memory utilities; a ConfigError (bad option) where they cannot load."""
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
    except Exception as exc:  # RuntimeError without cuda-python, ImportError, a driver error
        raise ConfigError(
            "--shared-memory cuda: CUDA shared memory is not available here "
            f"({str(exc).strip() or type(exc).__name__}). It needs an NVIDIA GPU with its driver "
            "and tritonclient's CUDA support (pip install 'tritonclient[cuda]', which brings "
            "cuda-python); use --shared-memory system or none on this machine."
        ) from None
    return cudashm


def output_region_size(
    output: Mapping[str, Any], batched: bool, batch_size: int, default_bytes: int
) -> int:
    """perf_analyzer's output region size: batch-1 bytes x batch size, or the default per batch-1."""
    dims = [int(d) for d in output.get("shape", [])]
    if batched and dims:
        dims = dims[1:]
    dtype = NP_BY_V2.get(str(output.get("datatype", "")))
    if dtype is None or output.get("datatype") == "BYTES" or any(d < 0 for d in dims):
        batch1 = default_bytes
    else:
        batch1 = dtype.itemsize
        for d in dims:
            batch1 *= d
    return max(1, batch1 * (batch_size if batched else 1))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold off SIGINT and SIGTERM (main thread): a Ctrl-C lands after the clean-up, not in it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Regions:
    """The regions of one Session, of one kind ("system" or "cuda")."""

    def __init__(self, ctl: _Control, kind: str, tag: str) -> None:
        self._ctl = ctl
        self.kind = kind
        self._tag = tag
        self._lib: Any = cuda_module() if kind == "cuda" else None
        if self._lib is None:
            import tritonclient.utils.shared_memory as shmlib

            self._lib = shmlib
        self._made: list[tuple[str, Any, bool]] = []  # (region, handle, registered)

    def _create(self, tensor: str, size: int) -> tuple[str, Any]:
        region = f"{self._tag}_{tensor}"
        with _signals_held():  # the handle is recorded before a Ctrl-C can land
            if self.kind == "cuda":
                try:
                    handle = self._lib.create_shared_memory_region(region, size, CUDA_DEVICE)
                except Exception as exc:  # CudaSharedMemoryException: no GPU, out of memory
                    raise ConfigError(
                        f"--shared-memory cuda: cannot allocate {size} bytes on GPU {CUDA_DEVICE} "
                        f"for {tensor!r}: {exc}"
                    ) from None
            else:
                handle = self._lib.create_shared_memory_region(region, f"/{region}", size)
            self._made.append((region, handle, False))
        return region, handle

    def _register(self, region: str, handle: Any, size: int) -> None:
        self._made[-1] = (region, handle, True)  # unregister even if the answer is lost
        if self.kind == "cuda":
            raw = self._lib.get_raw_handle(handle)
            self._ctl.register_cuda_shm(region, raw, CUDA_DEVICE, size)
        else:
            self._ctl.register_system_shm(region, f"/{region}", size)

    def add_input(self, tensor: str, array: Any) -> tuple[str, int]:
        """A region holding `array`, registered: (region name, byte size)."""
        size = max(1, int(array.nbytes))
        region, handle = self._create(tensor, size)
        self._lib.set_shared_memory_region(handle, [array])
        self._register(region, handle, size)
        return region, size

    def add_output(self, tensor: str, size: int) -> tuple[str, int]:
        """An empty region of `size` bytes for an output, registered: (region name, byte size)."""
        region, handle = self._create(f"out_{tensor}", size)
        self._register(region, handle, size)
        return region, size

    def close(self) -> None:
        """Unregister (best effort) and destroy every region, once."""
        with _signals_held():
            made, self._made = self._made, []
            for region, handle, registered in made:
                try:
                    if registered and self.kind == "cuda":
                        self._ctl.unregister_cuda_shm(region)
                    elif registered:
                        self._ctl.unregister_system_shm(region)
                finally:
                    with contextlib.suppress(Exception):  # best effort: already gone
                        self._lib.destroy_shared_memory_region(handle)
