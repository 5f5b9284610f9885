"""An ensemble's config: Triton's load-time checks and the step graph the ensemble scheduler runs.

Two stages, as in Triton: `check_scheduling` needs only the ensemble's own config (core's
ValidateEnsembleSchedulingConfig: platform, steps, data flow, unused tensors), `check_composing`
runs once the composing models are loaded (ensemble_utils' ValidateEnsembleConfig: mapped names,
datatypes, shapes, max_batch_size). Each message starts with Triton's own words and adds the step
and what to change. Pure: no I/O, no server state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perfkit.model_repo.config import validate_config
from perfkit_server.errors import InvalidConfig

ENSEMBLE_PLATFORM = "ensemble"


def is_ensemble(config: Any) -> bool:
    """The config names the ensemble platform or carries ensemble_scheduling."""
    return str(config.platform) == ENSEMBLE_PLATFORM or config.HasField("ensemble_scheduling")


@dataclass(frozen=True, slots=True)
class Step:
    """One ensemble step: a composing model and its tensor maps (composing name, ensemble name)."""

    index: int
    model_name: str
    model_version: int  # -1: the latest served version
    input_map: tuple[tuple[str, str], ...]
    output_map: tuple[tuple[str, str], ...]

    @property
    def where(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    """The step graph of one ensemble, as its scheduler walks it."""

    name: str
    max_batch_size: int  # > 0: the ensemble's tensors carry a batch dimension
    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    optional_inputs: frozenset[str]
    outputs: dict[str, tuple[int, ...]]  # ensemble output -> dims (reshape if set)
    producer: dict[str, int]  # ensemble tensor -> the step that writes it
    max_inflight_requests: int  # per step, across requests; 0: unlimited

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    def needed_steps(self, wanted: Iterable[str]) -> list[Step]:
        """The steps that the wanted outputs depend on (all steps when `wanted` is empty).

        Triton prunes the steps whose outputs no requested output needs, so composing models
        see (and count) only the requests that matter.
        """
        needed = set(wanted) or set(self.outputs)
        keep: set[int] = set()
        frontier = list(needed)
        while frontier:
            idx = self.producer.get(frontier.pop())
            if idx is None or idx in keep:
                continue
            keep.add(idx)
            frontier.extend(tensor for _, tensor in self.steps[idx].input_map)
        return [s for s in self.steps if s.index in keep]


def plan_of(config: Any) -> EnsemblePlan:
    """The step graph of a config that `check_scheduling` accepted."""
    steps = tuple(
        Step(
            index=i,
            model_name=str(s.model_name),
            model_version=int(s.model_version),
            input_map=tuple(sorted((str(k), str(v)) for k, v in s.input_map.items())),
            output_map=tuple(sorted((str(k), str(v)) for k, v in s.output_map.items())),
        )
        for i, s in enumerate(config.ensemble_scheduling.step)
    )
    return EnsemblePlan(
        name=str(config.name),
        max_batch_size=int(config.max_batch_size),
        steps=steps,
        inputs=tuple(str(t.name) for t in config.input),
        optional_inputs=frozenset(str(t.name) for t in config.input if t.optional),
        outputs={str(t.name): _dims_of(t) for t in config.output},
        producer={tensor: s.index for s in steps for _, tensor in s.output_map},
        max_inflight_requests=int(config.ensemble_scheduling.max_inflight_requests),
    )


def composing_models(config: Any) -> list[str]:
    """The models an ensemble's steps name, each once, in step order."""
    return list(dict.fromkeys(str(s.model_name) for s in config.ensemble_scheduling.step))


def _dims_of(tensor: Any) -> tuple[int, ...]:
    dims = tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims
    return tuple(int(d) for d in dims)


# -- stage 1: the ensemble's own config -------------------------------------------------------


def resolve_ensemble(config: Any, source: str) -> Any:
    """Check an ensemble's config on its own and fill in what Triton fills in; returns it."""
    check_scheduling(config, source)
    validate_config(config, source)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    config.model_transaction_policy.SetInParent()  # Triton serves decoupled: false
    return config


