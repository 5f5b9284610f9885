"""A model config's `sequence_batching` block resolved, with Triton's load-time checks and words.

What the sequence batcher (perfkit_server.sequence) needs: the strategy (Direct unless `oldest` is
set, as in Triton), slots per instance, the idle time, the control inputs with the values each kind
takes, and the implicit state with its initial value. Also the config the backends load: the
control and state tensors added as inputs, the state outputs as outputs, so that a backend that
reads tensor names from the config (ONNX Runtime's outputs, TorchScript's arguments) sees them as
Triton's backends do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.datatypes import BY_V2, NP_BY_V2
from perfkit.model_repo import ModelRepoError
from perfkit.model_repo.config import v2_datatype
from perfkit_server.errors import InvalidConfig
from perfkit_server.types import Array

# Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS (used when the field is 0 or unset).
IDLE_DEFAULT_US = 1_000_000
START, END, READY, CORRID = "START", "END", "READY", "CORRID"
_KINDS = {
    "CONTROL_SEQUENCE_START": START,
    "CONTROL_SEQUENCE_END": END,
    "CONTROL_SEQUENCE_READY": READY,
    "CONTROL_SEQUENCE_CORRID": CORRID,
}
_CORRID_TYPES = ("UINT64", "INT64", "UINT32", "INT32", "BYTES")


@dataclass(frozen=True, slots=True)
class BoolControl:
    """A START, END or READY control input: its tensor and its false/true values."""

    name: str
    kind: str
    datatype: str  # INT32, FP32 or BOOL, from which *_false_true list the config uses
    false_value: Any
    true_value: Any


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: fed as `input_name`, read back from `output_name`."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]
    initial: Array  # the value a sequence starts with (no batch dimension)


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """The sequence_batching block of one model, resolved."""

    oldest: bool
    slots: int  # sequence slots per instance
    max_batch_size: int
    idle_ns: int
    # Direct: a batch waits up to max_queue_delay for minimum_slot_utilization (both > 0).
    direct_delay_ns: int
    minimum_slot_utilization: float
    # Oldest: the dynamic batcher of each instance.
    preferred: tuple[int, ...]
    oldest_delay_ns: int
    preserve_ordering: bool
    controls: tuple[BoolControl, ...]
    corrid: tuple[str, str] | None  # (tensor name, V2 datatype)
    states: tuple[StateSpec, ...]


def _kind_name(kind: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc

    return str(mc.ModelSequenceBatching.Control.Kind.Name(kind))


def _controls(
    sb: Any, model: str, source: str
) -> tuple[tuple[BoolControl, ...], tuple[str, str] | None]:
    """Triton's GetBooleanSequenceControlProperties / GetTypedSequenceControlProperties checks."""
    seen_tensors: set[str] = set()
    seen_kinds: set[str] = set()
    controls: list[BoolControl] = []
    corrid: tuple[str, str] | None = None
    for ci in sb.control_input:
        if not ci.name:
            raise ValueError(
                f"{source}: sequence_batching.control_input: sequence batching control tensor "
                f"must have a name for {model}"
            )
        if ci.name in seen_tensors:
            raise ValueError(
                f"{source}: sequence_batching.control_input: sequence batching control tensor "
                f"'{ci.name}' is specified for multiple control kinds for {model}"
            )
        seen_tensors.add(ci.name)
        for c in ci.control:
            kind_name = _kind_name(c.kind)
            kind = _KINDS[kind_name]
            where = f"{source}: sequence_batching.control_input '{ci.name}'"
            if kind in seen_kinds:
                raise ValueError(
                    f"{where}: sequence batching specifies multiple {kind_name} tensors for {model}"
                )
            seen_kinds.add(kind)
            lists = [
                (n, list(getattr(c, f"{n}_false_true")))
                for n in ("int32", "fp32", "bool")
                if getattr(c, f"{n}_false_true")
            ]
            if kind == CORRID:
                if lists:
                    raise ValueError(
                        f"{where}: sequence batching must not specify either 'int32_false_true', "
                        f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {model}"
                    )
                datatype = _v2(c.data_type, where)
                if datatype not in _CORRID_TYPES:
                    raise ValueError(
                        f"{where}: unexpected data type for control {kind_name} for {model}. "
                        "Allowed data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 "
                        "and TYPE_STRING"
                    )
                corrid = (ci.name, datatype)
                continue
            if not lists:
                raise ValueError(
                    f"{where}: sequence batching must specify either 'int32_false_true', "
                    f"'fp32_false_true' or 'bool_false_true' for {kind_name} for {model}"
                )
            if len(lists) > 1:
                raise ValueError(
                    f"{where}: sequence batching specifies more than one from 'int32_false_true', "
                    f"'fp32_false_true' and 'bool_false_true' for {kind_name} for {model}"
                )
            which, values = lists[0]
            if len(values) != 2:
                raise ValueError(
                    f"{where}: sequence batching control '{which}_false_true' must have exactly "
                    f"2 entries for {kind_name} for {model}"
                )
            datatype = {"int32": "INT32", "fp32": "FP32", "bool": "BOOL"}[which]
            controls.append(BoolControl(ci.name, kind, datatype, values[0], values[1]))
    return tuple(controls), corrid


