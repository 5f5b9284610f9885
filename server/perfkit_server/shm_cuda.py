"""CUDA shared-memory regions: a client's cudaIpcMemHandle_t opened with CuPy's CUDA runtime.

Imported only when a client registers a CUDA region. The CPU backends read and write host arrays,
so an input is copied device -> host and an output host -> device (cudaMemcpy, synchronous).
Without CuPy or a CUDA device the register fails as it does on a Triton built without GPU support.
Covered by `gpu`-marked tests only; on a machine without CUDA, by the refusal path.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any

import numpy as np

from perfkit_server.errors import InternalError, InvalidInput
from perfkit_server.shm import Kind, _Region

# sizeof(cudaIpcMemHandle_t)
IPC_HANDLE_BYTES = 64
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


def _runtime(name: str) -> Any:
    """CuPy's CUDA runtime module, or Triton's no-GPU refusal for region `name`."""
    try:
        import cupy  # type: ignore[import-not-found, unused-ignore]

        runtime = cupy.cuda.runtime
        if runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception:  # ImportError, CUDARuntimeError (no driver): the server has no GPU support
        raise InvalidInput(
            f"failed to register CUDA shared memory region: '{name}', GPUs not supported"
        ) from None
    return runtime


class CudaRegion(_Region):
    """An opened IPC handle: `byte_size` bytes of device memory on `device_id`."""

    kind: Kind = "cuda"

    def __init__(self, name: str, runtime: Any, ptr: int, device_id: int, byte_size: int) -> None:
        self.name, self.device_id, self.byte_size = name, device_id, byte_size
        self._rt, self._ptr = runtime, ptr
        # Closed when the last holder goes: the registry, an in-flight request's output slot.
        weakref.finalize(self, _close_handle, runtime, ptr, device_id)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}

    def read(self, offset: int, size: int, dtype: np.dtype[Any] | None) -> Any:
        host = bytearray(size)
        if size:
            buf = (ctypes.c_char * size).from_buffer(host)
            self._copy(ctypes.addressof(buf), self._ptr + offset, size, _DEVICE_TO_HOST)
        return memoryview(host).toreadonly()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        src = bytes(data)
        if src:
            host = ctypes.cast(ctypes.c_char_p(src), ctypes.c_void_p).value or 0
            self._copy(self._ptr + offset, host, len(src), _HOST_TO_DEVICE)

    def _copy(self, dst: int, src: int, size: int, kind: int) -> None:
        try:
            self._rt.setDevice(self.device_id)
            self._rt.memcpy(dst, src, size, kind)
        except Exception as exc:  # CUDARuntimeError: the request fails, the server serves on
            raise InternalError(
                f"failed to copy {size} bytes {'from' if kind == _DEVICE_TO_HOST else 'to'} CUDA "
                f"shared memory region '{self.name}': {exc}"
            ) from None


def _close_handle(runtime: Any, ptr: int, device_id: int) -> None:
    runtime.setDevice(device_id)
    runtime.ipcCloseMemHandle(ptr)


def _allocation_size(ptr: int) -> int:
    """cuMemGetAddressRange's size of the allocation holding `ptr` (-1 when it fails)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
        result = driver.cuMemGetAddressRange_v2(
            ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr)
        )
    except OSError:
        return -1
    return int(size.value) if result == 0 else -1


def open_region(name: str, raw_handle: bytes, device_id: int, byte_size: int) -> CudaRegion:
    """Open a client's IPC handle (Triton's RegisterCUDASharedMemory)."""
    runtime = _runtime(name)
    if len(raw_handle) != IPC_HANDLE_BYTES:
        raise InvalidInput("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
    try:
        runtime.setDevice(device_id)
        ptr = int(runtime.ipcOpenMemHandle(raw_handle))
    except Exception:  # CUDARuntimeError: Triton logs it and answers "invalid args"
        raise InvalidInput("failed to register shared memory region: invalid args") from None
    if _allocation_size(ptr) < byte_size:
        runtime.ipcCloseMemHandle(ptr)
        raise InvalidInput(f"failed to register shared memory region '{name}': invalid args")
    return CudaRegion(name, runtime, ptr, device_id, byte_size)