def check_scheduling(config: Any, source: str) -> None:
    """Triton's checks of an ensemble config on its own (raise InvalidConfig naming the field)."""
    name = str(config.name)

    def fail(why: str) -> InvalidConfig:
        return InvalidConfig(f"{source}: {why}")

    if str(config.platform) != ENSEMBLE_PLATFORM:
        raise fail(
            f"ensemble scheduling cannot be set for model '{name}' whose platform is not "
            f'{ENSEMBLE_PLATFORM}; set platform: "{ENSEMBLE_PLATFORM}" or remove '
            "ensemble_scheduling"
        )
    if config.backend:
        raise fail(
            f"Ensemble model '{name}' must have platform type '{ENSEMBLE_PLATFORM}' and empty "
            f'backend type; remove backend: "{config.backend}"'
        )
    if not config.HasField("ensemble_scheduling"):
        raise fail(
            f"ensemble scheduling must be set for ensemble {name} whose platform is "
            f"{ENSEMBLE_PLATFORM}; add ensemble_scheduling {{ step [ ... ] }}"
        )
    if config.instance_group:
        raise fail(
            f"instance group should not be specified for ensemble '{name}' (its composing models "
            "have instances; an ensemble has none)"
        )
    if config.HasField("optimization"):
        raise fail(f"optimization should not be specified for ensemble '{name}'")
    if config.model_warmup:
        raise fail(f"model_warmup can not be specified for ensemble '{name}'")
    # Fields Triton accepts on an ensemble but this server's ensemble scheduler does not apply:
    # refused rather than ignored.
    for field, why in (
        ("dynamic_batching", "an ensemble does not batch; its composing models' schedulers do"),
        ("sequence_batching", "sequences through an ensemble are not implemented by this server"),
        ("response_cache", "caching an ensemble's responses is not implemented by this server"),
    ):
        if config.HasField(field) and (field != "response_cache" or config.response_cache.enable):
            raise fail(f"{field}: not supported on ensemble '{name}': {why}; remove it")
    if config.model_transaction_policy.decoupled:
        raise fail(
            f"model_transaction_policy.decoupled: not supported on ensemble '{name}' by this "
            "server (Triton derives it from the composing models); remove it"
        )
    if not config.ensemble_scheduling.step:
        raise fail(f"must specify 'step' for ensemble '{name}'")
    _check_graph(config, fail)


def _check_graph(config: Any, fail: Any) -> None:
    """BuildEnsembleGraph plus the data-flow walk: inputs used, outputs written, nothing unused.

    A cycle between steps leaves its tensors never ready, so it shows as an output not written or
    a tensor unused, as in Triton.
    """
    name = str(config.name)
    writers: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    steps = list(config.ensemble_scheduling.step)
    for idx, step in enumerate(steps):
        for what in ("model_name", "input_map", "output_map"):
            if not getattr(step, what):
                raise fail(f"must specify '{what}' in step {idx} of ensemble '{name}'")
        for model_output, tensor in sorted(step.output_map.items()):
            if tensor in writers:
                raise fail(
                    f"ensemble tensor '{tensor}' can appear in an output map only once for "
                    f"ensemble '{name}' step {idx} (step {writers[tensor]} already writes it; "
                    f"output '{model_output}' of model '{step.model_name}' needs another name)"
                )
            writers[tensor] = idx
        for tensor in step.input_map.values():
            readers.setdefault(tensor, []).append(idx)
    inputs = [str(t.name) for t in config.input]
    for tensor in inputs:
        if tensor not in readers and tensor not in writers:
            raise fail(
                f"ensemble input '{tensor}' for ensemble {name}' is not used (no step's input_map "
                "names it)"
            )
    ready = set(inputs)
    done: set[int] = set()
    progress = True
    while progress:
        progress = False
        for idx, step in enumerate(steps):
            if idx not in done and all(t in ready for t in step.input_map.values()):
                done.add(idx)
                ready.update(step.output_map.values())
                progress = True
    outputs = [str(t.name) for t in config.output]
    for tensor in outputs:
        if tensor not in readers and tensor not in writers:
            raise fail(
                f"ensemble output '{tensor}' for ensemble {name}' is not used (no step's "
                "output_map names it)"
            )
        if tensor not in ready:
            missing = _unconnected_source(tensor, steps, writers, ready)
            detail = (
                f": at least one of its depending tensors, '{missing}', is not connected"
                if missing != tensor
                else ""
            )
            raise fail(
                f"output '{tensor}' for ensemble '{name}' is not written{detail} (every input "
                "of the steps that produce it must be an ensemble input or an earlier step's "
                "output, without cycles)"
            )
    for tensor in sorted(set(readers) | set(writers)):
        if tensor in outputs:
            continue
        if tensor not in ready or tensor not in readers:
            where = (
                f"written by step {writers[tensor]}" if tensor in writers else "read by step(s) "
            )
            if tensor not in writers:
                where += ", ".join(str(i) for i in readers[tensor])
            raise fail(
                f"ensemble tensor '{tensor}' is unused in ensemble '{name}' ({where}; it must be "
                "an ensemble input or output, or flow from one step to another)"
            )


