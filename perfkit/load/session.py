"""`Session`: the load generator's connection to one server and model: the control client, the
inputs prepared and the requests encoded once, system or CUDA shared memory for inputs and
outputs (`perfkit.load.shm_regions`), and a pool of connections per level (`new_pool`). Imports
the transports and the control plane; nothing that measures.
"""

from __future__ import annotations

import os
from typing import Any

from perfkit.control import server_info
from perfkit.errors import ServerError
from perfkit.load.client import control_client, grpc_request_bytes, http_request_bytes
from perfkit.load.inputs import PreparedInputs, prepare
from perfkit.load.shm_regions import Regions, output_region_size
from perfkit.load.spec import InputSpec, TargetSpec
from perfkit.load.stats import RawWindow
from perfkit.load.transports.base import Pool
from perfkit.load.transports.grpcio import GrpcPool
from perfkit.load.transports.h2 import H2Pool
from perfkit.load.transports.http1 import HttpPool
from perfkit.results import ServerInfo
from perfkit.tls import grpc_metadata


class Session:
    """One target and model with its inputs prepared and requests encoded. Context manager."""

    def __init__(self, target: TargetSpec, inputs: InputSpec) -> None:
        self.target = target
        self.inputs_spec = inputs
        self.ctl = control_client(target)
        self._regions: Regions | None = None
        self.shm: dict[str, tuple[str, int]] = {}
        try:
            self.ctl.wait_live()
            self.server_md = self.ctl.server_metadata()
            self.metadata = self.ctl.model_metadata()
            self.config = self.ctl.model_config()
            self.prepared: PreparedInputs = prepare(self.metadata, self.config, inputs)
            out_shm: dict[str, tuple[str, int]] = {}
            if inputs.shared_memory != "none":
                out_shm = self._setup_shm(inputs.shared_memory)
            shm = self.shm
            sets = self.prepared.sets[:1] if shm else self.prepared.sets
            if target.protocol == "http":
                outputs = self.prepared.outputs
                self.reqs = [
                    http_request_bytes(target, s, outputs, shm=shm, out_shm=out_shm) for s in sets
                ]
            else:
                self.reqs = [grpc_request_bytes(target, s, shm=shm, out_shm=out_shm) for s in sets]
        except BaseException:
            self.close()
            raise
        self.stats_supported = self.ctl.statistics() is not None
        versions = [str(v) for v in self.metadata.get("versions", [])]
        self.model_version = target.model_version or (
            max(versions, key=lambda v: int(v) if v.isdigit() else -1) if versions else ""
        )

    def _setup_shm(self, kind: str) -> dict[str, tuple[str, int]]:
        """Inputs (the first set) and outputs in regions of `kind`, as perf_analyzer places them:
        fills `self.shm` (input -> (region, byte size)) and returns the outputs' regions."""
        tag = f"perfkit_{os.getpid()}_{id(self) & 0xFFFF:x}"
        self._regions = regions = Regions(self.ctl, kind, tag)
        for name, arr in self.prepared.sets[0].items():
            self.shm[name] = regions.add_input(name, arr)
        spec = self.inputs_spec
        out: dict[str, tuple[str, int]] = {}
        by_name = {o["name"]: o for o in self.metadata.get("outputs", [])}
        for name in self.prepared.outputs:
            size = output_region_size(
                by_name.get(name, {}),
                self.prepared.batched,
                spec.batch_size,
                spec.output_shared_memory_size,
            )
            out[name] = regions.add_output(name, size)
        return out

    def close(self) -> None:
        try:
            if self._regions is not None:
                self._regions.close()
        finally:
            self.ctl.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def batch_size(self) -> int:
        return self.inputs_spec.batch_size

    def new_pool(self, closed_loop: bool) -> Pool:
        """Connections for one level (opened by the driver), with their own timings record."""
        host, port = self.target.host_port
        tls, headers = self.target.secure, self.target.headers
        if self.target.protocol == "http":
            ctx = tls.context(alpn=["http/1.1"]) if tls else None
            return HttpPool(host, port, self.reqs, closed_loop, tls=ctx, headers=headers)
        metadata = grpc_metadata(headers)
        if self.target.grpc_client == "grpcio":
            creds = tls.grpc_credentials() if tls else None
            return GrpcPool(
                f"{host}:{port}", self.reqs, closed_loop, self.target.grpc_compression,
                tls=creds, metadata=metadata,
            )  # fmt: skip
        ctx = tls.context(alpn=["h2"]) if tls else None
        return H2Pool(
            host, port, self.reqs, closed_loop, compression=self.target.grpc_compression,
            tls=ctx, metadata=metadata,
        )  # fmt: skip

    async def statistics(self) -> dict[str, Any] | None:
        """The model's server-side statistics now, or None when the server keeps none."""
        if not self.stats_supported:
            return None
        return await self.ctl.statistics_async()

    def check_answers(self, window: RawWindow) -> None:
        """Raise ServerError, with the server's own message, when every request of `window` failed."""
        if window.error_count and window.count == 0:
            msg = self.ctl.infer_error(self.prepared.sets[0], self.shm)
            raise ServerError(
                f"Every request to model '{self.target.model}' at {self.ctl.url} failed: {msg}"
            )

    def server_info(self, embedded: bool = False) -> ServerInfo:
        return server_info(
            self.server_md, url=self.ctl.url, protocol=self.target.protocol, embedded=embedded
        )
