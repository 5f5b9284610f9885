"""All server logic behind both transports: health, metadata, config, infer, statistics, repository.

Transport modules decode wire formats into `types.InferRequest` and map `errors.ServerError`
subclasses to status codes; everything else happens here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from perfkit_server import SERVER_NAME, __version__
from perfkit_server.ensemble import REQUESTED_OUTPUTS
from perfkit_server.errors import (
    DecoupledUnary,
    InvalidInput,
    ModelNotFound,
    ServerError,
    Unavailable,
)
from perfkit_server.modelconfig import config_json
from perfkit_server.registry import LoadedVersion, Registry
from perfkit_server.settings import ServerSettings
from perfkit_server.shm import SharedMemory, write_output
from perfkit_server.stats import RequestTimes
from perfkit_server.streaming import decoupled_responses
from perfkit_server.types import InferInput, InferOutput, InferRequest, InferResponse, v2_of_array

# Only what this server implements (no classification or logging API). CUDA shared
# memory needs CuPy and a GPU: without them its register answers as a Triton without GPU support.
EXTENSIONS = [
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "sequence",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "system_shared_memory",
    "cuda_shared_memory",
]


# Request signatures remembered per model version (a load generator sends one or a few).
_MAX_CHECKED = 256
_NO_TIMES = RequestTimes()  # a cache hit's: no compute


class DataPlane:
    """Transport-independent implementation of the KServe v2 / Triton protocol."""

    def __init__(self, settings: ServerSettings, registry: Registry) -> None:
        self._settings = settings
        self._registry = registry
        # Requests a model makes from inside the server (ensemble steps, a Python model's BLS
        # calls) go through the same path as a client's.
        registry.internal_infer = self.infer
        self._ready = False
        self.shm = SharedMemory(settings.allow_client_shm, settings.max_shared_memory_regions)

    @property
    def registry(self) -> Registry:
        return self._registry

    def set_ready(self, ready: bool) -> None:
        """Startup loading finished (True) or the server is draining (False)."""
        self._ready = ready

    # -- health and metadata -------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str = "") -> bool:
        return self._registry.ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        lv = self._registry.get(name, version)
        versions = sorted(v.version for v in self._registry.loaded_versions() if v.name == name)
        batch = [-1] if lv.max_batch_size > 0 else []
        return {
            "name": name,
            "versions": [str(v) for v in versions],
            "platform": lv.platform,
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": [*batch, *t.dims]}
                for t in lv.inputs.values()
            ],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": [*batch, *t.dims]}
                for t in lv.outputs.values()
            ],
        }

    def model_config(self, name: str, version: str = "") -> Any:
        """The served ModelConfig (protobuf)."""
        return self._registry.get(name, version).config

    def model_config_json(self, name: str, version: str = "") -> dict[str, Any]:
        return config_json(self.model_config(name, version))

    # -- statistics ----------------------------------------------------------------------------

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        """Triton's statistics extension response: {"model_stats": [...]}."""
        if name:
            try:
                if version:
                    versions = [self._registry.get(name, version)]
                else:
                    self._registry.get(name)
                    versions = [v for v in self._registry.loaded_versions() if v.name == name]
            except (ModelNotFound, Unavailable):
                # Triton's answer (400 / INVALID_ARGUMENT) for statistics of a model not served.
                raise InvalidInput(f"requested model '{name}' is not available") from None
        else:
            versions = self._registry.loaded_versions()
        return {"model_stats": [v.stats.to_json() for v in versions]}

    # -- repository ----------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self._registry.index(ready_only)

    async def load_model(self, name: str, config: dict[str, Any] | str | None = None) -> None:
        self._check_explicit("load")
        await self._registry.load(name, config)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self._check_explicit("unload")
        await self._registry.unload(name, unload_dependents)

    def _check_explicit(self, what: str) -> None:
        mode = self._settings.model_control_mode
        if mode != "explicit":
            raise Unavailable(
                f"explicit model {what} is not allowed if --model-control-mode is '{mode}'; start "
                "the server with --model-control-mode=explicit"
            )

    # -- inference -----------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue, wait for the batch, and build the response (on the loop)."""
        lv, inputs, batch_size, wanted = self._prepare(request)
        if lv.decoupled:
            raise DecoupledUnary()
        start = time.perf_counter_ns()
        REQUESTED_OUTPUTS.set((inputs, wanted))  # an ensemble runs only the steps these need
        cache = lv.response_cache
        if cache is not None:  # a hit never reaches the scheduler (perfkit_server.response_cache)
            key = cache.key(lv.name, lv.version, request.inputs)
            queued = time.perf_counter_ns() - start
            cached, lookup_ns = cache.lookup(key)
            if cached is not None:
                return _respond(lv, request, wanted, cached, _NO_TIMES, start, (queued, lookup_ns))
        try:
            future = lv.scheduler.submit(
                inputs, batch_size, request.priority, request.timeout_us, request.parameters
            )
            outputs, times = await future
        except ServerError as exc:
            # An ensemble's failure carries its own reason (Triton's OTHER), whatever the step's.
            reason = getattr(exc, "failure_reason", "") or (
                "REJECTED" if isinstance(exc, Unavailable) else "BACKEND"
            )
            lv.stats.record_failure(time.perf_counter_ns() - start, reason)
            raise
        except asyncio.CancelledError:  # the client reset or dropped the call (Triton: CANCELED)
            lv.stats.record_failure(time.perf_counter_ns() - start, "CANCELED")
            raise
        if cache is not None:
            lv.stats.cache_miss.add(lookup_ns + cache.insert(key, outputs))
        return _respond(lv, request, wanted, outputs, times, start)

    def infer_direct(self, request: InferRequest) -> InferResponse | None:
        """Run `request` now, on the loop, when its model can take it at once; else None.

        See `Scheduler.try_direct` for when it runs. Validation errors raise as from `infer`.
        """
        lv, inputs, batch_size, wanted = self._prepare(request)
        if lv.decoupled:  # the transports word Triton's refusal for themselves
            raise DecoupledUnary()
        if lv.response_cache is not None:
            return None  # `infer` looks the cache up first
        start = time.perf_counter_ns()
        try:
            done = lv.scheduler.try_direct(inputs, batch_size)
        except ServerError:
            lv.stats.record_failure(time.perf_counter_ns() - start, "BACKEND")
            raise
        if done is None:
            return None
        return _respond(lv, request, wanted, done[0], done[1], start)

    def infer_stream(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        """Every response of `request`, in order: exactly one for a model that is not decoupled;
        for a decoupled model each response it sends (an error response carries `error`; the
        last is `final`), as `streaming.decoupled_responses` says. gRPC ModelStreamInfer.

        A request that fails validation raises here, before any iteration."""
        lv, inputs, batch_size, wanted = self._prepare(request)
        if not lv.decoupled:
            return self._one_response(request)
        return decoupled_responses(lv, request, inputs, batch_size, wanted)

    async def _one_response(self, request: InferRequest) -> AsyncIterator[InferResponse]:
        yield await self.infer(request)

    def _prepare(
        self, request: InferRequest
    ) -> tuple[LoadedVersion, dict[str, Any], int, list[str]]:
        lv = self._registry.get(request.model_name, request.model_version)
        signature = request.signature
        if signature is not None:
            known = lv.checked.get(signature)
            if known is not None:
                return lv, {i.name: i.data for i in request.inputs}, known[0], known[1]
        # Requests refused by validation are not counted (as in Triton): they never reach the model.
        inputs, batch_size = _check_inputs(lv, request.inputs)
        wanted = [o.name for o in request.outputs]
        for out in wanted:
            if out not in lv.outputs:
                raise InvalidInput(f"unexpected inference output '{out}' for model '{lv.name}'")
        if signature is not None:
            if len(lv.checked) >= _MAX_CHECKED:
                lv.checked.clear()
            lv.checked[signature] = (batch_size, wanted)
        return lv, inputs, batch_size, wanted


def _respond(
    lv: LoadedVersion,
    request: InferRequest,
    wanted: list[str],
    outputs: dict[str, Any],
    times: RequestTimes,
    start: int,
    hit: tuple[int, int] | None = None,
) -> InferResponse:
    """The response with the `wanted` outputs (all when none named); counts the success.
    `hit`: served from the response cache, (queue ns before the lookup, lookup ns)."""
    names = wanted or [n for n in lv.outputs if n in outputs] or list(outputs)
    result: list[InferOutput] = []
    for out in names:
        array = outputs.get(out)
        if array is None:
            lv.stats.record_failure(time.perf_counter_ns() - start, "BACKEND")
            raise InvalidInput(f"model '{lv.name}' produced no output '{out}'")
        spec = lv.outputs.get(out)
        datatype = spec.datatype if spec is not None else v2_of_array(array)
        result.append(InferOutput(out, datatype, array.shape, array))
        slot = request.shm_outputs.get(out) if request.shm_outputs else None
        if slot is not None:
            try:
                write_output(slot, out, array)
            except ServerError:
                lv.stats.record_failure(time.perf_counter_ns() - start, "BACKEND")
                raise
    if hit is None:
        lv.stats.record_success(time.perf_counter_ns() - start, times)
    else:
        lv.stats.record_cache_hit(time.perf_counter_ns() - start, *hit)
    return InferResponse(lv.name, str(lv.version), request.id, result)


def _check_inputs(lv: LoadedVersion, inputs: list[InferInput]) -> tuple[dict[str, Any], int]:
    """Check names, datatypes, shapes and batch size against the config; map name -> array."""
    arrays: dict[str, Any] = {}
    batch_size = 1
    mbs = lv.max_batch_size
    first_batch: int | None = None
    for inp in inputs:
        spec = lv.inputs.get(inp.name)
        if spec is None:
            raise InvalidInput(
                f"unexpected inference input '{inp.name}' for model '{lv.name}'; it expects "
                f"{sorted(lv.inputs)}"
            )
        if inp.name in arrays:
            raise InvalidInput(f"input '{inp.name}' appears more than once in the request")
        if inp.datatype != spec.datatype:
            raise InvalidInput(
                f"inference input '{inp.name}' data-type is '{inp.datatype}', but model "
                f"'{lv.name}' expects '{spec.datatype}'"
            )
        shape = inp.shape
        dims = shape
        if mbs > 0:
            if not shape:
                raise InvalidInput(
                    f"input '{inp.name}' of model '{lv.name}' needs a batch dimension: shape "
                    f"[batch, {', '.join(str(d) for d in spec.dims)}]"
                )
            batch = shape[0]
            if batch < 1 or batch > mbs:
                raise InvalidInput(
                    f"inference request batch-size must be <= {mbs} for '{lv.name}' "
                    f"(input '{inp.name}' has batch size {batch})"
                )
            if first_batch is None:
                first_batch = batch
            elif batch != first_batch:
                raise InvalidInput(
                    f"input '{inp.name}' has batch size {batch} but other inputs have {first_batch}"
                )
            dims = shape[1:]
        if len(dims) != len(spec.dims) or any(
            want != -1 and want != got for want, got in zip(spec.dims, dims, strict=False)
        ):
            expect = ([-1] if mbs > 0 else []) + list(spec.dims)
            note = (
                ". NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
                "dimension to be prepended to each input shape."
                if mbs > 0
                else ""
            )
            raise InvalidInput(
                f"unexpected shape for input '{inp.name}' for model '{lv.name}'. "
                f"Expected {_dims(expect)}, got {_dims(shape)}{note}"
            )
        arrays[inp.name] = inp.data
    missing = [n for n, s in lv.inputs.items() if n not in arrays and not s.optional]
    if missing:
        raise InvalidInput(
            f"expected {len(lv.inputs)} inputs but got {len(arrays)} inputs for model "
            f"'{lv.name}'; missing required input(s) {missing}"
        )
    if first_batch is not None:
        batch_size = first_batch
    return arrays, batch_size


def _dims(dims: Any) -> str:
    """Triton's shape format in messages: [-1,16] (no spaces)."""
    return "[" + ",".join(str(int(d)) for d in dims) + "]"
