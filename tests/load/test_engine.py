"""The engine against a real perfkit_server: closed and open loop, stability, server breakdown."""

from __future__ import annotations

import pytest
import tritonclient.http as th

from perfkit.errors import (
    ConfigError,
    MeasurementUnstable,
    ModelError,
    ServerError,
    ServerUnavailable,
)
from perfkit.load import measure_level, run_sweep
from perfkit.load.spec import (
    ConcurrencyLoad,
    InputSpec,
    MeasureSpec,
    RequestRateLoad,
    SweepSpec,
    TargetSpec,
)

# Loose stability: these tests are about windows and merging, not a busy CI machine's noise.
FAST = MeasureSpec(interval_ms=300, stability_pct=1000, max_trials=8)


def target(server, model="fast", protocol="http"):
    url = server.http_url if protocol == "http" else server.grpc_url
    return TargetSpec(url=url, protocol=protocol, model=model, connect_timeout_s=2)


def stats(server, model):
    c = th.InferenceServerClient(server.http_url)
    s = c.get_inference_statistics(model)["model_stats"][0]
    c.close()
    return s


@pytest.mark.parametrize(
    ("protocol", "loop"),
    [("http", "uvloop"), ("grpc", "uvloop"), ("http", "asyncio"), ("grpc", "asyncio")],
)
def test_fixed_count_and_breakdown_equals_stats_delta(load_server, protocol, loop, monkeypatch):
    monkeypatch.setenv("PERFKIT_LOOP", loop)  # uvloop by default; asyncio's loop as the fallback
    before = stats(load_server, "identity")
    m = measure_level(
        target(load_server, "identity", protocol), InputSpec(),
        MeasureSpec(fixed_request_count=200, warmup_request_count=20), "concurrency", 4,
    )  # fmt: skip
    after = stats(load_server, "identity")
    assert m.stable
    assert m.request_count == 200
    assert m.error_count == 0
    s = m.server
    assert s is not None
    assert s.inference_count == int(after["inference_count"]) - int(before["inference_count"]) - 20
    assert s.execution_count == int(after["execution_count"]) - int(before["execution_count"]) - 20

    # The breakdown is the statistics delta of the measured requests only (warm-up excluded).
    def delta(key):
        a, b = after["inference_stats"][key], before["inference_stats"][key]
        return int(a["ns"]) - int(b["ns"]), int(a["count"]) - int(b["count"])

    assert s.success_count == delta("success")[1] - 20
    assert s.queue_us > 0
    assert s.compute_infer_us > 0
    assert m.latency.count == 200
    assert m.latency.p99_us >= m.latency.p50_us > 0
    assert m.client_cpu_us_per_request > 0
    # HTTP writes the requests of a loop iteration together: their writes still count as send.
    assert 0 < m.client_send_us < m.latency.avg_us


def test_breakdown_exact_without_warmup(load_server):
    before = stats(load_server, "fast")
    m = measure_level(
        target(load_server), InputSpec(), MeasureSpec(fixed_request_count=100), "concurrency", 2
    )
    after = stats(load_server, "fast")
    s = m.server
    assert s is not None
    for key, got in (("queue", s.queue_us), ("compute_infer", s.compute_infer_us),
                     ("compute_input", s.compute_input_us), ("success", s.avg_request_us)):  # fmt: skip
        a, b = after["inference_stats"][key], before["inference_stats"][key]
        want = (int(a["ns"]) - int(b["ns"])) / (int(a["count"]) - int(b["count"])) / 1000
        assert got == pytest.approx(want)
    assert s.inference_count == 100


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_time_windows_stable(load_server, protocol):
    seen = []
    m = measure_level(target(load_server, protocol=protocol), InputSpec(batch_size=2), FAST,
                      "concurrency", 2, on_window=seen.append)  # fmt: skip
    assert m.stable
    assert seen
    assert len(m.windows) == len(seen) >= 3
    assert sum(w.merged for w in m.windows) == 3
    assert m.request_count == sum(w.request_count for w in m.windows if w.merged)
    assert m.throughput_infer_per_s == pytest.approx(2 * m.request_count / (m.duration_ns / 1e9))
    assert m.server is not None
    assert m.server.batch_executions.get(2, 0) > 0


def test_unstable_raises_with_measurement(load_server):
    spec = MeasureSpec(interval_ms=100, stability_pct=0.0001, max_trials=3)
    with pytest.raises(
        MeasurementUnstable, match="Failed to obtain stable measurement within 3"
    ) as ei:
        measure_level(target(load_server), InputSpec(), spec, "concurrency", 1)
    assert ei.value.measurement.stable is False  # type: ignore[attr-defined]