def _unconnected_source(
    tensor: str, steps: Sequence[Any], writers: Mapping[str, int], ready: set[str]
) -> str:
    """Walk back from a tensor that is never written to the first tensor nothing provides."""
    seen: set[str] = set()
    current = tensor
    while current in writers:
        step = steps[writers[current]]
        nxt = next(
            (t for t in sorted(step.input_map.values()) if t not in ready and t not in seen),
            None,
        )
        if nxt is None:
            break
        seen.add(nxt)
        current = nxt
    return current


# -- stage 2: against the composing models ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """An ensemble tensor as one model declares it."""

    model: str
    datatype: int
    dims: tuple[int, ...]
    batching: bool

    @property
    def full_dims(self) -> tuple[int, ...]:
        return (-1, *self.dims) if self.batching else self.dims


def _same_dims(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _dims_text(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _consistent(prefix: str, lhs: _Node, rhs: _Node, fix: str) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    if lhs.datatype != rhs.datatype:
        raise InvalidConfig(
            f"{prefix}inconsistent data type: {mc.DataType.Name(lhs.datatype)} is inferred from "
            f"model {lhs.model} while {mc.DataType.Name(rhs.datatype)} is inferred from model "
            f"{rhs.model} ({fix})"
        )
    if not _same_dims(lhs.dims, rhs.dims) and not _same_dims(lhs.full_dims, rhs.full_dims):
        raise InvalidConfig(
            f"{prefix}inconsistent shape: {_dims_text(lhs.full_dims)} is inferred from model "
            f"{lhs.model} while {_dims_text(rhs.full_dims)} is inferred from model {rhs.model} "
            f"({fix})"
        )


def check_composing(config: Any, composing: Mapping[str, Any]) -> None:
    """ValidateEnsembleConfig: each step against its composing model's (served) config.

    `composing` maps each step's model name to that model's config.
    """
    name = str(config.name)
    batching = int(config.max_batch_size) > 0
    tensors: dict[str, _Node] = {}
    for t in list(config.input) + list(config.output):
        tensors[str(t.name)] = _Node(name, int(t.data_type), _dims_of(t), batching)
    for step in plan_of(config).steps:
        model = composing[step.model_name]
        mbs = int(model.max_batch_size)
        if mbs != 0 and mbs < int(config.max_batch_size):
            raise InvalidConfig(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it "
                f"contains model {step.model_name} which only allows maximum batch size to be "
                f"{mbs} ({step.where}; lower the ensemble's max_batch_size or raise the model's)"
            )
        if model.model_transaction_policy.decoupled:
            raise InvalidConfig(
                f"in ensemble {name}, {step.where} is decoupled: decoupled composing models are "
                "not supported by this server's ensemble scheduler"
            )
        _check_step(name, step, model, tensors)


def _check_step(name: str, step: Step, model: Any, tensors: dict[str, _Node]) -> None:
    batching = int(model.max_batch_size) > 0
    model_inputs = {str(t.name): t for t in model.input}
    model_outputs = {str(t.name): t for t in model.output}
    for model_input, tensor in step.input_map:
        if model_input not in model_inputs:
            raise InvalidConfig(
                f"in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing input "
                f"{model_input} in model {step.model_name} ({step.where}; its inputs are "
                f"{sorted(model_inputs)})"
            )
    mapped = dict(step.input_map)
    for model_input, t in model_inputs.items():
        mapped_to = mapped.get(model_input)
        if mapped_to is None:
            if t.optional:
                continue
            raise InvalidConfig(
                f"in ensemble {name}, input {model_input} in model {step.model_name} is not "
                f"mapped to any ensemble tensors ({step.where}; add input_map {{ key: "
                f'"{model_input}" value: "<ensemble tensor>" }})'
            )
        node = _Node(step.model_name, int(t.data_type), tuple(int(d) for d in t.dims), batching)
        _merge(name, step, mapped_to, node, tensors, f"input '{model_input}'")
    for model_output, tensor in step.output_map:
        t = model_outputs.get(model_output)
        if t is None:
            raise InvalidConfig(
                f"in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing output "
                f"{model_output} in model {step.model_name} ({step.where}; its outputs are "
                f"{sorted(model_outputs)})"
            )
        node = _Node(step.model_name, int(t.data_type), tuple(int(d) for d in t.dims), batching)
        _merge(name, step, tensor, node, tensors, f"output '{model_output}'")


def _merge(
    name: str, step: Step, tensor: str, node: _Node, tensors: dict[str, _Node], what: str
) -> None:
    known = tensors.get(tensor)
    if known is None:
        tensors[tensor] = node
        return
    fix = f"{step.where}, {what}: declare the same data_type and dims in both configs"
    _consistent(f"in ensemble {name}, ensemble tensor {tensor}: ", known, node, fix)
