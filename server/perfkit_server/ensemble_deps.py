"""Ensembles and their composing models in the registry, with Triton's dependency rules.

- Loading an ensemble loads its composing models first (Triton polls and loads them with it in
  explicit mode); a composing model already loaded and unchanged is left as it is. A cycle
  between ensembles is refused.
- Unloading a composing model unloads the ensembles that use it; they load again when it does
  (Triton keeps them in its dependency graph). An ensemble unloaded on its own request stays
  unloaded.
- Unloading an ensemble with `unload_dependents` also unloads the composing models that were
  loaded only for it and that no other loaded ensemble uses.
- A composing model that loads again with a config the ensemble no longer fits takes the
  ensemble down (Triton re-checks every ensemble downstream of a changed model) until a
  composing model's next load makes it fit again.

The registry calls `build_versions`, `after_load`, `before_unload` and `after_unload`; the rest
reads its entries (`Registry.entries`).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfkit_server.ensemble import EnsembleScheduler
from perfkit_server.ensemble_config import (
    ENSEMBLE_PLATFORM,
    check_composing,
    composing_models,
    is_ensemble,
    plan_of,
)
from perfkit_server.errors import (
    InternalError,
    InvalidConfig,
    InvalidInput,
    ModelNotFound,
    Unavailable,
)
from perfkit_server.stats import ModelStats

if TYPE_CHECKING:
    from perfkit_server.registry import LoadedVersion, ModelEntry, Registry

logger = logging.getLogger(__name__)

# Ensembles whose load is under way in this task, outermost first: a composing model among them
# is a cycle between ensembles (each would wait for the other's load forever).
_LOADING: ContextVar[tuple[str, ...]] = ContextVar("perfkit_ensembles_loading", default=())


async def build_versions(
    registry: Registry, name: str, model_dir: Path, config: Any
) -> dict[int, LoadedVersion]:
    """An ensemble's served versions, once its composing models are loaded and it fits them."""
    from perfkit_server.served import CONFIG_FILE, LoadedVersion, select_versions, signatures

    check_composing(config, await load_composing(registry, config))
    source = f"model '{name}'"
    inputs = signatures(config.input, source, "input")
    outputs = signatures(config.output, source, "output")
    plan = plan_of(config)
    result: dict[int, LoadedVersion] = {}
    for version in select_versions(config, model_dir, str(model_dir / CONFIG_FILE)):
        stats = ModelStats(name, str(version))
        result[version] = LoadedVersion(
            name=name,
            version=version,
            config=config,
            scheduler=EnsembleScheduler(plan, registry, stats),
            stats=stats,
            inputs=inputs,
            outputs=outputs,
            max_batch_size=int(config.max_batch_size),
            platform=ENSEMBLE_PLATFORM,
        )
    return result


async def load_composing(registry: Registry, config: Any) -> dict[str, Any]:
    """Load an ensemble's composing models; returns each one's served config.

    A composing model whose reload fails but that still serves its previous versions is used as
    it is (as Triton does). Raises InvalidConfig with Triton's dependency messages.
    """
    name = str(config.name)
    chain = (*_LOADING.get(), name)
    token = _LOADING.set(chain)
    try:
        for model in composing_models(config):
            if model in chain:
                path = " -> ".join((*chain[chain.index(model) :], model))
                raise InvalidConfig(
                    f"circular dependency between ensembles: {path} (an ensemble cannot contain "
                    "itself, directly or through another ensemble)"
                )
            await _load_one(registry, name, model)
    finally:
        _LOADING.reset(token)
    return composing_configs(registry, config)


def composing_configs(registry: Registry, config: Any) -> dict[str, Any]:
    """The served config of each step's model (the version the step names); InvalidConfig, with
    Triton's words, when one is not served."""
    name = str(config.name)
    configs: dict[str, Any] = {}
    for step in config.ensemble_scheduling.step:
        version = "" if step.model_version < 0 else str(step.model_version)
        try:
            configs[str(step.model_name)] = registry.get(step.model_name, version).config
        except (ModelNotFound, InvalidInput):
            if step.model_version < 0:
                raise InvalidConfig(
                    f"ensemble '{name}' depends on '{step.model_name}' which has no loaded version"
                ) from None
            raise InvalidConfig(
                f"ensemble '{name}' depends on '{step.model_name}' whose required version "
                f"{step.model_version} is not loaded (set model_version: -1 for the latest, or "
                "serve that version through the model's version_policy)"
            ) from None
    return configs


async def _load_one(registry: Registry, ensemble: str, model: str) -> None:
    try:
        await registry.load(model, explicit=False)
    except InternalError:
        raise InvalidConfig(
            f"ensemble {ensemble} contains models that are not available or ambiguous: {model} "
            "(no such model directory in the model repository)"
        ) from None
    except (InvalidInput, ModelNotFound, Unavailable) as exc:
        if registry.ready(model):
            return  # its previous versions still serve
        raise InvalidConfig(
            f"ensemble '{ensemble}' depends on '{model}' which has no loaded version. Model "
            f"'{model}' loading failed with error: {exc}"
        ) from None


def _dependents(registry: Registry, model: str, *, loaded: bool = True) -> list[ModelEntry]:
    """The ensembles with a step on `model`: loaded ones, or those awaiting a composing model."""
    return [
        entry
        for entry in registry.entries().values()
        if (bool(entry.versions) if loaded else entry.awaiting_composing)
        and entry.config is not None
        and is_ensemble(entry.config)
        and model in composing_models(entry.config)
    ]


async def after_load(registry: Registry, name: str) -> None:
    """`name` was (re)loaded: ensembles waiting for it load again once all of their composing
    models are served; loaded ones that no longer fit it are unloaded, naming why."""
    for entry in _dependents(registry, name, loaded=False):
        if all(registry.ready(m) for m in composing_models(entry.config)):
            try:
                await registry.load(entry.name, explicit=False)
            except (InvalidInput, ModelNotFound, Unavailable):
                pass  # load() logged it; the ensemble stays unavailable with its reason
    for entry in _dependents(registry, name):
        try:
            check_composing(entry.config, composing_configs(registry, entry.config))
        except InvalidConfig as exc:
            # Its index entry says "unloaded", as Triton's; the log says why.
            logger.error("ensemble '%s' unloaded: %s", entry.name, exc)
            await registry.unload(entry.name)
            entry.awaiting_composing = True  # checked again when a composing model loads


async def before_unload(registry: Registry, name: str) -> None:
    """`name` is about to unload: the loaded ensembles that use it go first (their running
    requests finish while it still serves them, as Triton's requests hold their models), and load
    again when it does."""
    for dependent in _dependents(registry, name):
        await registry.unload(dependent.name)
        dependent.awaiting_composing = True


async def after_unload(registry: Registry, entry: ModelEntry, unload_dependents: bool) -> None:
    """`entry` was unloaded: with `unload_dependents`, so are the composing models loaded only
    for it that no other loaded ensemble uses."""
    if unload_dependents and entry.config is not None and is_ensemble(entry.config):
        for model in composing_models(entry.config):
            composing = registry.entries().get(model)
            if (
                composing is not None
                and composing.versions
                and not composing.explicit
                and not _dependents(registry, model)
            ):
                await registry.unload(model, unload_dependents=True)