def _v2(data_type: int, where: str) -> str:
    try:
        return v2_datatype(data_type)
    except ModelRepoError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _initial_value(state: Any, datatype: str, model_dir: Path, where: str) -> Array:
    """The state's initial value: its initial_state (zero_data or data_file), else zeros.

    Triton leaves a state without initial_state uninitialized ("garbage"); zeros here. A
    variable dimension (-1) starts at 1, as Triton allocates it."""
    dtype = NP_BY_V2[datatype]
    dims = [int(d) for d in state.dims]
    if not state.initial_state:
        shape = [1 if d == -1 else d for d in dims]
        return _zeros(shape, dtype)
    if len(state.initial_state) != 1:
        raise ValueError(
            f"{where}: initial_state field for state input '{state.input_name}' must contain "
            f"exactly one or zero element. Found '{len(state.initial_state)}' elements."
        )
    init = state.initial_state[0]
    if _v2(init.data_type, where) != datatype:
        raise ValueError(
            f"{where}: The data type used for 'initial_state' field of state "
            f"'{state.input_name}' does not match the state data type."
        )
    if not init.name:
        raise ValueError(
            f"{where}: Field 'name' must be set when using initial_state for state input "
            f"'{state.input_name}'."
        )
    init_dims = [int(d) for d in init.dims]
    if len(init_dims) != len(dims):
        raise ValueError(
            f"{where}: Number of dimensions in 'initial_state' doesn't match the size of 'state' "
            f"dimensions for state input '{state.input_name}'. {len(init_dims)} != {len(dims)}"
        )
    for got, want in zip(init_dims, dims, strict=True):
        if got == -1:
            raise ValueError(
                f"{where}: 'initial_state' field for state input name '{state.input_name}' "
                "contains variable dimensions."
            )
        if want != -1 and got != want:
            raise ValueError(
                f"{where}: 'initial_state' dim for input name '{state.input_name}' doesn't match "
                f"'state' dim description. {got} != {want}"
            )
    which = init.WhichOneof("state_data")
    if which == "zero_data":
        return _zeros(init_dims, dtype)
    if which != "data_file":
        raise ValueError(
            f"{where}: initial_state setting expects state'{state.input_name}' to have "
            "state_data set"
        )
    name = init.data_file
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise ValueError(
            f"{where}: initial_state data_file {name!r} must be a file name in "
            f"{model_dir / 'initial_state'}"
        )
    path = model_dir / "initial_state" / name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{where}: initial_state data_file: cannot read {path}: {exc}") from None
    count = int(np.prod(init_dims)) if init_dims else 1
    if datatype == "BYTES":
        from perfkit_server.types import deserialize_bytes

        return deserialize_bytes(init.name, raw, count).reshape(init_dims)
    expected = count * dtype.itemsize
    if len(raw) < expected:
        raise ValueError(
            f"{where}: initial_state setting expects {expected} bytes, but the data provided "
            f"from {name} only has {len(raw)} bytes."
        )
    return np.frombuffer(raw[:expected], dtype=dtype).reshape(init_dims).copy()


def _zeros(shape: list[int], dtype: np.dtype[Any]) -> Array:
    if dtype.kind == "O":
        out = np.empty(shape, dtype=np.object_)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=dtype)


def _states(sb: Any, model_dir: Path, source: str) -> tuple[StateSpec, ...]:
    states: list[StateSpec] = []
    names: set[str] = set()
    for st in sb.state:
        where = f"{source}: sequence_batching.state '{st.input_name}'"
        if not st.input_name or not st.output_name:
            raise ValueError(
                f"{source}: sequence_batching.state: every state needs input_name and output_name"
            )
        if st.input_name in names:
            raise ValueError(
                f"{where}: State input name '{st.input_name}' specified more than once."
            )
        names.add(st.input_name)
        datatype = _v2(st.data_type, where)
        if datatype not in NP_BY_V2:
            raise ValueError(f"{where}: data_type {datatype} is not supported for a state")
        initial = _initial_value(st, datatype, model_dir, where)
        states.append(
            StateSpec(
                st.input_name, st.output_name, datatype, tuple(int(d) for d in st.dims), initial
            )
        )
    return tuple(states)


