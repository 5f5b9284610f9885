"""Triton's shared-memory extensions over gRPC: GRPCInferenceService's SystemSharedMemory* and
CudaSharedMemory* RPCs on `perfkit_server.shm`'s registry (the status replies map name -> status)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from perfkit_server.shm import SharedMemory

Unary = Callable[[Any], Coroutine[Any, Any, Any]]


class ShmRpcs:
    """The six shared-memory RPCs."""

    def __init__(self, shm: SharedMemory) -> None:
        self._shm = shm

    def rpcs(self) -> dict[str, tuple[Any, Unary]]:
        return {
            "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest, self._system_status),
            "SystemSharedMemoryRegister": (
                pb.SystemSharedMemoryRegisterRequest,
                self._system_register,
            ),
            "SystemSharedMemoryUnregister": (
                pb.SystemSharedMemoryUnregisterRequest,
                self._system_unregister,
            ),
            "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest, self._cuda_status),
            "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest, self._cuda_register),
            "CudaSharedMemoryUnregister": (
                pb.CudaSharedMemoryUnregisterRequest,
                self._cuda_unregister,
            ),
        }

    async def _system_status(self, request: Any) -> Any:
        reply = pb.SystemSharedMemoryStatusResponse()
        for region in self._shm.status(request.name, "system"):
            reply.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return reply

    async def _system_register(self, request: Any) -> Any:
        self._shm.register_system(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def _system_unregister(self, request: Any) -> Any:
        self._shm.unregister(request.name, "system")
        return pb.SystemSharedMemoryUnregisterResponse()

    async def _cuda_status(self, request: Any) -> Any:
        reply = pb.CudaSharedMemoryStatusResponse()
        for region in self._shm.status(request.name, "cuda"):
            reply.regions[region["name"]].CopyFrom(
                pb.CudaSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return reply

    async def _cuda_register(self, request: Any) -> Any:
        self._shm.register_cuda(
            request.name, bytes(request.raw_handle), request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    async def _cuda_unregister(self, request: Any) -> Any:
        self._shm.unregister(request.name, "cuda")
        return pb.CudaSharedMemoryUnregisterResponse()
