"""Triton's shared-memory extensions: the registry of system (POSIX shm) and CUDA regions.

A system region is `/dev/shm/<key>` mapped read-write (outputs are written there), from `offset`
(a multiple of the page size, as Triton's mmap needs) to `offset + byte_size`; its descriptor stays open so that every access first
checks the object still holds the region (a client that shrinks it would otherwise crash the
server with SIGBUS). A CUDA region is a cudaIpcMemHandle_t opened through `shm_cuda` (CuPy,
imported lazily); without a CUDA runtime, registering one fails as in a Triton built without GPU
support. Both kinds share one name space. Inputs read from a system region are zero-copy read-only
numpy views where the offset is aligned for the datatype; a CUDA region's are copied to the host.

Triton's semantics and messages (server `src/shared_memory_manager.cc`, `src/http_server.cc`,
`src/grpc/grpc_utils.h`): register/unregister need `--allow-client-shm=true` (UNSUPPORTED
otherwise; status still answers); a duplicate name is ALREADY_EXISTS; an unknown region is
NOT_FOUND; unregistering an unknown name succeeds; a region unregistered while requests use it
stays mapped until they are done (its name is free at once). `--max-shared-memory-regions` caps
the regions held (Triton has no cap).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from perfkit.datatypes import NP_BY_V2
from perfkit_server.errors import InternalError, InvalidInput, ModelNotFound, ServerError
from perfkit_server.types import Array, array_to_raw, deserialize_bytes

Kind = Literal["system", "cuda"]

CLIENT_SHM_DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
)
# Keys Triton keeps for its python backend's own regions.
RESERVED_PREFIX = "triton_python_backend_shm_region_"
SHM_DIR = "/dev/shm"
_KIND_TEXT = {"system": "system shared memory", "cuda": "CUDA shared memory"}


class RegionNotFound(ModelNotFound):
    """No registered region of that name (Triton's NOT_FOUND: HTTP 404)."""


class AlreadyExists(InvalidInput):
    """A region of that name is registered already (HTTP 400 / gRPC ALREADY_EXISTS)."""


class Unsupported(ServerError):
    """Client shared memory is disabled (HTTP 501 / gRPC UNIMPLEMENTED)."""


@dataclass(frozen=True, slots=True)
class ShmRef:
    """A tensor's shared_memory_region / _offset / _byte_size parameters, as the request gave them."""

    region: str
    offset: int
    byte_size: int


class _Region:
    """One registered region; `name`, `byte_size`, `kind` and `status()` as Triton reports them."""

    name: str
    byte_size: int
    kind: Kind

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def read(self, offset: int, size: int, dtype: np.dtype[Any] | None) -> Any:
        """The bytes at offset (a read-only buffer, or an array of `dtype` when it can view one)."""
        raise NotImplementedError

    def write(self, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError


class SystemRegion(_Region):
    """A POSIX shared-memory object's bytes [offset, offset + byte_size), mapped read-write."""

    kind: Kind = "system"

    def __init__(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._fd = _open_key(key)
        try:
            if _object_size(self._fd, key) < offset + byte_size:
                raise InvalidInput(
                    f"failed to register shared memory region '{name}': invalid args"
                )
            if byte_size <= 0 or offset % mmap.PAGESIZE:  # Triton's mmap refuses both: EINVAL
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._map = mmap.mmap(self._fd, offset + byte_size - start, offset=start)
        except OSError as exc:
            os.close(self._fd)
            raise InvalidInput(
                f"failed to register shared memory region '{name}': unable to process address "
                f"space{exc.strerror}"
            ) from None
        except BaseException:
            os.close(self._fd)
            raise
        self._view = memoryview(self._map)[offset - start :]
        self._readonly = self._view.toreadonly()
        # Unmapped when the last holder goes: the registry, an in-flight request's output slot.
        weakref.finalize(self, _unmap, self._fd, self._map, self._view, self._readonly)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def _check_mapped(self) -> None:
        size = _object_size(self._fd, self.key)
        if size < self.offset + self.byte_size:
            raise InvalidInput(
                f"shared memory region '{self.name}': its object '{self.key}' holds {size} bytes, "
                f"less than its registered offset + byte size ({self.offset + self.byte_size}); "
                "register the region again after resizing the object"
            )

    def read(self, offset: int, size: int, dtype: np.dtype[Any] | None) -> Any:
        self._check_mapped()
        data = self._readonly[offset : offset + size]
        if dtype is not None and offset % dtype.itemsize == 0:
            return np.frombuffer(data, dtype)
        return data

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._check_mapped()
        self._view[offset : offset + len(data)] = data


def _unmap(fd: int, mapped: mmap.mmap, *views: memoryview) -> None:
    os.close(fd)
    for view in views:
        view.release()
    try:
        mapped.close()
    except BufferError:
        pass  # input arrays of an in-flight request view it: unmapped when the last one goes


def _open_key(key: str) -> int:
    """shm_open(key, O_RDWR) as glibc does it: /dev/shm/<key without leading slashes>."""
    name = key.lstrip("/")
    if "/" in name or name in ("", ".", "..") or "\0" in name:
        raise InternalError(f"Unable to open shared memory region: '{key}'")
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(os.path.join(SHM_DIR, name), flags)
    except OSError:
        raise InternalError(f"Unable to open shared memory region: '{key}'") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InternalError(f"Unable to open shared memory region: '{key}'")
    return fd


def _object_size(fd: int, key: str) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        raise InternalError(f"Invalid shared memory region: '{key}'") from None


def _check_key(name: str, key: str) -> None:
    """Triton's ValidateSharedMemoryKey."""
    rest = key.lstrip("/")
    if not rest:
        raise InvalidInput(
            f"cannot register shared memory region '{name}' - invalid shm key '{key}'"
        )
    if rest.startswith(RESERVED_PREFIX):
        raise InvalidInput(
            f"cannot register shared memory region '{name}' with key '{key}' as the key contains "
            f"the reserved prefix '{RESERVED_PREFIX}'"
        )


@dataclass(slots=True)
class OutputSlot:
    """Where a requested output goes: its region (held until the response is written) and bounds."""

    region: _Region
    offset: int
    byte_size: int


class SharedMemory:
    """The server's registered regions, both kinds, one name space."""

    def __init__(self, allow_client_shm: bool, max_regions: int) -> None:
        self._allow = allow_client_shm
        self._max = max_regions
        self._regions: dict[str, _Region] = {}

    def check_register(self, name: str, kind: Kind) -> None:
        """Triton's first checks of a register request: client shm allowed, a region name."""
        if not self._allow:
            raise Unsupported(CLIENT_SHM_DISABLED)
        if not name:
            raise InvalidInput(
                f"'region name' is necessary to register {'cuda' if kind == 'cuda' else 'system'} "
                "shared memory region"
            )

    def _check_new(self, name: str) -> None:
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager")
        if len(self._regions) >= self._max:
            raise InvalidInput(
                f"cannot register shared memory region '{name}': the server holds {self._max} "
                "regions, its --max-shared-memory-regions; unregister regions first, or start it "
                "with a larger --max-shared-memory-regions"
            )

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.check_register(name, "system")
        _check_key(name, key)
        self._check_new(name)
        self._regions[name] = SystemRegion(name, key, offset, byte_size)

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self.check_register(name, "cuda")
        self._check_new(name)
        from perfkit_server import shm_cuda

        self._regions[name] = shm_cuda.open_region(name, raw_handle, device_id, byte_size)

    def unregister(self, name: str, kind: Kind) -> None:
        """Unregister `name` (all regions of `kind` when empty); an unknown name is no error."""
        if not self._allow:
            raise Unsupported(CLIENT_SHM_DISABLED)
        names = [name] if name else [n for n, r in self._regions.items() if r.kind == kind]
        for n in names:
            region = self._regions.get(n)
            if region is not None and region.kind == kind:
                # Closed when no in-flight request holds it any more (Triton's deferred
                # unregister); its name is free at once.
                del self._regions[n]

    def status(self, name: str, kind: Kind) -> list[dict[str, Any]]:
        """Triton's status list: every region of `kind`, or the one named."""
        if not name:
            return [r.status() for r in self._regions.values() if r.kind == kind]
        region = self._regions.get(name)
        if region is None:
            which = "cuda" if kind == "cuda" else "system"
            raise RegionNotFound(f"Unable to find {which} shared memory region: '{name}'")
        if region.kind != kind:
            raise RegionNotFound(
                f"The region named '{name}' is registered as {_KIND_TEXT[region.kind]}, not "
                f"{_KIND_TEXT[kind]}"
            )
        return [region.status()]

    def _locate(self, ref: ShmRef) -> _Region:
        """Triton's GetMemoryInfo bounds checks."""
        region = self._regions.get(ref.region)
        if region is None:
            raise RegionNotFound(f"Unable to find shared memory region: '{ref.region}'")
        if ref.offset < 0 or ref.offset >= region.byte_size:
            raise InvalidInput(f"Invalid offset for shared memory region: '{ref.region}'")
        if ref.byte_size < 0 or ref.offset + ref.byte_size > region.byte_size:
            raise InvalidInput(
                f"Invalid offset + byte size for shared memory region: '{ref.region}'"
            )
        return region

    def input_array(
        self, ref: ShmRef, name: str, datatype: str, shape: tuple[int, ...], model: str
    ) -> Array:
        """An input tensor read from its region; its byte size must match datatype x shape."""
        region = self._locate(ref)
        dtype = NP_BY_V2.get(datatype)
        if dtype is None:
            raise InvalidInput(f"input '{name}': unsupported datatype '{datatype}'")
        count = 1
        for d in shape:
            count *= d
        if datatype == "BYTES":
            raw = region.read(ref.offset, ref.byte_size, None)
            return deserialize_bytes(name, raw, count).reshape(shape)
        expected = count * dtype.itemsize
        if ref.byte_size != expected:
            raise InvalidInput(
                f"input byte size mismatch for input '{name}' for model '{model}'. Expected "
                f"{expected}, got {ref.byte_size}"
            )
        data = region.read(ref.offset, ref.byte_size, dtype)
        array: Array = (
            data
            if isinstance(data, np.ndarray)
            else np.frombuffer(bytes(data), dtype)  # unaligned, or copied from the device
        )
        return array.reshape(shape)

    def output_slot(self, ref: ShmRef) -> OutputSlot:
        """Where a requested output goes; checked when the request arrives, as Triton does."""
        return OutputSlot(self._locate(ref), ref.offset, ref.byte_size)


def write_output(slot: OutputSlot, name: str, array: Array) -> None:
    """Write an output tensor into its slot; INTERNAL (as Triton's allocator) when it is too small."""
    raw = array_to_raw(array) if array.dtype.kind in "OSU" else np.ascontiguousarray(array).data
    size = len(raw) if isinstance(raw, bytes) else raw.nbytes
    if size > slot.byte_size:
        raise InternalError(
            f"shared memory size specified with the request for output '{name}' "
            f"({slot.byte_size} bytes) should be at least {size} bytes to hold the results"
        )
    data = raw if isinstance(raw, bytes) else raw.cast("B")
    slot.region.write(slot.offset, data)
