"""The typed knobs of [space]: backend `parameters`, config fields by proto path, the response cache
and ONNX Runtime's execution accelerators, parsed and checked (`parse_knobs`, called by
`perfkit.sweepfile.parse`).

    [space]
    response_cache = [true, false]             # response_cache { enable } (the server needs a cache)
    accelerators = ["none", "openvino"]        # ONNX Runtime's: none, cuda, tensorrt[:FP32|FP16|
                                               #   BF16|INT8] (KIND_GPU instances), openvino (CPU)
    [space.parameters]                         # parameters { key value { string_value } }
    intra_op_thread_count = [1, 2, 4]
    execution_mode = [0, 1]
    [space.fields]                             # any field of model_config.proto by its path
    "optimization.graph.level" = [-1, 0, 1]
    "instance_group[KIND_CPU].count" = {min = 1, max = 4, scale = "log2"}
    "dynamic_batching.max_queue_delay_microseconds" = {min = 0, max = 1000, step = 250}

A value is a scalar (pinned), a list, or an integer range: {min, max, step} or {min, max,
scale = "log2"} (the powers of two from min to max). Parameters known to a backend's catalogue
(`PARAMETERS`: the keys Triton's onnxruntime and pytorch backends read, and what each takes) are
checked here, so a bad value is refused with the values allowed; a key no catalogue knows is
passed as a string, as written: Triton's backends ignore keys they do not read, so check its
spelling. Which backend a key belongs to is checked against the model's config before the first
trial (`perfkit.tune.knobs.check_knobs`). Field paths and values are checked against
model_config.proto (`perfkit.sweepfile.protopath`); `FIELD_CHOICES` narrows a few int fields to
the values their readers take.

Imports the stdlib, perfkit.errors, perfkit.tomltable, the launch settings, the sweep spec and
the proto descriptors (through perfkit.sweepfile.protopath) only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perfkit.errors import ConfigError
from perfkit.launch.settings import LaunchSettings
from perfkit.sweepfile import protopath
from perfkit.sweepfile.spec import SpaceSpec
from perfkit.tomltable import TableReader

# The most values one range may give (a typo like step = 1 over microseconds).
MAX_RANGE_VALUES = 256
_BOOL_WORDS = {True: "true", False: "false"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Knob:
    """One backend parameter: its type, the values it takes, and how describe() shows it.

    kind: "int" (an integer >= minimum: an ordered dimension), "choice" (one of `choices`),
    "bool" (true/false; written "true"/"false").
    """

    kind: str
    allowed: str
    minimum: int = 0
    choices: tuple[str, ...] = ()
    short: str = ""
    # Set once for the whole server process (the first model's value holds): one value per tune.
    process_wide: bool = False

    @property
    def ordered(self) -> bool:
        return self.kind == "int"

    def normalise(self, value: Any) -> str:
        """The string_value config.pbtxt gets for `value`; ValueError names what is allowed."""
        if self.kind == "bool":
            if isinstance(value, bool):
                return _BOOL_WORDS[value]
            if isinstance(value, str) and value.strip().lower() in ("true", "on", "1"):
                return "true"
            if isinstance(value, str) and value.strip().lower() in ("false", "off", "0"):
                return "false"
            raise ValueError(f"{value!r} is not allowed; allowed: {self.allowed}")
        text = str(value).strip() if isinstance(value, int | str) else ""
        if isinstance(value, bool) or not text.lstrip("-").isdigit():
            raise ValueError(f"{value!r} is not an integer; allowed: {self.allowed}")
        number = int(text)
        if self.kind == "choice" and str(number) not in self.choices:
            raise ValueError(f"{value!r} is not allowed; allowed: {self.allowed}")
        if self.kind == "int" and number < self.minimum:
            raise ValueError(f"{value!r} is not allowed; allowed: {self.allowed}")
        return str(number)


_THREADS = "an integer >= 0 (0: ONNX Runtime's default)"
_BOOL = "true or false"
# Triton's onnxruntime backend (onnxruntime_backend README, src/onnxruntime.cc) and pytorch backend
# (pytorch_backend README): the `parameters` keys each reads, and what each takes.
PARAMETERS: dict[str, dict[str, Knob]] = {
    "onnxruntime": {
        "intra_op_thread_count": Knob(kind="int", allowed=_THREADS, short="intra"),
        "inter_op_thread_count": Knob(kind="int", allowed=_THREADS, short="inter"),
        "execution_mode": Knob(
            kind="choice",
            choices=("0", "1"),
            allowed="0 (sequential) or 1 (parallel)",
            short="exec",
        ),
        "enable_mem_arena": Knob(kind="bool", allowed=_BOOL, short="arena"),
        "enable_mem_pattern": Knob(kind="bool", allowed=_BOOL, short="mempattern"),
        "session.use_device_allocator_for_initializers": Knob(
            kind="choice", choices=("0", "1"), allowed="0 or 1"
        ),
        # The CUDA execution provider's (KIND_GPU instances).
        "cudnn_conv_algo_search": Knob(
            kind="choice",
            choices=("0", "1", "2"),
            allowed="0 (EXHAUSTIVE), 1 (HEURISTIC) or 2 (DEFAULT)",
            short="cudnn",
        ),
        "gpu_mem_limit": Knob(kind="int", allowed="a byte count >= 0"),
        "arena_extend_strategy": Knob(
            kind="choice", choices=("0", "1"), allowed="0 (kNextPowerOfTwo) or 1 (kSameAsRequested)"
        ),
        "do_copy_in_default_stream": Knob(kind="bool", allowed=_BOOL),
    },
    "pytorch": {
        "INTRA_OP_THREAD_COUNT": Knob(
            kind="int", minimum=1, allowed="an integer >= 1", short="intra", process_wide=True
        ),
        "INTER_OP_THREAD_COUNT": Knob(
            kind="int", minimum=1, allowed="an integer >= 1", short="inter", process_wide=True
        ),
        **{
            key: Knob(kind="bool", allowed=_BOOL)
            for key in (
                "INFERENCE_MODE",
                "DISABLE_OPTIMIZED_EXECUTION",
                "DISABLE_CUDNN",
                "ENABLE_WEIGHT_SHARING",
                "ENABLE_CACHE_CLEANING",
                "ENABLE_JIT_PROFILING",
                "ENABLE_JIT_EXECUTOR",
                "ENABLE_TENSOR_FUSER",
            )
        },
    },
}

# Int fields whose readers take a few values only: path -> (values, what they mean).
FIELD_CHOICES: dict[str, tuple[tuple[int, ...], str]] = {
    "optimization.graph.level": (
        (-1, 0, 1, 2),
        "-1 (basic), 0 (all, ONNX Runtime's default), 1 (extended), 2 (disable all)",
    ),
}
# Fields a [space] key owns: setting both would make one undo the other.
_OWNED = {
    "max_batch_size": "max_batch_size",
    "dynamic_batching.max_queue_delay_microseconds": "max_queue_delay_us",
    "dynamic_batching.preferred_batch_size": "preferred_batch_sizes",
    "instance_group.count": "instance_count",
    "instance_group.kind": "instance_kind",
    "response_cache.enable": "response_cache",
    "optimization.execution_accelerators": "accelerators",
}
# ONNX Runtime's execution accelerators (Triton's onnxruntime backend): GPU ones apply to
# KIND_GPU instances only; openvino is a CPU one (onnxruntime built with OpenVINO).
GPU_ACCELERATORS = ("cuda", "tensorrt")
PRECISIONS = ("FP32", "FP16", "BF16", "INT8")
ACCELERATORS = (
    "none", "cuda", "tensorrt", *(f"tensorrt:{p}" for p in PRECISIONS), "openvino",
)  # fmt: skip


def parameter_knob(key: str) -> Knob | None:
    """The catalogue's knob for `key` (keys do not repeat across backends), or None."""
    for knobs in PARAMETERS.values():
        if key in knobs:
            return knobs[key]
    return None