def test_open_loop_corrected_latency_shows_the_stall(load_server):
    # `stall`: 200 us per execution, every 200th execution stalls 30 ms. At 400 req/s with one
    # request in flight, a stall holds up the ~12 sends scheduled behind it: their service time
    # (from the actual send) stays small, their corrected latency (from the scheduled send) carries
    # the stall. The stalled requests themselves are 0.5% of all, below the service p99.
    load = RequestRateLoad(rates=(400.0,), max_in_flight=1)
    m = measure_level(target(load_server, "stall"), InputSpec(),
                      MeasureSpec(fixed_request_count=1000), load, 400)  # fmt: skip
    c = m.corrected_latency
    assert c is not None
    assert c.p99_us - m.latency.p99_us >= 15_000  # about the 30 ms stall
    assert c.max_us >= 25_000
    assert m.late_send_count >= 10
    assert any("not able to keep up" in w for w in m.warnings)


def test_open_loop_unbounded_sends_on_time(load_server):
    # With connections opened on demand, sends stay on schedule.
    m = measure_level(target(load_server, "fast"), InputSpec(),
                      MeasureSpec(fixed_request_count=300), "request_rate", 300)  # fmt: skip
    assert m.send_rate_rps == pytest.approx(300, rel=0.5)  # loose: CI machines are shared
    assert m.corrected_latency is not None
    assert m.corrected_latency.p50_us >= m.latency.p50_us


def test_open_loop_behind_schedule_counts_late_sends(load_server):
    # `slow` takes 5 ms per execution with one instance: at 1000 req/s with at most 4 in
    # flight the generator falls behind: late sends are counted and reported, never hidden.
    load = RequestRateLoad(rates=(1000.0,), max_in_flight=4)
    m = measure_level(
        target(load_server, "slow"), InputSpec(), MeasureSpec(fixed_request_count=200), load, 1000
    )
    assert m.late_send_count > 100
    assert any("not able to keep up" in w and "--max-in-flight reached" in w for w in m.warnings)
    assert not m.generator_saturated  # the cap, not the generator, held the sends back
    assert m.corrected_latency is not None
    assert m.corrected_latency.p99_us > 5 * m.latency.p99_us


def test_sweep_levels_and_threshold(load_server):
    spec = SweepSpec(target=target(load_server, "slow"), measure=MeasureSpec(fixed_request_count=30),
                     load=ConcurrencyLoad(levels=(1, 4, 8)), latency_threshold_ms=15)  # fmt: skip
    r = run_sweep(spec)
    assert r.status == "ok"
    assert [m.level for m in r.measurements] == [1.0, 4.0]  # 4 in flight on 5 ms -> ~20 ms > 15 ms
    assert any("went over the set limit of 15 msec" in x for x in r.messages)


def test_binary_search(load_server):
    spec = SweepSpec(target=target(load_server, "slow"), measure=MeasureSpec(fixed_request_count=30),
                     load=ConcurrencyLoad(levels=(1, 8)), latency_threshold_ms=15, binary_search=True)  # fmt: skip
    r = run_sweep(spec)
    assert [m.level for m in r.measurements][:2] == [1.0, 8.0]
    assert len(r.measurements) >= 3


def test_bad_targets(load_server):
    with pytest.raises(ModelError, match=r"'nope'.*not available"):
        measure_level(target(load_server, "nope"), InputSpec(), FAST, "concurrency", 1)
    with pytest.raises(ModelError, match="--shape INPUT0:N"):
        measure_level(target(load_server, "varid"), InputSpec(), FAST, "concurrency", 1)
    with pytest.raises(ModelError, match="does not batch"):
        measure_level(
            target(load_server, "nobatch"), InputSpec(batch_size=2), FAST, "concurrency", 1
        )
    with pytest.raises(ServerUnavailable, match=r"127\.0\.0\.1:9"):
        measure_level(
            TargetSpec(url="127.0.0.1:9", model="x", connect_timeout_s=0.3),
            InputSpec(),
            FAST,
            "concurrency",
            1,
        )


def test_variable_shape(load_server):
    m = measure_level(target(load_server, "varid"), InputSpec(shapes={"INPUT0": (7,)}),
                      MeasureSpec(fixed_request_count=20), "concurrency", 2)  # fmt: skip
    assert m.request_count == 20
    assert m.error_count == 0


