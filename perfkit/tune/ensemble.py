"""Tuning an ensemble as one unit: its composing models' configs are what a variant changes, the
ensemble's end-to-end figures what it is measured by.

- The space: each config dimension of [space] with more than one value, once per composing model,
  named `<model>.<dimension>` (`pipeline_pre.instance_count`, `pipeline_pre.param:<key>`); the
  load dimensions as for any model. `max_batch_size` is not searched: a composing model's must
  stay at least the ensemble's.
- A variant (`Pipeline`): every composing model's config with its own dimensions applied, the
  ensemble's config unchanged; its key hashes all of them, with the client load.
- Its text (a trial's config.pbtxt): the ensemble's config.pbtxt, then each composing model's as a
  commented block, so that every reader of a variant's config.pbtxt still reads a valid config;
  the write-back takes the blocks out again (`step_texts`).
- A trial loads each composing model with its config override, then the ensemble; the requests go
  to the ensemble. The winner's configs are written into the composing models' directories (each
  original kept as config.pbtxt.orig), and the server reloads them, then the ensemble, from disk.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfkit.control import ControlClient
from perfkit.errors import ConfigError, PerfkitError
from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import ModelConfig, config_to_json, format_config, load_config
from perfkit.results import TuneResult
from perfkit.sweepfile import LoadSettings, SpaceSpec, TuneSweep
from perfkit.tune import output
from perfkit.tune.evaluate import LiveEvaluator
from perfkit.tune.space import (
    Dim,
    SearchSpace,
    build_variant,
    check_instances,
    is_config_dim,
    variant_key,
)

ENSEMBLE_PLATFORM = "ensemble"
_MARK = "# ---- composing model "
_MARK_END = " ----"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """An ensemble and its composing models' configs (in step order, each model once)."""

    name: str
    ensemble: ModelConfig
    steps: tuple[tuple[str, ModelConfig], ...]


def _read(path: Path) -> ModelConfig:
    try:
        return load_config(path)
    except ModelRepoError as exc:
        raise ConfigError(str(exc)) from exc


def load_pipeline(repository: Path, model: str) -> Pipeline | None:
    """The ensemble `model` of `repository` with its composing models' configs, or None when the
    model is not an ensemble. ConfigError when a composing model is not in the repository."""
    config = _read(repository / model / "config.pbtxt")
    if config.platform != ENSEMBLE_PLATFORM:
        return None
    names = list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))
    if not names:
        raise ConfigError(
            f"{repository / model}/config.pbtxt: ensemble_scheduling has no step: an ensemble "
            "needs at least one composing model"
        )
    steps: list[tuple[str, ModelConfig]] = []
    for name in names:
        path = repository / name / "config.pbtxt"
        if not path.is_file():
            raise ConfigError(
                f"ensemble {model!r} runs {name!r}, which has no {path}: perfkit tune tunes an "
                "ensemble's composing models, so they must be in the same model repository"
            )
        step = _read(path)
        if step.platform == ENSEMBLE_PLATFORM:
            raise ConfigError(
                f"ensemble {model!r} runs the ensemble {name!r}: perfkit tune does not tune "
                "nested ensembles; tune the inner ensemble on its own"
            )
        steps.append((name, step))
    return Pipeline(model, config, tuple(steps))


def pipeline_space(pipeline: Pipeline, space: SpaceSpec, load: LoadSettings) -> SearchSpace:
    """The search space of an ensemble: [space]'s config dimensions once per composing model."""
    if space.max_batch_size:
        raise ConfigError(
            f"space.max_batch_size: ensemble {pipeline.name!r} is tuned through its composing "
            "models, whose max_batch_size must stay at least the ensemble's; remove "
            "max_batch_size from [space]"
        )
    for _, config in pipeline.steps:
        check_instances(config, space)
    single = SearchSpace.from_specs(space, load)
    names = [name for name, _ in pipeline.steps]
    config_dims = [
        Dim(f"{name}.{dim.name}", dim.values)
        for name in names
        for dim in single.dims
        if is_config_dim(dim.name)
    ]
    load_dims = [dim for dim in single.dims if not is_config_dim(dim.name)]
    fixed: dict[str, Any] = {}
    for key, value in single.fixed.items():
        if is_config_dim(key):
            fixed.update({f"{name}.{key}": value for name in names})
        else:
            fixed[key] = value
    return SearchSpace(dims=(*config_dims, *load_dims), fixed=fixed)


def pipeline_hash(pipeline: Pipeline) -> str:
    """Stable short hash (12 hex digits) of the ensemble's and its composing models' configs."""
    digest = hashlib.sha256(pipeline.ensemble.SerializeToString(deterministic=True))
    for name, config in pipeline.steps:
        digest.update(name.encode() + b"\0" + config.SerializeToString(deterministic=True))
    return digest.hexdigest()[:12]


