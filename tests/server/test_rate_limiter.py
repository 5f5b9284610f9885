"""The rate limiter (`--rate-limit=execution_count`, instance_group rate_limiter resources/priority).

Executions are observed through perfkit_identity's span log (start and end of every execution on
the monotonic clock) and its gate (an execution held until the test lets it go): the assertions
are about overlap and order, never about speed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from perfkit_server.__main__ import main
from perfkit_server.rate_limiter import RateLimiter, parse_resource
from tritonclient.utils import InferenceServerException

from tests.server.helpers import HOOK_ENV, Gate, fp32_input, span_log, spans, stats
from tests.server.models import write_config


def limited(
    repo: Path,
    name: str,
    *,
    resources: str = '{ name: "R" global: true count: 1 }',
    instances: int = 2,
    delay_us: int = 0,
    priority: int = 0,
) -> None:
    """perfkit_identity INPUT0 -> OUTPUT0 (FP32 [16]) whose instances need `resources`."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    prio = f" priority: {priority}" if priority else ""
    write_config(
        repo,
        name,
        f"""name: "{name}"
backend: "perfkit_identity"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU
  rate_limiter {{ resources [ {resources} ]{prio} }} }} ]
parameters {{ key: "execute_delay_us" value: {{ string_value: "{delay_us}" }} }}
""",
    )


def most_at_once(rows: list[tuple[int, int, int]]) -> int:
    """The largest number of executions running at the same moment."""
    events = sorted([(start, 1) for start, _, _ in rows] + [(end, -1) for _, end, _ in rows])
    running = peak = 0
    for _, step in events:  # an end sorts before a start at the same ns
        running += step
        peak = max(peak, running)
    return peak


async def _load(url: str, models: list[str], n: int) -> None:
    client = grpcaio.InferenceServerClient(url)
    try:
        x = np.zeros((1, 16), dtype=np.float32)
        await asyncio.gather(
            *(client.infer(m, [fp32_input(grpcaio, "INPUT0", x)]) for _ in range(n) for m in models)
        )
    finally:
        await client.close()


