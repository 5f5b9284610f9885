"""Frozen specs for the load generator (target, inputs, measurement, load) and range parsing. Stdlib only.

These are the values the CLI and the tuner build and hand to `perfkit.load.sweep`; nothing here does
I/O. Each spec validates itself in `__post_init__` and raises `ConfigError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from perfkit.errors import ConfigError

# A target's TLS settings and -H headers: defined in the pure perfkit.tls (perfkit.control uses
# them too), exported here with the other specs.
from perfkit.tls import Header as Header
from perfkit.tls import TlsSettings as TlsSettings
from perfkit.tls import check_scheme
from perfkit.tls import parse_headers as parse_headers

WireProtocol = Literal["http", "grpc"]
MeasurementMode = Literal["time_windows", "count_windows"]
Distribution = Literal["constant", "poisson"]
SharedMemory = Literal["none", "system", "cuda"]
TensorFormat = Literal["binary", "json"]
GrpcCompression = Literal["none", "gzip", "deflate"]
# --request-parameter NAME:VALUE:TYPE, typed: (name, value) with value a str, int or bool.
RequestParameter = tuple[str, str | int | bool]
# perf_analyzer's --output-shared-memory-size default: the region of an output whose size the
# model's metadata does not fix (a variable dim, or BYTES).
DEFAULT_OUTPUT_SHM_BYTES = 102400

DEFAULT_HTTP_URL = "localhost:8000"
DEFAULT_GRPC_URL = "localhost:8001"


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSpec:
    """The server and model to measure.

    Args:
        url: `host:port` (an `http://` prefix is accepted for HTTP).
        protocol: "http" or "grpc".
        model: model name.
        model_version: "" for the server's choice (latest), else a version number as a string.
        connect_timeout_s: bounded wait for the server to answer before `ServerUnavailable`.
        grpc_client: the gRPC hot path, "h2" (lean, default) or "grpcio".
        request_parameters: --request-parameter, sent with every request (HTTP "parameters",
            gRPC InferParameter).
        input_tensor_format / output_tensor_format: --input-tensor-format / --output-tensor-format,
            HTTP only: "binary" (Triton's binary tensor extension) or "json".
        grpc_compression: --grpc-compression-algorithm, gRPC only: request messages compressed.
    """

    url: str
    protocol: WireProtocol = "http"
    model: str
    model_version: str = ""
    connect_timeout_s: float = 10.0
    # gRPC hot path: "h2" (perfkit's lean HTTP/2 client) or "grpcio" (grpc's own client).
    grpc_client: Literal["h2", "grpcio"] = "h2"
    # TLS (--ssl-https-* / --ssl-grpc-*; an https:// URL alone means TLS with the defaults) and
    # the -H headers sent with every request, control calls included.
    tls: TlsSettings | None = None
    headers: tuple[Header, ...] = ()
    request_parameters: tuple[RequestParameter, ...] = ()
    input_tensor_format: TensorFormat = "binary"
    output_tensor_format: TensorFormat = "binary"
    grpc_compression: GrpcCompression = "none"
    # --streaming: requests go over one gRPC ModelStreamInfer stream per slot (decoupled models
    # need it, as perf_analyzer); gRPC only.
    streaming: bool = False
    # --bls-composing-models: (name, version or "") of the models a BLS model calls, whose
    # server statistics are collected with the model's (an ensemble's come from its config).
    bls_composing_models: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.protocol not in ("http", "grpc"):
            raise ConfigError(f"protocol: {self.protocol!r} is not one of 'http', 'grpc' (-i).")
        if not self.model:
            raise ConfigError("model: a model name is required (-m).")
        if self.model_version and not self.model_version.isdigit():
            raise ConfigError(
                f"model_version: {self.model_version!r} is not a version number (-x takes e.g. 1)."
            )
        if not self.url:
            raise ConfigError("url: a server URL is required (-u host:port).")
        check_scheme(self.url)
        if self.tls is not None and self.url.startswith(("http://", "grpc://")):
            raise ConfigError(
                f"url: {self.url!r} says plain text but TLS options were given: write "
                "https:// (or host:port) with --ssl-* options, or drop them."
            )
        for flag, fmt in (
            ("--input-tensor-format", self.input_tensor_format),
            ("--output-tensor-format", self.output_tensor_format),
        ):
            if fmt not in ("binary", "json"):
                raise ConfigError(f"{flag}: {fmt!r} is not 'binary' or 'json'.")
            if fmt == "json" and self.protocol == "grpc":
                raise ConfigError(
                    f"{flag} json is only valid with HTTP (-i http), as perf_analyzer: gRPC "
                    "always carries tensors as raw bytes."
                )
        if self.grpc_compression not in ("none", "gzip", "deflate"):
            raise ConfigError(
                f"--grpc-compression-algorithm: {self.grpc_compression!r} is not 'none', 'gzip' "
                "or 'deflate'."
            )
        if self.grpc_compression != "none" and self.protocol != "grpc":
            raise ConfigError(
                "--grpc-compression-algorithm is only supported with gRPC (-i grpc), as "
                "perf_analyzer."
            )
        if self.streaming and self.protocol != "grpc":
            raise ConfigError(
                "--streaming is only allowed with gRPC (-i grpc), as perf_analyzer: it sends "
                "the requests over gRPC's bidirectional ModelStreamInfer stream."
            )

    @property
    def secure(self) -> TlsSettings | None:
        """The TLS settings when the server is reached over TLS (`tls` given, or an https://
        URL, which then means TLS with the defaults: verify the server against the system's
        CAs), else None (plain TCP)."""
        if self.tls is None and self.url.startswith("https://"):
            return TlsSettings()
        return self.tls

    @property
    def host_port(self) -> tuple[str, int]:
        """The URL split into host and port (scheme and path dropped)."""
        u = self.url
        for prefix in ("http://", "https://", "grpc://"):
            if u.startswith(prefix):
                u = u[len(prefix) :]
        u = u.split("/", 1)[0]
        host, sep, port = u.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"url: {self.url!r} is not host:port (e.g. localhost:8000).")
        return host.strip("[]") or "localhost", int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceSpec:
    """How requests to a sequence (stateful) model are grouped into sequences, as perf_analyzer.

    Used only when the model's config has `sequence_batching` (or an ensemble step's model has).

    Args:
        length: --sequence-length, the base number of requests of a sequence.
        length_specified: the flag was given; with JSON input data the sequence length is then
            `length` (varied) instead of the data stream's step count.
        variation_pct: --sequence-length-variation; a sequence's length is drawn uniformly within
            +/- this percentage of `length` (at least 1).
        num_of_sequences: --num-of-sequences, the sequences in progress at once in request-rate
            mode (in concurrency mode each slot runs one sequence at a time).
        start_id: --sequence-id-range start (0 becomes 1, as perf_analyzer).
        id_range: how many ids from `start_id` are used before they cycle (end - start).
        serial: --serial-sequences; request-rate mode sends a sequence's next request only after
            its previous one was answered.
    """

    length: int = 20
    length_specified: bool = False
    variation_pct: float = 20.0
    num_of_sequences: int = 4
    start_id: int = 1
    id_range: int = (1 << 32) - 1
    serial: bool = False

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ConfigError(f"--sequence-length: {self.length} must be > 0.")
        if not (self.variation_pct >= 0 and math.isfinite(self.variation_pct)):
            raise ConfigError(
                f"--sequence-length-variation: {self.variation_pct} must be >= 0 (a percentage)."
            )
        if self.num_of_sequences < 1:
            raise ConfigError(f"--num-of-sequences: {self.num_of_sequences} must be > 0.")
        if self.start_id < 1 or self.id_range < 1:
            raise ConfigError(
                f"--sequence-id-range: start {self.start_id} and range {self.id_range} must be > 0."
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    """What each request carries, built once before measuring.

    Args:
        source: "random", "zero", a perf_analyzer JSON file, or a directory of one raw file per input.
        batch_size: client batch size (-b); prepended to the shape when the model batches.
        shapes: input name -> shape (without the batch dim) for variable (-1) dims (--shape).
        string_length: length of random BYTES elements (--string-length).
        string_data: a fixed string for BYTES inputs (--string-data).
        shared_memory: "none", "system" or "cuda" (--shared-memory): inputs and outputs in shared
            memory, as perf_analyzer.
        output_shared_memory_size: bytes of each output's region when the model's metadata does
            not fix its size (--output-shared-memory-size).
        seed: seed of the random generator for "random" data.
        sequence: how requests form sequences when the model is a sequence model.
    """

    source: str = "random"
    batch_size: int = 1
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    string_length: int = 128
    string_data: str | None = None
    shared_memory: SharedMemory = "none"
    output_shared_memory_size: int = DEFAULT_OUTPUT_SHM_BYTES
    seed: int = 0
    sequence: SequenceSpec = field(default_factory=SequenceSpec)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: {self.batch_size} must be at least 1 (-b).")
        if self.string_length < 0:
            raise ConfigError(f"string_length: {self.string_length} must be >= 0.")
        if self.shared_memory not in ("none", "system", "cuda"):
            raise ConfigError(
                f"shared_memory: {self.shared_memory!r} is not 'none', 'system' or 'cuda' "
                "(--shared-memory)."
            )
        if self.output_shared_memory_size < 1:
            raise ConfigError(
                f"output_shared_memory_size: {self.output_shared_memory_size} must be at least 1 "
                "byte (--output-shared-memory-size)."
            )
        for name, shape in self.shapes.items():
            if any(d < 0 for d in shape):
                raise ConfigError(f"shapes: --shape {name} has a negative dim {shape}.")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasureSpec:
    """How each level is measured (perf_analyzer's measurement flags).

    Args:
        mode: "time_windows" (windows of `interval_ms`) or "count_windows" (windows of at least
            `request_count_per_window` requests, and at least `min_window_ms`).
        interval_ms: -p, time-window length.
        request_count_per_window: --measurement-request-count.
        stability_pct: -s; the last `stability_windows` windows must agree within this percentage
            (max/min) on throughput and on the stabilizing latency.
        max_trials: -r; windows tried before the level is unstable.
        percentile: --percentile; stabilize and report on this latency percentile instead of the average.
        fixed_request_count: --request-count; measure exactly this many requests, no stability loop.
        warmup_request_count: --warmup-request-count; requests sent (and not measured) before windows.
        late_threshold_us: open loop; a send later than its schedule by more than this is "late".
    """

    mode: MeasurementMode = "time_windows"
    interval_ms: int = 5000
    request_count_per_window: int = 50
    stability_pct: float = 10.0
    max_trials: int = 10
    percentile: float | None = None
    fixed_request_count: int = 0
    warmup_request_count: int = 0
    stability_windows: int = 3
    min_window_ms: int = 1000
    late_threshold_us: int = 1000

    def __post_init__(self) -> None:
        if self.mode not in ("time_windows", "count_windows"):
            raise ConfigError(
                f"measurement_mode: {self.mode!r} is not 'time_windows' or 'count_windows'."
            )
        if self.interval_ms <= 0:
            raise ConfigError(f"measurement_interval: {self.interval_ms} ms must be > 0 (-p).")
        if self.request_count_per_window <= 0:
            raise ConfigError(
                f"measurement_request_count: {self.request_count_per_window} must be > 0."
            )
        if self.stability_pct <= 0:
            raise ConfigError(f"stability_percentage: {self.stability_pct} must be > 0 (-s).")
        if self.max_trials < self.stability_windows:
            raise ConfigError(
                f"max_trials: {self.max_trials} must be at least {self.stability_windows} (-r)."
            )
        if self.percentile is not None and not (0 < self.percentile < 100):
            raise ConfigError(f"percentile: {self.percentile} must be between 0 and 100.")
        if self.fixed_request_count < 0 or self.warmup_request_count < 0:
            raise ConfigError("request_count / warmup_request_count must be >= 0.")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyLoad:
    """Closed loop: `level` requests always in flight, for each level in order."""

    levels: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.levels or any(c < 1 for c in self.levels):
            raise ConfigError(f"concurrency_range: levels {self.levels} must be >= 1.")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRateLoad:
    """Open loop: sends on an absolute schedule at `rate` requests/s, for each rate in order.

    With `intervals_file` (one inter-request interval in µs per line, looped) the rates are
    ignored and one level is measured at the file's mean rate.
    """

    rates: tuple[float, ...]
    distribution: Distribution = "constant"
    intervals_file: str | None = None
    seed: int = 0
    # Most requests in flight (connections / streams opened on demand up to it). Above it a send
    # waits for the next free slot, is counted late and reported, and its corrected latency
    # (from the scheduled time) includes the wait: never a silent semaphore.
    max_in_flight: int = 2048
    # --fixed-schedule: send offsets (µs from the level start) replayed once, in order, from the
    # --input-data JSON's "timestamp"s; the rates then only label the level (the mean rate).
    fixed_schedule_us: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.distribution not in ("constant", "poisson"):
            raise ConfigError(
                f"request_distribution: {self.distribution!r} is not 'constant' or 'poisson'."
            )
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight: {self.max_in_flight} must be >= 1.")
        if self.intervals_file is None and (
            not self.rates or any(not (r > 0 and math.isfinite(r)) for r in self.rates)
        ):
            raise ConfigError(f"request_rate_range: rates {self.rates} must be > 0.")


LoadSpec = ConcurrencyLoad | RequestRateLoad


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSpec:
    """--collect-metrics: scrape the server's Prometheus endpoint during the windows."""

    url: str = "localhost:8002/metrics"
    interval_ms: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSpec:
    """A whole `perfkit run`: every level of `load`, with the sweep-level options.

    Args:
        latency_threshold_ms: -l; stop once the stabilizing latency reaches this (0 = none).
        binary_search: --binary-search over the range; `binary_search_step` is the precision.
        workers: --workers; generator processes sharing each level's load (merged latency data).
        metrics: --collect-metrics settings, or None.
        repeats: --repeats; each level measured this many times, interleaved (all levels, then
            all levels again), each repeat its own `Measurement` (`Measurement.repeat`).
    """

    target: TargetSpec
    inputs: InputSpec = field(default_factory=InputSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    load: LoadSpec
    latency_threshold_ms: float = 0.0
    binary_search: bool = False
    binary_search_step: float = 1.0
    workers: int = 1
    metrics: MetricsSpec | None = None
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"repeats: {self.repeats} must be >= 1 (--repeats).")
        if self.repeats > 1 and self.binary_search:
            raise ConfigError("repeats: --repeats cannot be combined with --binary-search.")
        if self.workers < 1:
            raise ConfigError(f"workers: {self.workers} must be >= 1.")
        if self.latency_threshold_ms < 0:
            raise ConfigError(f"latency_threshold: {self.latency_threshold_ms} must be >= 0 (-l).")
        if self.binary_search and self.latency_threshold_ms <= 0:
            raise ConfigError("binary_search: --binary-search needs a --latency-threshold (-l).")
        seq = self.inputs.sequence
        if isinstance(self.load, ConcurrencyLoad):
            most, what = max(self.load.levels), "maximum possible concurrency"
        else:
            most, what = seq.num_of_sequences, "maximum possible number of sequences"
        if seq.id_range < most:
            raise ConfigError(
                f"--sequence-id-range: the sequence id range specified ({seq.id_range} ids) is "
                f"smaller than the {what} ({most}); sequence id collision may occur. Widen the "
                "range."
            )


def parse_range(
    text: str, *, kind: Literal["int", "float"], flag: str
) -> tuple[float, float, float]:
    """Parse perf_analyzer's `start[:end[:step]]` into (start, end, step).

    A missing end equals start; a missing step is 1. `end == 0` (concurrency only) means
    "until the latency threshold" and is returned as 0.
    """
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
        raise ConfigError(f"{flag}: {text!r} is not start[:end[:step]] (e.g. 1:8:2).")
    try:
        vals = [int(p) if kind == "int" else float(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not start[:end[:step]] of {'integers' if kind == 'int' else 'numbers'}."
        ) from None
    start = float(vals[0])
    end = float(vals[1]) if len(vals) > 1 else start
    step = float(vals[2]) if len(vals) > 2 else 1.0
    if start <= 0 or step <= 0 or (end != 0 and end < start):
        raise ConfigError(
            f"{flag}: {text!r} needs start > 0, step > 0 and end >= start (or end 0 for 'until -l')."
        )
    return start, end, step


def expand_range(start: float, end: float, step: float, *, limit: float = 0) -> tuple[float, ...]:
    """The levels start, start+step, ... <= end (perf_analyzer's linear sweep).

    `end == 0` sweeps up to `limit` (used with a latency threshold); with no limit, just start.
    """
    stop = end if end > 0 else limit
    if stop <= 0:
        return (start,)
    out: list[float] = []
    k = 0
    while True:
        v = start + k * step
        if v > stop + 1e-9:
            break
        out.append(round(v, 9))
        k += 1
    return tuple(out)


def parse_request_parameters(
    values: Iterable[str], *, flag: str = "--request-parameter"
) -> tuple[RequestParameter, ...]:
    """perf_analyzer's `--request-parameter NAME:VALUE:TYPE` values (TYPE bool, int or string)
    -> typed (name, value) pairs; the value may itself hold ':' (split at the first and last)."""
    out: list[RequestParameter] = []
    for v in values:
        name, _, rest = v.partition(":")
        value, sep, kind = rest.rpartition(":")
        if not name or not sep:
            raise ConfigError(
                f"{flag} {v!r} is not NAME:VALUE:TYPE (e.g. {flag} max_tokens:256:int)."
            )
        typed: str | int | bool
        if kind == "int":
            try:
                typed = int(value)
            except ValueError:
                raise ConfigError(f"{flag} {v!r}: {value!r} is not an int.") from None
        elif kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"{flag} {v!r}: {value!r} is not a bool (true or false).")
            typed = value.lower() in ("true", "1")
        elif kind == "string":
            typed = value
        else:
            raise ConfigError(f"{flag} {v!r}: type {kind!r} is not one of bool, int, string.")
        out.append((name, typed))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{flag}: {', '.join(dup)} given more than once.")
    return tuple(out)


def parse_shapes(values: Iterable[str], *, flag: str = "--shape") -> dict[str, tuple[int, ...]]:
    """perf_analyzer's `--shape NAME:d1,d2,...` values -> {input name: dims} (`InputSpec.shapes`).

    `flag` names the option (or sweep-file key) in the `ConfigError` a malformed value raises.
    """
    out: dict[str, tuple[int, ...]] = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            shape = None
        if not sep or not name or shape is None:
            raise ConfigError(f"{flag} {v!r} is not NAME:d1,d2,... (e.g. {flag} INPUT0:3,224,224).")
        out[name] = shape
    return out