def pipeline_text(pipeline: Pipeline) -> str:
    """The ensemble's config.pbtxt with each composing model's config.pbtxt as a commented block."""
    lines = [
        format_config(pipeline.ensemble).rstrip("\n"),
        "#",
        "# perfkit tune: this ensemble's composing models, one config.pbtxt each (what it tunes)",
    ]
    for name, config in pipeline.steps:
        lines.append(f"{_MARK}{name}{_MARK_END}")
        lines.extend(f"# {line}" if line else "#" for line in format_config(config).splitlines())
    return "\n".join(lines) + "\n"


def step_texts(text: str) -> dict[str, str]:
    """The composing models' config.pbtxt texts of a `pipeline_text`, by model name."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(_MARK) and line.endswith(_MARK_END):
            current = blocks.setdefault(line[len(_MARK) : -len(_MARK_END)], [])
        elif current is not None:
            current.append(line[2:] if line.startswith("# ") else "")
    return {name: "\n".join(lines) + "\n" for name, lines in blocks.items()}


class PipelineVariants:
    """The tuner's variants of an ensemble (`perfkit.tune.tuner.Variants`)."""

    def build(self, base: Pipeline, params: Mapping[str, Any]) -> Pipeline:
        steps = []
        for name, config in base.steps:
            prefix = f"{name}."
            own = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            steps.append((name, build_variant(config, own) if own else config))
        return dataclasses.replace(base, steps=tuple(steps))

    def key(self, variant: Pipeline, params: Mapping[str, Any]) -> str:
        load = variant_key(variant.ensemble, params).partition("/")[2]
        return f"{pipeline_hash(variant)}/{load}"

    def text(self, variant: Pipeline) -> str:
        return pipeline_text(variant)


class PipelineEvaluator(LiveEvaluator):
    """`LiveEvaluator` for an ensemble: a variant is loaded composing model by composing model
    (each with its config override), then the ensemble; requests go to the ensemble."""

    def __init__(self, *, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = {
            name: ControlClient(self.url, self.protocol, model=name, network_timeout_s=120.0)
            for name, _ in pipeline.steps
        }

    def load_variant(self, config: Pipeline) -> None:
        for name, step in config.steps:
            self.steps[name].load_model(json.dumps(config_to_json(step)))
        self.control.load_model(None)

    def close(self) -> None:
        for control in self.steps.values():
            control.close()
        super().close()


def default_text(pipeline: Pipeline | None, model_dir: Path) -> str:
    """The default config's text: the model's config.pbtxt, or an ensemble's `pipeline_text`."""
    if pipeline is None:
        return (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    return pipeline_text(pipeline)


WriteBackFn = Callable[..., output.WriteBack]
ReloadFn = Callable[[str, TuneSweep], str]


def finishers(
    pipeline: Pipeline | None, write: WriteBackFn, reload_model: ReloadFn
) -> tuple[WriteBackFn, ReloadFn]:
    """The write-back and the reload after a tune: a model's own (`write`, `reload_model`), or
    an ensemble's (`write_back`, `reload`), called alike."""
    if pipeline is None:
        return write, reload_model
    return functools.partial(write_back, pipeline), functools.partial(reload, pipeline)


def write_back(
    pipeline: Pipeline, result: TuneResult, model_dir: Path, *, dry_run: bool
) -> output.WriteBack:
    """The best variant's composing-model configs written into their directories (or diffed);
    `model_dir` is the ensemble's, its config.pbtxt left as it is."""
    repository = model_dir.parent
    best = output.trial(result, result.best_trial)
    if best is None or not result.best_config_pbtxt or result.best_trial == result.default_trial:
        # Nothing to write: output.write_back says why without reading the text.
        return output.write_back(result, model_dir, dry_run=dry_run)
    texts = step_texts(result.best_config_pbtxt)
    done = [
        (name, output.write_back(
            dataclasses.replace(result, best_config_pbtxt=texts[name]),
            repository / name,
            dry_run=dry_run,
        ))
        for name, _ in pipeline.steps
    ]  # fmt: skip
    written = [wb for _, wb in done if wb.written_to is not None]
    return output.WriteBack(
        diff="".join(wb.diff for _, wb in done),
        written_to=written[0].written_to if written else None,
        backup=written[0].backup if written else None,
        reason="; ".join(f"{name}: {wb.reason}" for name, wb in done),
    )


def reload(pipeline: Pipeline, url: str, sweep: TuneSweep) -> str:
    """Leave the server serving the files on disk: each composing model, then the ensemble."""
    names = [*(name for name, _ in pipeline.steps), pipeline.name]
    for name in names:
        control = ControlClient(url, sweep.protocol, model=name, network_timeout_s=120.0)
        try:
            control.reload_from_disk()
        except PerfkitError as exc:  # the results are written: report it, never lose them
            return f"the server could not reload {name!r} from disk: {exc}"
        finally:
            control.close()
    return f"the server reloaded the configs on disk ({', '.join(names)})"