def test_shared_memory_refused_cleanly(load_server):
    # A server without --allow-client-shm=true: its own message says how to enable it
    # (tests/cli_run/test_shared_memory_cli.py covers success).
    with pytest.raises(ServerError, match="--allow-client-shm=true"):
        measure_level(target(load_server), InputSpec(shared_memory="system"),
                      MeasureSpec(fixed_request_count=5), "concurrency", 1)  # fmt: skip


@pytest.mark.parametrize("client", ["h2", "grpcio"])
def test_grpc_large_tensors_flow_control(load_server, client):
    # 800 KB requests and responses: more than HTTP/2's default 64 KB windows and 16 KB frames.
    t = TargetSpec(url=load_server.grpc_url, protocol="grpc", model="big", grpc_client=client)
    m = measure_level(
        t, InputSpec(batch_size=2), MeasureSpec(fixed_request_count=30), "concurrency", 3
    )
    assert m.request_count == 30
    assert m.error_count == 0


async def test_h2_error_responses_are_errors(load_server):
    # A ModelInferRequest for a model that is not there: the server answers trailers-only with
    # an error status; the lean client must count an error, never a success.
    import tritonclient.grpc as tg

    from perfkit.load.driver import LevelDriver, LevelPlan
    from perfkit.load.transports.h2 import H2Pool

    req = tg.service_pb2.ModelInferRequest(model_name="nope").SerializeToString()
    host, port = load_server.grpc_url.split(":")
    pool = H2Pool(host, int(port), [req], closed_loop=True)
    drv = LevelDriver(pool, LevelPlan(closed_loop=True, concurrency=2), url=load_server.grpc_url)
    await drv.open()
    try:
        w = await drv.run_fixed(10)
    finally:
        await drv.close()
    assert w.count == 0
    assert w.error_count == 10
    assert "gRPC call failed" in pool.timings.err_msgs[0]


@pytest.mark.parametrize("load", [ConcurrencyLoad(levels=(4,)), RequestRateLoad(rates=(300.0,))])
def test_workers_merge_windows(load_server, load):
    spec = SweepSpec(target=target(load_server), measure=FAST, load=load, workers=2)
    r = run_sweep(spec)
    assert r.status == "ok", r.messages
    (m,) = r.measurements
    assert m.stable
    assert m.request_count == sum(w.request_count for w in m.windows if w.merged)
    assert any("2 load-generator processes" in w for w in m.warnings)
    assert m.server is not None
    # Statistics are read at the window boundaries by the parent: close, not exact.
    assert m.server.inference_count == pytest.approx(m.request_count, rel=0.1)
    if isinstance(load, RequestRateLoad):
        assert m.corrected_latency is not None
        assert m.corrected_latency.count == m.request_count


def test_workers_fixed_count(load_server):
    spec = SweepSpec(target=target(load_server), measure=MeasureSpec(fixed_request_count=101),
                     load=ConcurrencyLoad(levels=(3, 5)), workers=2)  # fmt: skip
    r = run_sweep(spec)
    assert [m.request_count for m in r.measurements] == [101, 101]
    assert [m.server.inference_count for m in r.measurements if m.server] == [101, 101]


def test_open_loop_warmup_then_on_schedule(load_server):
    # After warm-up the schedule resumes at once (no idle gap of the warm-up's length).
    m = measure_level(target(load_server), InputSpec(),
                      MeasureSpec(fixed_request_count=100, warmup_request_count=100), "request_rate", 200)  # fmt: skip
    assert m.send_rate_rps == pytest.approx(200, rel=0.4)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_inputs(load_server, protocol):
    for inputs in (InputSpec(string_length=20), InputSpec(string_data="hello", batch_size=2)):
        m = measure_level(target(load_server, "strid", protocol), inputs,
                          MeasureSpec(fixed_request_count=20), "concurrency", 2)  # fmt: skip
        assert m.request_count == 20
        assert m.error_count == 0


def test_input_data_directory(load_server, tmp_path):
    import numpy as np

    (tmp_path / "INPUT0").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    m = measure_level(target(load_server), InputSpec(source=str(tmp_path)),
                      MeasureSpec(fixed_request_count=10), "concurrency", 1)  # fmt: skip
    assert m.request_count == 10
    (tmp_path / "INPUT0").write_bytes(b"\0" * 12)
    with pytest.raises(ConfigError, match="holds 3 FP32 values; input INPUT0 needs 16"):
        measure_level(target(load_server), InputSpec(source=str(tmp_path)),
                      MeasureSpec(fixed_request_count=10), "concurrency", 1)  # fmt: skip