def parse(config: Any, model_dir: Path, source: str) -> SequenceSpec:
    """Resolve `config.sequence_batching`; raises ValueError naming the file and field."""
    sb = config.sequence_batching
    model = config.name
    mbs = int(config.max_batch_size)
    if sb.iterative_sequence:
        raise ValueError(
            f"{source}: sequence_batching.iterative_sequence: not supported by this server "
            "(iterative scheduling re-enqueues a request from its backend); remove the field"
        )
    if config.response_cache.enable:
        raise ValueError(
            f"{source}: response_cache: Response Cache does not currently support model {model} "
            "with sequence batching scheduler. Please disable the response cache."
        )
    if config.model_transaction_policy.decoupled:
        raise ValueError(
            f"{source}: sequence_batching with model_transaction_policy.decoupled: this server's "
            "sequence batcher serves one response per request; set decoupled: false"
        )
    controls, corrid = _controls(sb, model, source)
    strategy = sb.WhichOneof("strategy_choice")
    oldest = strategy == "oldest"
    preferred: tuple[int, ...] = ()
    slots = max(1, mbs)
    if oldest:
        if sb.oldest.max_candidate_sequences > 0:
            slots = int(sb.oldest.max_candidate_sequences)
        for size in sb.oldest.preferred_batch_size:
            if size <= 0:
                raise ValueError(
                    f"{source}: sequence_batching.oldest.preferred_batch_size: sequence batching "
                    f"preferred batch size must be positive for {model}"
                )
            if size > mbs:
                raise ValueError(
                    f"{source}: sequence_batching.oldest.preferred_batch_size: sequence batching "
                    f"preferred batch size must be <= max batch size for {model}"
                )
        preferred = tuple(sorted(int(s) for s in sb.oldest.preferred_batch_size))
    utilization = float(sb.direct.minimum_slot_utilization)
    if strategy == "direct" and not 0.0 <= utilization <= 1.0:
        raise ValueError(
            f"{source}: sequence_batching.direct.minimum_slot_utilization: sequence batching "
            f"minimum slot utilization must be in range (0.0, 1.0] for {model}"
        )
    idle_us = int(sb.max_sequence_idle_microseconds) or IDLE_DEFAULT_US
    return SequenceSpec(
        oldest=oldest,
        slots=slots,
        max_batch_size=mbs,
        idle_ns=idle_us * 1000,
        direct_delay_ns=int(sb.direct.max_queue_delay_microseconds) * 1000,
        minimum_slot_utilization=utilization,
        preferred=preferred,
        oldest_delay_ns=int(sb.oldest.max_queue_delay_microseconds) * 1000,
        preserve_ordering=bool(sb.oldest.preserve_ordering),
        controls=controls,
        corrid=corrid,
        states=_states(sb, model_dir, source),
    )


def normalize(config: Any) -> None:
    """Fill in what Triton's NormalizeModelConfig fills in for sequence_batching (in place)."""
    sb = config.sequence_batching
    if not sb.max_sequence_idle_microseconds:
        sb.max_sequence_idle_microseconds = IDLE_DEFAULT_US
    if sb.HasField("oldest") and not sb.oldest.preferred_batch_size and config.max_batch_size > 0:
        sb.oldest.preferred_batch_size.append(config.max_batch_size)


def backend_config(config: Any, spec: SequenceSpec) -> Any:
    """A copy of `config` for the backends: control and state tensors added as inputs, state
    outputs as outputs (what the model itself takes and returns). Python models get the config
    as written (Triton passes them the model config unchanged)."""
    if config.backend == "python" or not (spec.controls or spec.corrid or spec.states):
        return config
    from tritonclient.grpc import model_config_pb2 as mc

    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    declared_in = {t.name for t in copy.input}
    declared_out = {t.name for t in copy.output}
    for st in spec.states:
        if st.input_name not in declared_in:
            copy.input.add(
                name=st.input_name, data_type=_config_type(st.datatype), dims=list(st.dims)
            )
    for ctl in spec.controls:
        if ctl.name not in declared_in:
            copy.input.add(name=ctl.name, data_type=_config_type(ctl.datatype), dims=[1])
    if spec.corrid is not None and spec.corrid[0] not in declared_in:
        copy.input.add(name=spec.corrid[0], data_type=_config_type(spec.corrid[1]), dims=[1])
    for st in spec.states:
        if st.output_name not in declared_out:
            copy.output.add(
                name=st.output_name, data_type=_config_type(st.datatype), dims=list(st.dims)
            )
    return copy


def _config_type(v2: str) -> int:
    from tritonclient.grpc import model_config_pb2 as mc

    return int(mc.DataType.Value(BY_V2[v2].config))


def sequence_setup(config: Any, model_dir: Path, source: str) -> tuple[SequenceSpec, Any] | None:
    """For a config with `sequence_batching`: its resolved spec and the config its backends
    load, after normalizing the served config in place as Triton does; None without the block."""
    if not config.HasField("sequence_batching"):
        return None
    try:
        spec = parse(config, model_dir, source)
    except ValueError as exc:
        raise InvalidConfig(str(exc)) from None
    normalize(config)
    return spec, backend_config(config, spec)
