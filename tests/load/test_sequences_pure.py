"""Sequence scheduling without a server (`perfkit.load.sequences`, the flag parsing, the wire
templates): lengths with variation, id ranges, FIFO (concurrency and --serial-sequences) and
random (request-rate) status choice, the JSON streams, the requests' sequence parameters."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from perfkit.cli.run_pa import parse_bls_models
from perfkit.errors import ConfigError
from perfkit.load.composing import model_shape
from perfkit.load.sequences import (
    SequenceFeed,
    SequenceIds,
    parse_sequence_id_range,
    varied_length,
)
from perfkit.load.spec import SequenceSpec, TargetSpec
from perfkit.load.wire import GrpcSequenceRequests, HttpSequenceRequests, stream_response


def feed(n: int, *, fifo: bool, **spec_kw: object) -> SequenceFeed:
    spec = SequenceSpec(**spec_kw)  # type: ignore[arg-type]
    return SequenceFeed(
        spec,
        SequenceIds(spec),
        lambda i, sid, s, e: f"{i},{sid},{s:d},{e:d}".encode(),
        n,
        fifo=fifo,
    )


def decode(req: bytes) -> tuple[int, int, bool, bool]:
    i, sid, s, e = req.decode().split(",")
    return int(i), int(sid), s == "1", e == "1"


def test_varied_length_bounds():
    rng = random.Random(1)
    lengths = [varied_length(20, 20.0, rng) for _ in range(2000)]
    assert min(lengths) >= 16
    assert max(lengths) <= 24
    assert len(set(lengths)) > 4
    assert {varied_length(20, 0.0, rng) for _ in range(50)} == {20}
    # Never below 1, however wide the variation.
    assert min(varied_length(2, 500.0, rng) for _ in range(500)) == 1


def test_fifo_feed_keeps_one_request_per_sequence_in_flight():
    f = feed(3, fifo=True, length=4, variation_pct=0.0)
    in_flight: set[int] = set()
    tickets = []
    for _ in range(3):
        req, t = f.take()
        sid = decode(req)[1]
        assert sid not in in_flight
        in_flight.add(sid)
        tickets.append(t)
    assert not f.ready()
    assert in_flight == {1, 2, 3}
    # Answer the middle one: its status is the one taken next (FIFO of idle statuses).
    f.give_back(tickets[1])
    assert f.ready()
    req, _ = f.take()
    assert decode(req)[1] == 2


def test_sequences_start_and_end_with_their_length():
    f = feed(1, fifo=True, length=5, variation_pct=0.0)
    seen = []
    for _ in range(15):
        req, t = f.take()
        seen.append(decode(req))
        assert f.give_back(t) == (decode(req)[1], decode(req)[3])
    starts = [k for k, r in enumerate(seen) if r[2]]
    ends = [k for k, r in enumerate(seen) if r[3]]
    assert starts == [0, 5, 10]
    assert ends == [4, 9, 14]
    assert [r[1] for r in seen] == [1] * 5 + [2] * 5 + [3] * 5


def test_id_range_cycles_and_skips_ids_in_use():
    start, rng = parse_sequence_id_range("10:13")
    assert (start, rng) == (10, 3)
    f = feed(2, fifo=True, length=1, start_id=start, id_range=rng)
    ids = []
    for _ in range(9):
        req, t = f.take()
        ids.append(decode(req)[1])
        f.give_back(t)
    assert set(ids) == {10, 11, 12}
    assert ids[:3] == [10, 11, 12]
    # Two sequences in progress over a range of 2: never the same id at once.
    f = feed(2, fifo=True, length=3, variation_pct=0.0, start_id=1, id_range=2)
    live: set[int] = set()
    for _ in range(30):
        req, t = f.take()
        _, sid, s, e = decode(req)
        if s:
            assert sid not in live
            live.add(sid)
        if e:
            live.remove(sid)
        f.give_back(t)


def test_random_feed_spreads_sends_over_the_sequences():
    f = feed(4, fifo=False, length=1000)
    counts = Counter(decode(f.take()[0])[1] for _ in range(400))
    assert sorted(counts) == [1, 2, 3, 4]
    assert min(counts.values()) > 50


def test_close_all_ends_every_sequence_in_progress():
    f = feed(3, fifo=True, length=10, variation_pct=0.0)
    tickets = [f.take()[1] for _ in range(2)]  # two sequences started, one status untouched
    for t in tickets:
        f.give_back(t)
    assert f.close_all() == 2
    ends = []
    for _ in range(2):
        req, t = f.take()
        ends.append(decode(req))
        assert f.give_back(t) == (decode(req)[1], True)
    assert {r[1] for r in ends} == {1, 2}
    assert all(r[3] and not r[2] for r in ends)
    assert f.close_all() == 0


def test_json_streams_size_the_sequences():
    spec = SequenceSpec()
    f = SequenceFeed(
        spec, SequenceIds(spec), lambda i, sid, s, e: json.dumps([i, sid, s, e]).encode(), 1,
        fifo=True, streams=[(0, 1, 2), (3, 4)], json_data=True,
    )  # fmt: skip
    seqs: dict[int, list[int]] = {}
    for _ in range(60):
        req, t = f.take()
        i, sid, _, _ = json.loads(req)
        seqs.setdefault(sid, []).append(i)
        f.give_back(t)
    assert {tuple(v) for v in seqs.values() if len(v) in (2, 3)} <= {(0, 1, 2), (3, 4)}
    assert {tuple(v) for k, v in seqs.items() if k < max(seqs)} == {(0, 1, 2), (3, 4)}


def test_workers_share_the_id_range():
    spec = SequenceSpec(start_id=1, id_range=10)
    a, b = SequenceIds(spec, 0, 2), SequenceIds(spec, 1, 2)
    ids_a = {a.next() for _ in range(20)}
    ids_b = {b.next() for _ in range(20)}
    assert ids_a == {1, 2, 3, 4, 5}
    assert ids_b == {6, 7, 8, 9, 10}
    with pytest.raises(ConfigError, match="--workers"):
        SequenceIds(SequenceSpec(id_range=1), 0, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [("5:5", "greater than 'start'"), ("x", "does not match"), ("1:2:3", "does not match"),
     ("-1:4", ">= 0")],
)  # fmt: skip
def test_sequence_id_range_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_sequence_id_range(text)


def test_sequence_id_range_defaults():
    assert parse_sequence_id_range("0") == (1, (1 << 32) - 1)
    assert parse_sequence_id_range("7") == (7, (1 << 32) - 1)


def test_spec_validation():
    with pytest.raises(ConfigError, match="--sequence-length"):
        SequenceSpec(length=0)
    with pytest.raises(ConfigError, match="--sequence-length-variation"):
        SequenceSpec(variation_pct=-1)
    with pytest.raises(ConfigError, match="--num-of-sequences"):
        SequenceSpec(num_of_sequences=0)
    with pytest.raises(ConfigError, match="--streaming"):
        TargetSpec(url="localhost:8000", model="m", streaming=True)


def test_bls_models():
    assert parse_bls_models(" a:3 , b") == (("a", "3"), ("b", ""))
    assert parse_bls_models(None) == ()
    with pytest.raises(ConfigError, match="name\\[:version\\]"):
        parse_bls_models("a:x")


TARGET = TargetSpec(
    url="localhost:8001", protocol="grpc", model="m", request_parameters=(("k", 3),)
)


def test_grpc_requests_carry_the_sequence_parameters():
    reqs = GrpcSequenceRequests.build(TARGET, [{"X": np.zeros(2, np.float32)}])
    msg = service_pb2.ModelInferRequest.FromString(reqs.encode(0, 123456789012, True, False))
    assert msg.parameters["sequence_id"].int64_param == 123456789012
    assert msg.parameters["sequence_start"].bool_param is True
    assert msg.parameters["sequence_end"].bool_param is False
    assert msg.parameters["k"].int64_param == 3
    assert msg.raw_input_contents[0] == bytes(8)


@pytest.mark.parametrize("fmt", ["binary", "json"])
def test_http_requests_carry_the_sequence_parameters(fmt):
    target = TargetSpec(url="localhost:8000", model="m", input_tensor_format=fmt)
    reqs = HttpSequenceRequests(
        target, [{"X": np.arange(2, dtype=np.float32)}], ["Y"], extra_headers=b"A: b\r\n"
    )
    raw = reqs.encode(0, 42, False, True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[1] == "A: b"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert int(fields["Content-Length"]) == len(body)
    size = int(fields.get("Inference-Header-Content-Length", len(body)))
    doc = json.loads(body[:size])
    assert doc["parameters"]["sequence_id"] == 42
    assert doc["parameters"]["sequence_start"] is False
    assert doc["parameters"]["sequence_end"] is True


def test_stream_response_reader():
    r = service_pb2.ModelStreamInferResponse()
    r.infer_response.id = "7"
    r.infer_response.parameters["triton_final_response"].bool_param = False
    r.infer_response.raw_output_contents.append(b"x" * 100)
    assert stream_response(r.SerializeToString()) == ("", "7", False, True)
    empty = service_pb2.ModelStreamInferResponse()
    empty.infer_response.id = "8"
    empty.infer_response.parameters["triton_final_response"].bool_param = True
    assert stream_response(empty.SerializeToString()) == ("", "8", True, False)


def test_model_shape_from_configs():
    configs = {
        ("a", ""): {"name": "a", "sequence_batching": {}},
        ("b", "2"): {"name": "b", "response_cache": {"enable": True}},
        ("inner", ""): {
            "name": "inner", "platform": "ensemble",
            "ensemble_scheduling": {"step": [{"model_name": "a", "model_version": -1}]},
        },
    }  # fmt: skip
    top = {
        "name": "top", "platform": "ensemble",
        "ensemble_scheduling": {"step": [
            {"model_name": "inner", "model_version": -1}, {"model_name": "b", "model_version": 2},
        ]},
    }  # fmt: skip
    shape = model_shape("top", top, lambda n, v: configs[(n, v)])
    assert shape.sequence
    assert shape.cache_enabled
    assert not shape.decoupled
    assert shape.composing == {"top": (("b", "2"), ("inner", "")), "inner": (("a", ""),)}
    plain = model_shape("p", {"model_transaction_policy": {"decoupled": True}}, lambda n, v: {})
    assert plain.decoupled
    assert not plain.sequence
    bls = model_shape("p", {}, lambda n, v: configs[(n, v)], [("a", "")])
    assert bls.composing == {"p": (("a", ""),)}
    assert bls.sequence


def _stats(n: int, *, queue: int, compute: int, hits: int = 0, cumm: int = 0) -> dict[str, object]:
    """A `sum_model_stats` snapshot: n requests, per-request ns."""
    computed = n - hits
    out: dict[str, object] = {"inference_count": computed, "execution_count": computed, "batch": {}}
    for key, count, ns in (
        ("success", n, cumm or (queue + compute) * n), ("fail", 0, 0), ("queue", n, queue * n),
        ("compute_input", computed, 0), ("compute_infer", computed, compute * computed),
        ("compute_output", computed, 0), ("cache_hit", hits, 1000 * hits),
        ("cache_miss", computed, 2000 * computed),
    ):  # fmt: skip
        out[f"{key}_count"] = count
        out[f"{key}_ns"] = ns
    return out


def test_composing_breakdown_and_its_printing():
    from perfkit.load.breakdown import breakdown
    from perfkit.report.pa_server import server_lines

    zero = _stats(0, queue=0, compute=0)
    first = _stats(10, queue=5000, compute=100_000)
    after = {
        **_stats(10, queue=0, compute=0, cumm=1_200_000),
        "composing": {"first|": {**first, "versions": {"1": first}}},
    }
    before = {**zero, "composing": {"first|": {**zero, "versions": {}}}}
    s = breakdown(before, after, client_wait_us=200.0)
    assert s is not None
    (comp,) = s.composing
    assert (comp.name, comp.version) == ("first", "1")
    assert comp.server.queue_us == 5.0
    assert comp.server.compute_infer_us == 100.0
    lines = server_lines(s)
    assert lines[3] == (
        "    Avg request latency: 120 usec (overhead 15 usec + queue 5 usec + compute 100 usec)"
    )
    assert lines[5:7] == ["  Composing models: ", "  first, version: 1"]
    assert lines[7] == "      Inference count: 10"


def test_cache_breakdown_lines():
    from perfkit.load.breakdown import breakdown
    from perfkit.report.pa_server import server_lines

    zero = _stats(0, queue=0, compute=0)
    after = _stats(10, queue=1000, compute=50_000, hits=8, cumm=20_000)
    s = breakdown(zero, after, client_wait_us=100.0, cache_enabled=True)
    assert s is not None
    assert (s.cache_hit_count, s.cache_miss_count) == (8, 2)
    assert (s.cache_hit_us, s.cache_miss_us) == (1.0, 2.0)
    lines = server_lines(s)
    assert lines[2:4] == ["    Cache hit count: 8", "    Cache miss count: 2"]
    # perf_analyzer indents these twice its level (ident + ident + two spaces).
    assert lines[-2] == "      Average Cache Hit Latency: 1 usec"
    assert lines[-1].startswith(
        "      Average Cache Miss Latency: 52 usec (cache lookup/insertion 2"
    )


def test_id_range_smaller_than_the_load_is_refused():
    from perfkit.load.spec import ConcurrencyLoad, InputSpec, RequestRateLoad, SweepSpec

    target = TargetSpec(url="localhost:8000", model="m")
    narrow = InputSpec(sequence=SequenceSpec(start_id=1, id_range=4))
    with pytest.raises(ConfigError, match="maximum possible concurrency \\(8\\)"):
        SweepSpec(target=target, inputs=narrow, load=ConcurrencyLoad(levels=(2, 8)))
    with pytest.raises(ConfigError, match="maximum possible number of sequences"):
        SweepSpec(
            target=target,
            inputs=InputSpec(sequence=SequenceSpec(id_range=4, num_of_sequences=5)),
            load=RequestRateLoad(rates=(10.0,)),
        )
    SweepSpec(target=target, inputs=narrow, load=ConcurrencyLoad(levels=(4,)))
