"""Request inputs built once before measuring: random / zero tensors, perf_analyzer JSON files or
directories of raw files, shaped from the model metadata, -b and --shape. Pure (numpy, files).

Errors name the input, the flag and what to do: a missing --shape for a variable dim, a shape the
model does not accept, a JSON entry that does not match the model.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from perfkit.datatypes import NP_BY_V2
from perfkit.errors import ConfigError, ModelError
from perfkit.load.spec import InputSpec

Array = npt.NDArray[Any]

# KServe v2 datatype -> numpy dtype, from the one table (BF16 absent: numpy has none).
TRITON_TO_NP: dict[str, Any] = NP_BY_V2


@dataclass(frozen=True, slots=True, kw_only=True)
class InputInfo:
    name: str
    datatype: str
    # Dims without the batch dim; -1 for a variable dim.
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedInputs:
    """One or more input sets (round-robin across requests) and the outputs to ask for."""

    sets: tuple[dict[str, Array], ...]
    outputs: tuple[str, ...]
    batched: bool
    # The data streams of a sequence model, each the indexes of its steps in `sets` (the JSON's
    # list-of-lists form gives several; otherwise one stream of every set in order).
    streams: tuple[tuple[int, ...], ...] = ((0,),)
    # The inputs came from a JSON file (perf_analyzer then sizes sequences by their stream).
    json_data: bool = False

    @property
    def byte_size(self) -> int:
        return sum(int(a.nbytes) for a in self.sets[0].values())


def model_inputs(metadata: Mapping[str, Any], max_batch_size: int) -> list[InputInfo]:
    out = []
    for x in metadata.get("inputs", []):
        shape = [int(d) for d in x.get("shape", [])]
        dims = shape[1:] if max_batch_size > 0 and shape else shape
        out.append(InputInfo(name=x["name"], datatype=x["datatype"], dims=tuple(dims)))
    return out


def resolve_shape(info: InputInfo, spec: InputSpec, model: str) -> tuple[int, ...]:
    """Dims (without batch) for an input: --shape if given (checked against fixed dims), else the
    model's dims, which must then be fixed."""
    given = spec.shapes.get(info.name)
    if given is not None:
        ok = len(given) == len(info.dims) and all(
            m == -1 or m == g for m, g in zip(info.dims, given, strict=True)
        )
        if not ok:
            raise ModelError(
                f"--shape {info.name}:{','.join(map(str, given))} does not fit model '{model}': "
                f"input {info.name} has dims {list(info.dims)} (-1 = variable; leave out the batch dim)."
            )
        return tuple(given)
    if any(d < 0 for d in info.dims):
        raise ModelError(
            f"Input {info.name} of model '{model}' has variable dims {list(info.dims)}: give them "
            f"with --shape {info.name}:" + ",".join("N" if d < 0 else str(d) for d in info.dims)
        )
    return info.dims


def _random(dt: str, shape: tuple[int, ...], spec: InputSpec, rng: np.random.Generator) -> Array:
    if dt == "BYTES":
        n = int(np.prod(shape)) if shape else 1
        if spec.string_data is not None:
            vals = [spec.string_data.encode()] * n
        else:
            letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
            vals = [
                bytes(rng.choice(letters, spec.string_length).tobytes()) for _ in range(min(n, 64))
            ]
            vals = [vals[i % len(vals)] for i in range(n)]
        return np.array(vals, dtype=np.object_).reshape(shape)
    np_t = TRITON_TO_NP[dt]
    if dt == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(np_t, np.integer):
        return rng.integers(0, 64, shape).astype(np_t)
    return rng.random(shape, dtype=np.float64).astype(np_t)


def _zero(dt: str, shape: tuple[int, ...], spec: InputSpec) -> Array:
    if dt == "BYTES":
        s = (spec.string_data or "").encode()
        return np.array([s] * (int(np.prod(shape)) if shape else 1), dtype=np.object_).reshape(
            shape
        )
    return np.zeros(shape, dtype=TRITON_TO_NP[dt])


def _with_batch(a: Array, batch: int, batched: bool) -> Array:
    if not batched:
        return a
    return np.ascontiguousarray(np.broadcast_to(a, (batch, *a.shape)))