def parse_knobs(r: TableReader) -> dict[str, Any]:
    """The knob fields of `SpaceSpec` from the [space] table `r` (keyword arguments)."""
    out: dict[str, Any] = {}
    raw = r.raw("parameters")
    if raw is not None:
        out["parameters"] = _parse_parameters(_sub(r, "parameters", raw))
    raw = r.raw("fields")
    if raw is not None:
        out["fields"] = _parse_fields(_sub(r, "fields", raw), r)
    raw = r.raw("response_cache")
    if raw is not None:
        items = raw if isinstance(raw, list) else [raw]
        if not items or not all(isinstance(i, bool) for i in items):
            raise r.fail("response_cache", f"must be true, false or a list of them, got {raw!r}")
        out["response_cache"] = tuple(dict.fromkeys(items))
    raw = r.raw("accelerators")
    if raw is not None:
        items = raw if isinstance(raw, list) else [raw]
        bad = [i for i in items if i not in ACCELERATORS]
        if not items or bad:
            raise r.fail(
                "accelerators",
                f"{bad[0] if bad else raw!r} is not an ONNX Runtime execution accelerator; "
                f"allowed: {', '.join(ACCELERATORS)}",
            )
        out["accelerators"] = _unique(r, "accelerators", items)
    return out


def check_cache(space: SpaceSpec, url: str | None, launch: LaunchSettings, source: str) -> None:
    """Refuse a response_cache search on a server perfkit starts without a cache (Triton would
    leave every response uncached: both values would measure the same). With a url, the server's
    own flags decide."""
    if True not in space.response_cache or url is not None:
        return
    if any(a.startswith(("--cache-config", "--response-cache-byte-size")) for a in launch.args):
        return
    raise ConfigError(
        f"{source}:space.response_cache: the server perfkit starts has no response cache, so "
        'Triton would cache nothing; add args = ["--cache-config=local,size=16777216"] to '
        "[server], or drop response_cache"
    )


