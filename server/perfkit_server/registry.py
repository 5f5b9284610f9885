"""Model lifecycle: repository scan, versions and version_policy, load (with a config override
applied live), unload, poll, the repository index, config completion from the ONNX graph.

A load builds the new version set completely (instances loaded, warmed up) before it replaces the
old one, so the model keeps serving during a reload and a failed reload leaves the old one in place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import (
    config_from_json,
    load_config,
    validate_config,
)
from perfkit.model_repo.repository import check_model_name, scan_repository, version_dirs
from perfkit_server import ensemble_deps
from perfkit_server.backends import (
    Backend,
    InstanceSpec,
    backend_name,
    create_backend,
    known_backend,
    platform_of,
    probe_host,
)
from perfkit_server.backends.python.control import run_on_loop
from perfkit_server.config_guard import check_fields
from perfkit_server.ensemble_config import is_ensemble, resolve_ensemble
from perfkit_server.errors import (
    InternalError,
    InvalidConfig,
    InvalidInput,
    ModelNotFound,
    Unavailable,
)
from perfkit_server.load_limits import LoadLimits, check_load
from perfkit_server.modelconfig import normalize
from perfkit_server.placement import placed_groups, resolve_groups, slots
from perfkit_server.rate_limiter import ModelLimits, RateLimiter, log_ignored
from perfkit_server.response_cache import ResponseCache, model_cache
from perfkit_server.scheduler import BatcherSpec, Scheduler
from perfkit_server.sequence import SequenceScheduler
from perfkit_server.sequence_config import sequence_setup
from perfkit_server.served import CONFIG_FILE as CONFIG_FILE  # re-exported: the registry's types
from perfkit_server.served import LoadedVersion as LoadedVersion
from perfkit_server.served import ModelEntry as ModelEntry
from perfkit_server.served import TensorSignature as TensorSignature
from perfkit_server.served import fingerprint as _fingerprint
from perfkit_server.served import select_versions as _select_versions
from perfkit_server.served import signatures as _signatures
from perfkit_server.settings import ServerSettings
from perfkit_server.stats import ModelStats
from perfkit_server.types import InferRequest, InferResponse
from perfkit_server.warmup import Warmup, run_warmup, warmup_requests

logger = logging.getLogger(__name__)


class Registry:
    """All models of one repository and their served versions."""

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._root = settings.model_repository
        self._limits = LoadLimits.from_settings(settings)
        self._models: dict[str, ModelEntry] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._poll_seen: dict[str, tuple[Any, ...]] = {}
        size, mode = settings.response_cache_bytes, settings.rate_limit
        self.response_cache = ResponseCache(size) if size else None
        self.rate_limiter = (
            RateLimiter(settings.rate_limit_resources) if mode == "execution_count" else None
        )
        # Set by DataPlane: run an InferRequest as a client's (awaited on the serving loop).
        self.internal_infer: Callable[[InferRequest], Awaitable[InferResponse]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, seen at a load
        self._serving = False  # startup loading done (a python model's load API needs it)

    # -- lookups ------------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The served version for a request; raises ModelNotFound or Unavailable."""
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        if not entry.versions:
            why = f" ({entry.reason})" if entry.reason else ""
            raise ModelNotFound(
                f"Request for unknown model: '{name}' has no available versions{why}"
            )
        if not version:
            return entry.versions[max(entry.versions)]
        try:
            loaded = entry.versions.get(int(version))
        except ValueError:
            raise InvalidInput(f"model version must be an integer, got '{version}'") from None
        if loaded is None:
            raise ModelNotFound(
                f"Request for unknown model: '{name}' version {version} is not found "
                f"(served versions: {sorted(entry.versions)})"
            )
        return loaded

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, Unavailable, InvalidInput):
            return False
        return True

    def entries(self) -> dict[str, ModelEntry]:
        """Every model seen, loaded or not, by name."""
        return self._models

    def loaded_versions(self) -> list[LoadedVersion]:
        return [v for e in self._models.values() for v in e.versions.values()]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: one entry per model version (or per model if none)."""
        try:
            names = set(scan_repository(self._root))
        except ModelRepoError:
            names = set()
        names |= set(self._models)
        out: list[dict[str, str]] = []
        for name in sorted(names):
            entry = self._models.get(name)
            if entry is not None and entry.versions:
                # Triton leaves "reason" out of entries that have none.
                out.extend(
                    {"name": name, "version": str(v), "state": "READY"}
                    for v in sorted(entry.versions)
                )
            elif not ready_only:
                if entry is None:
                    out.append({"name": name})
                else:
                    out.extend(
                        {"name": name, "version": v, "state": entry.state, "reason": entry.reason}
                        for v in (entry.last_versions or [""])
                    )
        return out

    # -- lifecycle ----------------------------------------------------------------------------

    async def load_startup(self) -> None:
        """Load what the model control mode says to load at start; failures are logged, not fatal."""
        mode = self._settings.model_control_mode
        if mode == "explicit":
            wanted = list(self._settings.load_models)
            if "*" in wanted:
                wanted = list(scan_repository(self._root))
        else:
            wanted = list(scan_repository(self._root))
        if mode == "poll":
            self._poll_seen = {name: _fingerprint(self._root / name) for name in wanted}
        await asyncio.gather(*(self._load_logged(name) for name in wanted))
        self._serving = True
        if mode == "poll":
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _load_logged(self, name: str) -> None:
        try:
            await self.load(name)
        except (InvalidInput, ModelNotFound, Unavailable):
            pass  # load() logged it with the file and field; the other models keep loading

    async def load(
        self, name: str, override: dict[str, Any] | str | None = None, *, explicit: bool = True
    ) -> None:
        """(Re)load a model, optionally with a JSON config override (Triton's load API);
        `explicit` False: only as an ensemble's composing model.

        Raises InvalidInput for a bad name or config, ModelNotFound if the repository has no such
        model. On failure the previously served versions keep serving.
        """
        try:
            check_model_name(name)
        except ModelRepoError as exc:
            raise InvalidInput(str(exc)) from None
        model_dir = self._root / name
        if not model_dir.is_dir():
            # Triton's status and words (500 / INTERNAL) for a model the repository does not have.
            raise InternalError(
                f"failed to load '{name}', failed to poll from model repository: no model "
                f"directory '{model_dir}'"
            )
        entry = self._models.setdefault(name, ModelEntry(name))
        entry.explicit = entry.explicit or explicit
        async with entry.lock:
            fingerprint = _fingerprint(model_dir)
            if override is None and entry.versions and entry.fingerprint == fingerprint:
                # Triton: a plain load of a loaded model whose files did not change is a no-op
                # (it keeps a config override applied earlier; unload + load reverts to the file).
                return
            try:
                config = await asyncio.to_thread(self._resolve_config, name, model_dir, override)
                if is_ensemble(config):
                    versions = await ensemble_deps.build_versions(self, name, model_dir, config)
                else:
                    versions = await self._build_versions(name, model_dir, config)
            except Exception as exc:  # load boundary: any backend error fails only this model
                message = str(exc) or type(exc).__name__
                if not entry.versions:
                    entry.state, entry.reason = "UNAVAILABLE", message
                    available = version_dirs(model_dir)
                    entry.last_versions = [str(max(available))] if available else []
                logger.error("failed to load model '%s': %s", name, message)
                raise InvalidInput(f"failed to load '{name}': {message}") from None
            old = entry.versions
            entry.versions, entry.config = versions, config
            entry.state, entry.reason, entry.fingerprint = "READY", "", fingerprint
            entry.last_versions = [str(v) for v in sorted(versions)]
            entry.awaiting_composing = False
            logger.info(
                "loaded model '%s' versions %s", name, ", ".join(str(v) for v in sorted(versions))
            )
            for lv in old.values():
                await lv.scheduler.close()
        await ensemble_deps.after_load(self, name)

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Unload every version of a model; queued requests are served first. The ensembles
        that use it, and with `unload_dependents` an ensemble's own composing models, follow
        Triton's rules (ensemble_deps)."""
        try:
            check_model_name(name)
        except ModelRepoError as exc:
            raise InvalidInput(str(exc)) from None
        entry = self._models.get(name)
        if entry is None:
            return  # as Triton: unloading a model that is not loaded succeeds
        await ensemble_deps.before_unload(self, name)
        async with entry.lock:
            old, entry.versions = entry.versions, {}
            entry.state, entry.reason = "UNAVAILABLE", "unloaded"
            entry.awaiting_composing = entry.explicit = False
            for lv in old.values():
                await lv.scheduler.close()
            logger.info("unloaded model '%s'", name)
        await ensemble_deps.after_unload(self, entry, unload_dependents)

    async def close(self) -> None:
        """Stop polling and unload everything (serving what is queued)."""
        self._serving = False
        if self._poll_task is not None:
            self._poll_task.cancel()
        for entry in list(self._models.values()):
            for lv in entry.versions.values():
                await lv.scheduler.close()
            entry.versions = {}

    async def poll_once(self) -> None:
        """Load new and changed models, unload removed ones (poll mode)."""
        try:
            present = scan_repository(self._root)
        except ModelRepoError as exc:
            logger.error("model repository poll failed: %s", exc)
            return
        for name in sorted(set(self._models) - set(present)):
            if self._models[name].versions:
                await self.unload(name)
            self._models.pop(name, None)
            self._poll_seen.pop(name, None)
        for name, model_dir in present.items():
            fingerprint = _fingerprint(model_dir)
            if self._poll_seen.get(name) != fingerprint:
                # A failed load is retried only when the model's files change again.
                self._poll_seen[name] = fingerprint
                await self._load_logged(name)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.repository_poll_secs)
            await self.poll_once()

    # -- building -----------------------------------------------------------------------------

    def _resolve_config(
        self, name: str, model_dir: Path, override: dict[str, Any] | str | None
    ) -> Any:
        config_path = model_dir / CONFIG_FILE
        if override is not None:
            # A whole config; without backend/platform it is inferred from the model's files.
            source = f"config override for model '{name}'"
            config = config_from_json(override, source)
            missing_file = False
        elif config_path.is_file():
            source = str(config_path)
            config = load_config(config_path)
            missing_file = False
        else:
            from tritonclient.grpc import model_config_pb2 as mc

            source = str(config_path)
            config = mc.ModelConfig()
            missing_file = True
        if config.name and config.name != name:
            raise InvalidConfig(
                f"{source}: name: '{config.name}' does not match the model directory '{name}'"
            )
        config.name = name
        if is_ensemble(config):
            try:  # the fields no ensemble rule covers are refused as for any model
                check_fields(config, "ensemble", source, [], model_dir)
            except ValueError as exc:
                raise InvalidConfig(str(exc)) from None
            return resolve_ensemble(config, source)
        backend = backend_name(config, model_dir)
        if not backend and override is not None and config_path.is_file():
            # Like Triton, fill the backend in from the model's files: here its config.pbtxt.
            try:
                backend = backend_name(load_config(config_path), model_dir)
            except ModelRepoError:
                backend = ""
        if not known_backend(backend):
            raise InvalidConfig(
                f"{source}: backend: unsupported backend {backend or '(none)'!r}; this server "
                'runs backends "onnxruntime" (platform onnxruntime_onnx), "pytorch" (platform '
                'pytorch_libtorch), "tensorrt" (platform tensorrt_plan), "python", '
                '"perfkit_identity" and "perfkit_repeat"'
            )
        try:
            # Where the instances run (NVML read once), then before anything is read: model file
            # names, backend parameters, caps (instances as placed), warmup names.
            groups = resolve_groups(config, backend, probe_host(config, backend))
            check_load(config, backend, self._limits, source, groups)
            check_fields(config, backend, source, groups, model_dir)
        except ValueError as exc:
            raise InvalidConfig(str(exc)) from None
        if not config.backend and not config.platform:
            config.backend = backend
        settings = self._settings
        autocomplete = settings.auto_complete_config and (
            missing_file or not settings.strict_model_config
        )
        if autocomplete and backend == "onnxruntime" and (not config.input or not config.output):
            from perfkit_server.backends.onnxruntime import autocomplete as complete

            latest = _select_versions(config, model_dir, source)
            complete(config, latest[max(latest)])
        if missing_file and not autocomplete:
            raise InvalidConfig(
                f"{source}: missing, and config auto-completion is disabled; write a config.pbtxt"
            )
        validate_config(config, source)
        if not config.input or not config.output:
            raise InvalidConfig(
                f"{source}: input/output: the model must declare inputs and outputs"
            )
        normalize(config, backend, groups)
        return config

    async def _build_versions(
        self, name: str, model_dir: Path, config: Any
    ) -> dict[int, LoadedVersion]:
        source = f"model '{name}'"
        chosen = _select_versions(config, model_dir, str(model_dir / CONFIG_FILE))
        inputs = _signatures(config.input, source, "input")
        outputs = _signatures(config.output, source, "output")
        placed = slots(placed_groups(config))
        spec = BatcherSpec.from_config(config)
        cache = model_cache(config, self.response_cache, source)
        if self.rate_limiter is None:
            log_ignored(config)
        # A sequence_batching model: its sequence batcher, and the config its backends load.
        sequencing = await asyncio.to_thread(sequence_setup, config, model_dir, source)
        backend_config = sequencing[1] if sequencing else config
        # Triton reports the platform of a backend: "onnxruntime" models as onnxruntime_onnx.
        platform = platform_of(config)
        warmups = await asyncio.to_thread(warmup_requests, config, model_dir, source)
        self._loop = asyncio.get_running_loop()
        result: dict[int, LoadedVersion] = {}
        try:
            for version, version_dir in chosen.items():
                specs = [
                    InstanceSpec(
                        name,
                        version,
                        version_dir,
                        backend_config,
                        i,
                        len(placed),
                        slot.kind,
                        slot.device_id,
                        slot.group_index,
                        self._submit_internal,
                        self._submit_control,
                    )
                    for i, slot in enumerate(placed)
                ]
                loaded = await asyncio.gather(
                    *(asyncio.to_thread(self._load_instance, s, warmups) for s in specs),
                    return_exceptions=True,
                )
                good = [x for x in loaded if not isinstance(x, BaseException)]
                errors = [x for x in loaded if isinstance(x, BaseException)]
                limits: ModelLimits | None = None
                if not errors and self.rate_limiter is not None:
                    where = [(slot.group_index, slot.device_id) for slot in placed]
                    try:
                        limits = self.rate_limiter.register(name, version, config, where, good)
                    except ValueError as exc:
                        errors.append(exc)
                if errors:
                    for backend in good:
                        backend.close()
                    raise errors[0]
                stats = ModelStats(name, str(version))
                scheduler: Scheduler | SequenceScheduler
                if sequencing:
                    scheduler = SequenceScheduler(sequencing[0], good, stats, list(outputs), limits)
                else:
                    scheduler = Scheduler(spec, good, stats, limits)
                scheduler.start()
                result[version] = LoadedVersion(
                    name=name,
                    version=version,
                    config=config,
                    scheduler=scheduler,
                    stats=stats,
                    inputs=inputs,
                    outputs=outputs,
                    max_batch_size=int(config.max_batch_size),
                    platform=platform,
                    response_cache=cache,
                    decoupled=spec.decoupled,
                )
        except BaseException:
            for lv in result.values():
                await lv.scheduler.close()
            raise
        return result

    def _submit_internal(self, request: InferRequest) -> Future[InferResponse]:
        """internal_infer for a backend's own threads (a python model's BLS): the request runs
        on the serving loop; the caller waits on the future (never call this from the loop)."""
        infer, loop = self.internal_infer, self._loop
        if infer is None or loop is None:
            raise Unavailable("the server does not serve requests from inside it yet")

        async def run() -> InferResponse:
            return await infer(request)

        return asyncio.run_coroutine_threadsafe(run(), loop)

    def _submit_control(self, action: str, name: str, arg: Any) -> Future[bool]:
        """model_control for a python model's threads (pb_utils.load_model and co., control.py)."""
        loop, mode = self._loop, self._settings.model_control_mode
        if loop is None:
            raise Unavailable("the server does not serve requests from inside it yet")
        coro = run_on_loop(self, self._serving, mode, action, name, arg)
        return asyncio.run_coroutine_threadsafe(coro, loop)

    @staticmethod
    def _load_instance(spec: InstanceSpec, warmups: list[Warmup]) -> Backend:
        backend = create_backend(spec)
        try:
            run_warmup(backend, warmups)
        except BaseException:
            backend.close()
            raise
        return backend
