"""`Session`: the load generator's connection to one server and model: the control client, the
inputs prepared and the requests encoded once, system or CUDA shared memory for inputs and
outputs (`perfkit.load.shm_regions`), and a pool of connections per level (`new_pool`). Imports
the transports and the control plane; nothing that measures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from perfkit.control import server_info
from perfkit.errors import ConfigError, ServerError
from perfkit.load.client import control_client, grpc_request_bytes, http_request_bytes
from perfkit.load.composing import ModelShape, model_shape, snapshot
from perfkit.load.inputs import PreparedInputs, prepare
from perfkit.load.sequences import Encode, SequenceFeed, SequenceIds
from perfkit.load.shm_regions import Regions, output_region_size
from perfkit.load.spec import InputSpec, TargetSpec
from perfkit.load.stats import RawWindow
from perfkit.load.transports.base import Pool
from perfkit.load.transports.grpcio import GrpcPool
from perfkit.load.transports.h2 import H2Pool
from perfkit.load.transports.h2stream import StreamPool
from perfkit.load.transports.http1 import HttpPool
from perfkit.load.wire import (
    STREAM_SUFFIX,
    GrpcSequenceRequests,
    HttpSequenceRequests,
    format_headers,
)
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
            self.shape: ModelShape = model_shape(
                target.model, self.config, self.ctl.model_config, target.bls_composing_models
            )
            self._check_shape()
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
            self.seq_encode: Encode | None = None
            if self.shape.sequence:
                self.seq_encode = self._sequence_encoder(sets, shm, out_shm)
        except BaseException:
            self.close()
            raise
        self.stats_supported = self.ctl.statistics() is not None
        versions = [str(v) for v in self.metadata.get("versions", [])]
        self.model_version = target.model_version or (
            max(versions, key=lambda v: int(v) if v.isdigit() else -1) if versions else ""
        )
        # --workers: this process's index and the process count (sequence ids are shared out).
        self.worker = (0, 1)
        self._ids: SequenceIds | None = None

    def _check_shape(self) -> None:
        """What perf_analyzer refuses for the model's kind, before any request is encoded."""
        model = self.target.model
        if self.shape.sequence and self.inputs_spec.batch_size > 1:
            raise ConfigError(
                f"-b {self.inputs_spec.batch_size}: model '{model}' is a sequence model "
                "(sequence_batching), and sequence models do not support batching; use -b 1."
            )
        if self.shape.decoupled and not self.target.streaming:
            raise ConfigError(
                f"Model '{model}' is decoupled (model_transaction_policy decoupled: true): "
                "decoupled models must be run with --streaming and -i grpc, as perf_analyzer."
            )

    def _sequence_encoder(
        self,
        sets: Sequence[Mapping[str, Any]],
        shm: Mapping[str, tuple[str, int]],
        out_shm: Mapping[str, tuple[str, int]],
    ) -> Encode:
        target = self.target
        if target.protocol == "http":
            return HttpSequenceRequests(
                target, sets, self.prepared.outputs, shm=shm, out_shm=out_shm,
                extra_headers=format_headers(target.headers),
            ).encode  # fmt: skip
        return GrpcSequenceRequests.build(target, sets, shm=shm, out_shm=out_shm).encode

    def _feed(self, pool: Pool, closed_loop: bool, concurrency: int) -> None:
        """Sequence models: the pool's requests come from a `SequenceFeed` (see
        `perfkit.load.sequences`): one sequence per slot in concurrency mode, this process's
        share of --num-of-sequences in request-rate mode."""
        if self.seq_encode is None:
            return
        spec = self.inputs_spec.sequence
        index, k = self.worker
        if self._ids is None:
            self._ids = SequenceIds(spec, index, k)
        if closed_loop:
            n = max(concurrency, 1)
        else:
            n = max(1, spec.num_of_sequences // k + (1 if index < spec.num_of_sequences % k else 0))
        streams = self.prepared.streams if len(self.reqs) == len(self.prepared.sets) else ((0,),)
        pool.state.feed = SequenceFeed(
            spec, self._ids, self.seq_encode, n,
            fifo=closed_loop or spec.serial, streams=streams,
            json_data=self.prepared.json_data, seed=self.inputs_spec.seed + index,
        )  # fmt: skip

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

    def new_pool(self, closed_loop: bool, concurrency: int = 0) -> Pool:
        """Connections for one level (opened by the driver), with their own timings record;
        `concurrency`: the level's, in closed loop (a sequence model runs one sequence a slot)."""
        pool = self._pool(closed_loop)
        self._feed(pool, closed_loop, concurrency)
        return pool

    def _pool(self, closed_loop: bool) -> Pool:
        host, port = self.target.host_port
        tls, headers = self.target.secure, self.target.headers
        if self.target.protocol == "http":
            ctx = tls.context(alpn=["http/1.1"]) if tls else None
            return HttpPool(host, port, self.reqs, closed_loop, tls=ctx, headers=headers)
        metadata = grpc_metadata(headers)
        if self.target.streaming:
            return StreamPool(
                host, port, self.reqs, closed_loop, decoupled=self.shape.decoupled,
                suffix=STREAM_SUFFIX,
                tls=tls.context(alpn=["h2"]) if tls else None, metadata=metadata,
                compression=self.target.grpc_compression,
            )  # fmt: skip
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
        if self.shape.composing:
            raw = await self.ctl.all_statistics_async()
            if raw is None:
                return None
            return snapshot(self.target.model, self.target.model_version, raw, self.shape)
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