def _sub(r: TableReader, name: str, raw: Any) -> TableReader:
    if not isinstance(raw, dict):
        raise r.fail(name, f"must be a table ([space.{name}]), got {raw!r}")
    return TableReader(r.source, r.key(name), raw)


def _quoted(key: str) -> str:
    return f'"{key}"' if "." in key or "[" in key else key


def _parse_parameters(r: TableReader) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out: list[tuple[str, tuple[str, ...]]] = []
    for key, raw in r.table.items():
        name = _quoted(key)
        knob = parameter_knob(key)
        values = _values(r, name, raw)
        if knob is None:
            for v in values:
                if isinstance(v, float) or not isinstance(v, str | int):
                    raise r.fail(name, f"values must be strings or integers, got {v!r}")
            texts = [_BOOL_WORDS[v] if isinstance(v, bool) else str(v) for v in values]
        else:
            texts = [_convert(r, name, knob.normalise, v) for v in values]
        out.append((key, _unique(r, name, texts)))
    return tuple(out)


def _parse_fields(r: TableReader, space: TableReader) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    out: list[tuple[str, tuple[Any, ...]]] = []
    for key, raw in r.table.items():
        name = _quoted(key)
        try:
            path = protopath.resolve(key)
        except ValueError as exc:
            raise r.fail(name, f"{exc}") from None
        bare = protopath.bare(key)
        if bare == "name":
            raise r.fail(name, "the model's name is its directory's: it cannot be searched")
        for owned, space_key in _OWNED.items():
            if (bare == owned or bare.startswith(owned + ".")) and space_key in space.table:
                raise r.fail(name, f"sets what space.{space_key} sets: keep one of them (not both)")
        values = _values(r, name, raw, repeated=path.repeated)
        typed = [_convert(r, name, path.coerce, v) for v in values]
        choices = FIELD_CHOICES.get(key)
        if choices is not None:
            for v in typed:
                if v not in choices[0]:
                    raise r.fail(name, f"{v!r} is not allowed; allowed: {choices[1]}")
        out.append((key, _unique(r, name, typed)))
    return tuple(out)


def _convert(r: TableReader, name: str, convert: Callable[[Any], Any], value: Any) -> Any:
    try:
        return convert(value)
    except ValueError as exc:
        raise r.fail(name, str(exc)) from None


def _values(r: TableReader, name: str, raw: Any, *, repeated: bool = False) -> list[Any]:
    """A scalar, a list or a range as the list of values it gives."""
    if isinstance(raw, dict):
        return _range(r, name, raw)
    if isinstance(raw, list) and not (repeated and not any(isinstance(i, list) for i in raw)):
        if not raw:
            raise r.fail(name, "must list at least one value")
        return list(raw)
    return [raw]


def _range(r: TableReader, name: str, raw: dict[str, Any]) -> list[int]:
    why = 'a range is {min = 0, max = 1000, step = 250} or {min = 1, max = 16, scale = "log2"}'
    unknown = set(raw) - {"min", "max", "step", "scale"}
    ints = {k: v for k, v in raw.items() if k in ("min", "max", "step")}
    if unknown or "min" not in raw or "max" not in raw:
        raise r.fail(name, f"{why}, got {raw!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in ints.values()):
        raise r.fail(name, f"range bounds and step must be integers ({why}), got {raw!r}")
    low, high = int(raw["min"]), int(raw["max"])
    if low > high:
        raise r.fail(name, f"min {low} is above max {high}")
    if "scale" in raw:
        if raw["scale"] != "log2" or "step" in raw:
            raise r.fail(name, f'scale must be "log2", without a step ({why}), got {raw!r}')
        if low < 1:
            raise r.fail(name, f'a scale = "log2" range starts at min >= 1, got {low}')
        values = [1 << k for k in range(high.bit_length()) if low <= 1 << k <= high]
    else:
        step = int(raw.get("step", 1))
        if step < 1:
            raise r.fail(name, f"step must be >= 1, got {step}")
        values = list(range(low, high + 1, step))
    if not values or len(values) > MAX_RANGE_VALUES:
        raise r.fail(name, f"the range gives {len(values)} values; give 1 to {MAX_RANGE_VALUES}")
    return values


def _unique(r: TableReader, name: str, values: list[Any]) -> tuple[Any, ...]:
    if len(set(values)) != len(values):
        raise r.fail(name, f"lists a value twice: {values}")
    return tuple(values)