def _json_tensor(value: Any, info: InputInfo, spec: InputSpec, where: str) -> Array:
    dt = info.datatype
    shape: tuple[int, ...] | None = None
    if isinstance(value, dict) and "b64" in value:
        raw = base64.b64decode(value["b64"])
        if dt == "BYTES":
            arr: Array = np.array([raw], dtype=np.object_)
        else:
            arr = np.frombuffer(raw, dtype=TRITON_TO_NP[dt]).copy()
    else:
        if isinstance(value, dict):
            if "content" not in value:
                raise ConfigError(
                    f"{where}: expected a list, or an object with 'content' or 'b64'."
                )
            shape = tuple(int(d) for d in value.get("shape", ()) or ()) or None
            value = value["content"]
        flat = np.array(value, dtype=object).reshape(-1)
        if dt == "BYTES":
            arr = np.array(
                [str(v).encode() if not isinstance(v, bytes) else v for v in flat], dtype=np.object_
            )
        else:
            try:
                arr = flat.astype(TRITON_TO_NP[dt])
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: values are not {dt}: {exc}.") from exc
    dims = shape or spec.shapes.get(info.name) or info.dims
    if any(d < 0 for d in dims):
        raise ModelError(
            f"{where}: input {info.name} has variable dims {list(info.dims)}; give 'shape' in the "
            f"JSON entry or --shape {info.name}:..."
        )
    want = int(np.prod(dims)) if dims else 1
    if arr.size != want:
        raise ConfigError(
            f"{where}: input {info.name} has {arr.size} values but the model needs "
            f"{want} (dims {list(dims)}, without the batch dim)."
        )
    return arr.reshape(tuple(dims))


def _load_json(
    path: Path, infos: Sequence[InputInfo], spec: InputSpec
) -> tuple[list[dict[str, Array]], list[tuple[int, ...]]]:
    """The JSON's input sets and its streams (perf_analyzer's sequence form: "data" is a list of
    streams, each a list of steps; the flat form is one stream)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--input-data: cannot read {path}: {exc.strerror}.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--input-data: {path} is not valid JSON: {exc}.") from exc
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f'--input-data: {path} needs a non-empty "data" list (perf_analyzer format).'
        )
    nested = any(isinstance(e, list) for e in data)
    if nested and not all(isinstance(e, list) and e for e in data):
        raise ConfigError(
            f'--input-data: {path}: "data" mixes streams (lists of steps) with single entries, '
            "or has an empty stream; for a sequence model give a list of streams, each a "
            "non-empty list of steps."
        )
    steps: list[tuple[str, Any]] = []
    streams: list[tuple[int, ...]] = []
    for n, entry in enumerate(data):
        if nested:
            streams.append(tuple(range(len(steps), len(steps) + len(entry))))
            steps += [(f"data[{n}][{k}]", e) for k, e in enumerate(entry)]
        else:
            steps.append((f"data[{n}]", entry))
    if not nested:
        streams = [tuple(range(len(steps)))]
    names = {i.name for i in infos}
    sets = []
    for where, entry in steps:
        if not isinstance(entry, dict):
            raise ConfigError(f"--input-data: {path}: {where} is not an object of inputs.")
        unknown = sorted(set(entry) - names - {"timestamp", "delay", "session_id"})
        if unknown:
            raise ConfigError(
                f"--input-data: {path}: {where} has {', '.join(unknown)}, which the model does "
                f"not take (inputs: {', '.join(sorted(names))})."
            )
        s = {}
        for info in infos:
            if info.name not in entry:
                raise ConfigError(
                    f"--input-data: {path}: {where} has no input {info.name} (the model needs "
                    f"{', '.join(sorted(names))})."
                )
            s[info.name] = _json_tensor(
                entry[info.name], info, spec, f"{path}: {where}.{info.name}"
            )
        sets.append(s)
    return sets, streams


def read_timestamps(path: str) -> tuple[int, ...]:
    """--fixed-schedule: the send offsets (µs) of a perf_analyzer JSON's "data" entries, from
    each entry's "timestamp" (milliseconds from the start, as perf_analyzer's fixed schedule; a
    stream's first step carries it), in file order, which must not go back in time."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(
            f"--fixed-schedule: cannot read --input-data {path}: {exc.strerror}."
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--fixed-schedule: --input-data {path} is not valid JSON: {exc}."
        ) from exc
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list) or not data:
        raise ConfigError(f'--fixed-schedule: {path} needs a non-empty "data" list.')
    out: list[int] = []
    for n, entry in enumerate(data):
        if isinstance(entry, list):
            entry = entry[0] if entry else {}
        ts = entry.get("timestamp") if isinstance(entry, dict) else None
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not ts >= 0:
            raise ConfigError(
                f'--fixed-schedule: {path}: data[{n}] needs a "timestamp" (milliseconds from '
                f"the start, >= 0), found {ts!r}."
            )
        us = round(ts * 1000)
        if out and us < out[-1]:
            raise ConfigError(
                f"--fixed-schedule: {path}: data[{n}].timestamp {ts} is before the one of "
                f"data[{n - 1}]; list the entries in send order."
            )
        out.append(us)
    return tuple(out)