@pytest.mark.parametrize(("count", "flags"), [(1, []), (2, ["--rate-limit-resource=R:2"])])
async def test_models_sharing_a_resource_never_run_beyond_its_count(
    perfkit_server, tmp_path, monkeypatch, count, flags
):
    """Acceptance 5: two models (two instances each) share one global resource."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    for name in ("a", "b"):
        limited(repo, name, delay_us=2000)
    server = perfkit_server(repo, "--rate-limit=execution_count", *flags)
    await _load(server.grpc_url, ["a", "b"], 12)
    rows = spans(span_log(tmp_path, "a")) + spans(span_log(tmp_path, "b"))
    assert len(rows) == sum(stats(server.http_url, m)["execution_count"] for m in ("a", "b"))
    assert most_at_once(rows) <= count


async def _held_while(server, gate: Gate, model: str, other: str):
    """Start one request on the gated `model`; once it executes, send one to `other`."""
    client = grpcaio.InferenceServerClient(server.grpc_url)
    x = np.zeros((1, 16), dtype=np.float32)
    held = asyncio.ensure_future(client.infer(model, [fp32_input(grpcaio, "INPUT0", x)]))
    await gate.started()
    second = asyncio.ensure_future(client.infer(other, [fp32_input(grpcaio, "INPUT0", x)]))
    return client, held, second


async def test_an_execution_waits_for_the_resource_another_model_holds(
    perfkit_server, tmp_path, monkeypatch
):
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    for name in ("a", "b"):
        limited(repo, name, instances=1)
    with Gate(tmp_path, "a") as gate:
        server = perfkit_server(repo, "--rate-limit=execution_count", "--log-verbose=1")
        client, held, second = await _held_while(server, gate, "a", "b")
        try:
            # b's instance is idle but the resource is a's: b waits (the limiter says so).
            deadline = time.monotonic() + 30
            while "b v1 instance 0 waits for rate-limiter resources" not in server.log():
                assert time.monotonic() < deadline, "b never waited for the resource"
                await asyncio.sleep(0.02)
            assert not second.done()
            gate.release()
            await asyncio.gather(held, second)
        finally:
            await client.close()
    (a_start, a_end, _), (b_start, _, _) = (
        spans(span_log(tmp_path, "a"))[0],
        spans(span_log(tmp_path, "b"))[0],
    )
    assert b_start >= a_end > a_start


async def test_without_rate_limiting_the_config_has_no_effect(
    perfkit_server, tmp_path, monkeypatch
):
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    for name in ("a", "b"):
        limited(repo, name, instances=1)
    with Gate(tmp_path, "a") as gate:
        server = perfkit_server(repo)  # --rate-limit=off, Triton's default
        client, held, second = await _held_while(server, gate, "a", "b")
        try:
            await asyncio.wait_for(second, 30)  # b runs while a holds "the" resource
            gate.release()
            await held
        finally:
            await client.close()
    assert "instance_group[0].rate_limiter has no effect" in server.log()


def test_priority_weights_the_share_of_executions():
    """Under contention, priority 2 gets half the turns of priority 1 (exec_count x priority)."""
    from tritonclient.grpc import model_config_pb2 as mc

    def config(priority: int) -> mc.ModelConfig:
        resource = mc.ModelRateLimiter.Resource(name="R", count=1)
        limiter = mc.ModelRateLimiter(resources=[resource], priority=priority)
        return mc.ModelConfig(instance_group=[mc.ModelInstanceGroup(count=3, rate_limiter=limiter)])

    async def run() -> list[str]:
        limiter = RateLimiter()
        models = {
            name: (limiter.register(name, 1, config(prio), [(0, 0)] * 3, backends), backends)
            for name, prio in (("one", 1), ("two", 2))
            for backends in [[f"{name}{i}" for i in range(3)]]
        }
        order: list[str] = []

        async def worker(limits, backend: str) -> None:
            while len(order) < 60:
                await limits.acquire(backend)
                order.append(backend[:3])
                await asyncio.sleep(0)
                limits.release(backend)

        await asyncio.gather(
            *(worker(limits, b) for limits, backends in models.values() for b in backends)
        )
        return order

    order = asyncio.run(run())[:60]
    # Each instance has one turn while every exec_count is 0; from then on "one" gets two turns
    # for each of "two"'s.
    assert sorted(order[:6]) == ["one"] * 3 + ["two"] * 3
    assert order[6:].count("one") == 2 * order[6:].count("two")


def test_explicit_resource_counts(perfkit_server, tmp_path):
    limited(tmp_path, "needs2", resources='{ name: "R" count: 2 }')
    limited(tmp_path, "global_r", resources='{ name: "G" global: true count: 1 }')
    limited(tmp_path, "device_g", resources='{ name: "G" count: 1 }')
    server = perfkit_server(
        tmp_path,
        "--model-control-mode=explicit",
        "--rate-limit=execution_count",
        "--rate-limit-resource=R:1",
        "--rate-limit-resource=G:4:0",
    )
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException, match='Resource count for "R" is limited to 1'):
        client.load_model("needs2")
    client.load_model("global_r")  # a global resource takes its count from any device's flag
    with pytest.raises(InferenceServerException, match="both global and device-specific"):
        client.load_model("device_g")
    client.unload_model("global_r")
    client.load_model("device_g")  # once the global use is gone, the name is free again
    assert client.is_model_ready("device_g")
    assert not client.is_model_ready("needs2")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate-limit=fast"], "invalid argument for --rate-limit"),
        (["--rate-limit-resource=R"], "--rate-limit-resource option format"),
        (["--rate-limit-resource=R:1:0:1"], "--rate-limit-resource option format"),
        (["--rate-limit-resource=R:x"], "must be integers"),
        (["--rate-limit-resource=R:-1"], "must be >= 0"),
    ],
)
def test_bad_rate_limit_flags_are_refused_with_a_message(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["--model-repository", str(tmp_path), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_resource_flag_forms():
    assert parse_resource("R:3") == ("R", 3, -1)  # every device
    assert parse_resource("Gpu_Mem:5:1") == ("Gpu_Mem", 5, 1)  # names keep their case
