"""`perfkit run`'s request flags of perf_analyzer (issue #12): `--request-parameter`,
`--input-tensor-format` / `--output-tensor-format`, `--grpc-compression-algorithm`,
`--fixed-schedule` (replay the `--input-data` JSON's timestamps), and `--sync` / `--max-threads`,
which are refused with the reason (exit 3), never ignored; and its flags for stateful models and
pipelines (issue #13): the sequence flags, `--streaming`, `--bls-composing-models`.

`request_target` maps them onto `TargetSpec`; `sequence_spec` onto `SequenceSpec`;
`fixed_schedule_load` onto a `RequestRateLoad`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from perfkit.errors import ConfigError
from perfkit.load import spec as S

PA_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--sync", is_flag=True, help="Refused (exit 3): perfkit's generator is asynchronous."
    ),
    click.option(
        "--max-threads",
        default=None,
        type=int,
        help="Refused (exit 3): no client threads; see --workers.",
    ),
    click.option(
        "--request-parameter",
        multiple=True,
        help="NAME:VALUE:TYPE (bool|int|string) sent with every request (repeatable).",
    ),
    click.option(
        "--input-tensor-format",
        type=click.Choice(["binary", "json"]),
        default="binary",
        show_default=True,
        help="HTTP request tensors: binary extension or JSON.",
    ),
    click.option(
        "--output-tensor-format",
        type=click.Choice(["binary", "json"]),
        default="binary",
        show_default=True,
        help="HTTP response tensors: binary extension or JSON.",
    ),
    click.option(
        "--grpc-compression-algorithm",
        type=click.Choice(["none", "gzip", "deflate"]),
        default="none",
        show_default=True,
        help="gRPC: compress request messages.",
    ),
    click.option(
        "--fixed-schedule",
        is_flag=True,
        help="Replay the --input-data JSON's timestamps (ms) once, open loop.",
    ),
    click.option(
        "--sequence-length",
        default=None,
        type=int,
        help="Sequence models: base number of requests of a sequence (default 20; with JSON "
        "input data, the length of its stream).",
    ),
    click.option(
        "--sequence-length-variation",
        default=20.0,
        show_default=True,
        type=float,
        help="Sequence models: +/- percentage by which a sequence's length varies.",
    ),
    click.option(
        "--num-of-sequences",
        default=4,
        show_default=True,
        type=int,
        help="Sequence models, request-rate mode: sequences in progress at once (in concurrency "
        "mode each concurrent slot runs one sequence).",
    ),
    click.option(
        "--sequence-id-range",
        default=None,
        help="start[:end] of the sequence ids (end excluded; default 1, unbounded).",
    ),
    click.option(
        "--serial-sequences",
        is_flag=True,
        help="Request-rate mode: at most one request in flight per sequence.",
    ),
    click.option(
        "--streaming",
        is_flag=True,
        help="gRPC bidirectional streaming (ModelStreamInfer); needed for decoupled models.",
    ),
    click.option(
        "--bls-composing-models",
        default=None,
        help="name[:version],... of the models a BLS model calls (their server statistics are "
        "shown with the model's).",
    ),
]


def refuse_sync(o: Mapping[str, Any]) -> None:
    """--sync / --max-threads: perf_analyzer's synchronous client threads. perfkit's generator
    is asynchronous (one event loop per --workers process), so they are refused, not ignored."""
    if o["sync"] or o["max_threads"] is not None:
        flag = "--sync" if o["sync"] else "--max-threads"
        raise ConfigError(
            f"{flag}: perfkit has no synchronous client threads. Its generator is asynchronous: "
            "--concurrency-range N keeps exactly N requests in flight, each sent when the "
            "previous answer on its slot arrives, which is the closed loop perf_analyzer's --sync "
            "threads measure; more generator processes are --workers N. Drop the flag."
        )


def request_target(o: Mapping[str, Any]) -> dict[str, Any]:
    """`TargetSpec`'s request settings from the flags (validated by `TargetSpec`)."""
    return {
        "request_parameters": S.parse_request_parameters(o["request_parameter"]),
        "input_tensor_format": o["input_tensor_format"],
        "output_tensor_format": o["output_tensor_format"],
        "grpc_compression": o["grpc_compression_algorithm"],
        "streaming": o["streaming"],
        "bls_composing_models": parse_bls_models(o["bls_composing_models"]),
    }


def parse_bls_models(text: str | None) -> tuple[tuple[str, str], ...]:
    """--bls-composing-models `a:3,b` -> (("a", "3"), ("b", "")) (spaces ignored)."""
    if not text:
        return ()
    out: list[tuple[str, str]] = []
    for item in "".join(text.split()).split(","):
        name, _, version = item.partition(":")
        if not name or (version and not version.isdigit()):
            raise ConfigError(
                f"--bls-composing-models: {item!r} is not name[:version] (e.g. "
                "--bls-composing-models preprocess:1,classifier)."
            )
        out.append((name, version))
    return tuple(out)


def sequence_spec(o: Mapping[str, Any]) -> S.SequenceSpec:
    """The sequence flags (used when the model turns out to be a sequence model)."""
    from perfkit.load import parse_sequence_id_range

    start, id_range = (
        parse_sequence_id_range(o["sequence_id_range"])
        if o["sequence_id_range"]
        else (1, (1 << 32) - 1)
    )
    return S.SequenceSpec(
        length=o["sequence_length"] if o["sequence_length"] is not None else 20,
        length_specified=o["sequence_length"] is not None,
        variation_pct=o["sequence_length_variation"],
        num_of_sequences=o["num_of_sequences"],
        start_id=start,
        id_range=id_range,
        serial=o["serial_sequences"],
    )


def fixed_schedule(o: Mapping[str, Any]) -> tuple[int, ...]:
    """--fixed-schedule: the send offsets (µs) from the --input-data JSON's timestamps."""
    if not o["fixed_schedule"]:
        return ()
    from perfkit.load import read_timestamps

    src = str(o["input_data"])
    if src in ("random", "zero") or not src.lower().endswith(".json"):
        raise ConfigError(
            '--fixed-schedule needs --input-data FILE.json whose "data" entries carry a '
            '"timestamp" (milliseconds from the start).'
        )
    for flag, given in (
        ("--concurrency-range", o["concurrency_range"]),
        ("--request-rate-range", o["request_rate_range"]),
        ("--request-intervals", o["request_intervals"]),
        ("--request-count", o["request_count"]),
        ("--warmup-request-count", o["warmup_request_count"]),
        ("--binary-search", o["binary_search"]),
        ("--workers", o["workers"] != 1),
    ):
        if given:
            raise ConfigError(
                f"--fixed-schedule replays the timestamps once, one request each, in one "
                f"process: {flag} cannot be combined with it."
            )
    return read_timestamps(src)


def fixed_schedule_load(o: Mapping[str, Any]) -> S.RequestRateLoad | None:
    """--fixed-schedule's one level, labelled by the trace's mean rate; None without the flag."""
    schedule = fixed_schedule(o)
    if not schedule:
        return None
    span_s = (schedule[-1] - schedule[0]) / 1e6
    rate = len(schedule) / span_s if span_s > 0 else float(len(schedule))
    return S.RequestRateLoad(
        rates=(round(rate, 3),), max_in_flight=o["max_in_flight"], fixed_schedule_us=schedule
    )