def _load_dir(
    path: Path, infos: Sequence[InputInfo], spec: InputSpec, model: str
) -> dict[str, Array]:
    s = {}
    for info in infos:
        f = path / info.name
        if not f.is_file():
            raise ConfigError(
                f"--input-data: {path} has no file {info.name} for input {info.name}."
            )
        dims = resolve_shape(info, spec, model)
        if info.datatype == "BYTES":
            lines = f.read_bytes().splitlines()
            want = int(np.prod(dims)) if dims else 1
            if len(lines) != want:
                raise ConfigError(
                    f"--input-data: {f} has {len(lines)} lines; input {info.name} needs {want}."
                )
            s[info.name] = np.array(lines, dtype=np.object_).reshape(dims)
        else:
            arr = np.frombuffer(f.read_bytes(), dtype=TRITON_TO_NP[info.datatype])
            want = int(np.prod(dims)) if dims else 1
            if arr.size != want:
                raise ConfigError(
                    f"--input-data: {f} holds {arr.size} {info.datatype} values; input {info.name} "
                    f"needs {want} (dims {list(dims)})."
                )
            s[info.name] = arr.reshape(dims).copy()
    return s


def prepare(
    metadata: Mapping[str, Any], config: Mapping[str, Any], spec: InputSpec
) -> PreparedInputs:
    """Build the tensors every request of a level carries (batch dim included when batching)."""
    model = str(metadata.get("name", "?"))
    mbs = int(config.get("max_batch_size", 0) or 0)
    batched = mbs > 0
    if spec.batch_size > 1 and not batched:
        raise ModelError(
            f"-b {spec.batch_size}: model '{model}' does not batch (max_batch_size 0); use -b 1."
        )
    if batched and spec.batch_size > mbs:
        raise ModelError(
            f"-b {spec.batch_size} is above max_batch_size {mbs} of model '{model}'; use -b {mbs} or less."
        )
    infos = model_inputs(metadata, mbs)
    names = {i.name for i in infos}
    unknown = sorted(set(spec.shapes) - names)
    if unknown:
        raise ModelError(
            f"--shape {', '.join(unknown)}: model '{model}' has no such input "
            f"(inputs: {', '.join(sorted(names))})."
        )
    for info in infos:
        if info.datatype not in TRITON_TO_NP:
            raise ModelError(
                f"Input {info.name} has datatype {info.datatype}, which perfkit cannot generate."
            )
    src = spec.source
    streams: list[tuple[int, ...]] = [(0,)]
    json_data = False
    if src in ("random", "zero"):
        rng = np.random.default_rng(spec.seed)
        s: dict[str, Array] = {}
        for info in infos:
            dims = resolve_shape(info, spec, model)
            s[info.name] = (
                _random(info.datatype, dims, spec, rng)
                if src == "random"
                else _zero(info.datatype, dims, spec)
            )
        raw_sets = [s]
    else:
        p = Path(src)
        if p.is_dir():
            raw_sets = [_load_dir(p, infos, spec, model)]
        elif p.suffix.lower() == ".json" or p.is_file():
            raw_sets, streams = _load_json(p, infos, spec)
            json_data = True
        else:
            raise ConfigError(
                f"--input-data: {src!r} is not 'random', 'zero', a JSON file or a directory."
            )
    sets = tuple(
        {k: _with_batch(v, spec.batch_size, batched) for k, v in rs.items()} for rs in raw_sets
    )
    outputs = tuple(str(o["name"]) for o in metadata.get("outputs", []))
    return PreparedInputs(
        sets=sets, outputs=outputs, batched=batched, streams=tuple(streams), json_data=json_data
    )
