"""Ensembles: a request flows through three composing models (each with its own scheduler and
statistics), independent steps run at once, the load-time checks refuse bad step graphs with
Triton's words, and unloading a composing model takes the ensemble with it until it returns.

The composing models are tiny ONNX graphs whose results prove the order: add_one then
scale_two gives (x + 1) * 2, never x * 2 + 1; negate runs on its own branch.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import (
    HOOK_ENV,
    Gate,
    fp32_input,
    metrics,
    overlapping,
    span_log,
    spans,
    stats,
)

SIZE = 4
_OPS = {"add_one": ("Add", 1.0), "scale_two": ("Mul", 2.0), "negate": ("Neg", None)}


def unary(repo: Path, name: str, op: str, *, dims: str = str(SIZE), mbs: int = 8) -> None:
    """An onnxruntime model OUTPUT0 = op(INPUT0), FP32 [batch, SIZE] ([SIZE] when mbs is 0)."""
    kind, const = _OPS[op]
    inputs = ["INPUT0"] if const is None else ["INPUT0", "c"]
    init = (
        [] if const is None else [numpy_helper.from_array(np.array(const, dtype=np.float32), "c")]
    )
    t = TensorProto.FLOAT
    shape: list[str | int] = ["batch", SIZE] if mbs else [SIZE]
    graph = helper.make_graph(
        [helper.make_node(kind, inputs, ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", t, shape)],
        [helper.make_tensor_value_info("OUTPUT0", t, shape)],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the onnxruntime inside Triton 2.51 reads too
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repo / name / "1" / "model.onnx"))
    models.write_config(
        repo,
        name,
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {mbs}\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {dims} ] }} ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n",
    )


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


def ensemble(
    repo: Path,
    name: str,
    steps: list[str],
    *,
    inputs: tuple[str, ...] = ("IN",),
    outputs: tuple[str, ...] = ("OUT",),
    mbs: int = 8,
    dims: str = str(SIZE),
    dtype: str = "TYPE_FP32",
    extra: str = "",
    max_inflight: int = 0,
) -> None:
    def tensors(kind: str, names: tuple[str, ...]) -> str:
        body = ", ".join(f'{{ name: "{n}" data_type: {dtype} dims: [ {dims} ] }}' for n in names)
        return f"{kind} [ {body} ]\n"

    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    models.write_config(
        repo,
        name,
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {mbs}\n'
        + tensors("input", inputs)
        + tensors("output", outputs)
        + "ensemble_scheduling { "
        + (f"max_inflight_requests: {max_inflight} " if max_inflight else "")
        + f"step [ {', '.join(steps)} ] }}\n{extra}",
    )


PIPE = [
    step("add_one", {"INPUT0": "IN"}, {"OUTPUT0": "MID"}),
    step("scale_two", {"INPUT0": "MID"}, {"OUTPUT0": "OUT"}),
    step("negate", {"INPUT0": "IN"}, {"OUTPUT0": "NEG"}),
]


def pipeline_repo(repo: Path) -> Path:
    for op in _OPS:
        unary(repo, op, op)
    ensemble(repo, "pipe", PIPE, outputs=("OUT", "NEG"))
    return repo


def _infer(
    client: Any, module: Any, model: str, x: np.ndarray[Any, Any], outputs: tuple[str, ...] = ()
) -> Any:
    wanted = [module.InferRequestedOutput(o) for o in outputs] or None
    return client.infer(model, [fp32_input(module, "IN", x)], outputs=wanted)


def _count(model_stats: dict[str, Any], key: str) -> int:
    return int(model_stats["inference_stats"][key]["count"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """The pipeline, every model loaded (explicit mode: `pipe` alone loads its composing models)."""
    repo = pipeline_repo(tmp_path_factory.mktemp("ensemble") / "repo")
    handle = start_server(repo, "--model-control-mode=explicit", "--load-model=pipe")
    try:
        yield handle
    finally:
        handle.stop()


# -- serving -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_outputs_prove_the_step_order(served, protocol):
    module: Any = httpclient if protocol == "http" else grpcclient
    url = served.http_url if protocol == "http" else served.grpc_url
    client = module.InferenceServerClient(url)
    x = np.arange(2 * SIZE, dtype=np.float32).reshape(2, SIZE)
    result = _infer(client, module, "pipe", x)
    np.testing.assert_array_equal(result.as_numpy("OUT"), (x + 1) * 2)
    np.testing.assert_array_equal(result.as_numpy("NEG"), -x)
    assert client.is_model_ready("pipe")
    meta = client.get_model_metadata("pipe")
    platform = meta["platform"] if protocol == "http" else meta.platform
    assert platform == "ensemble"


def test_loading_the_ensemble_loaded_its_composing_models(served):
    index = httpclient.InferenceServerClient(served.http_url).get_model_repository_index()
    assert {e["name"]: e.get("state") for e in index} == dict.fromkeys(
        ["add_one", "negate", "pipe", "scale_two"], "READY"
    )


def test_statistics_count_each_composing_model(served):
    names = ["pipe", *_OPS]
    before = {m: stats(served.http_url, m) for m in names}
    client = httpclient.InferenceServerClient(served.http_url)
    x = np.ones((3, SIZE), dtype=np.float32)
    n = 5
    for _ in range(n):
        _infer(client, httpclient, "pipe", x)
    after = {m: stats(served.http_url, m) for m in names}
    for m in names:
        assert _count(after[m], "success") - _count(before[m], "success") == n, m
        assert after[m]["inference_count"] - before[m]["inference_count"] == 3 * n, m
        assert after[m]["execution_count"] - before[m]["execution_count"] == n, m
    pipe = after["pipe"]
    by_size = {b["batch_size"]: b for b in pipe["batch_stats"]}
    assert by_size[3]["compute_infer"]["count"] == n  # only this test sends batches of 3
    # Triton: the ensemble's compute times are its composing requests' summed, exactly.
    for key in ("compute_input", "compute_infer", "compute_output"):

        def ns(m: str, key: str = key) -> int:
            return int(after[m]["inference_stats"][key]["ns"]) - int(
                before[m]["inference_stats"][key]["ns"]
            )

        assert ns("pipe") == sum(ns(m) for m in _OPS), key
    text = metrics(served.metrics_url)
    assert text['nv_inference_request_success{model="pipe",version="1"}'] == _count(pipe, "success")
    assert text['nv_inference_exec_count{model="pipe",version="1"}'] == pipe["execution_count"]


def test_requested_outputs_run_only_the_steps_they_need(served):
    before = {m: _count(stats(served.http_url, m), "success") for m in _OPS}
    client = httpclient.InferenceServerClient(served.http_url)
    x = np.full((1, SIZE), 3, dtype=np.float32)
    result = _infer(client, httpclient, "pipe", x, outputs=("NEG",))
    np.testing.assert_array_equal(result.as_numpy("NEG"), -x)
    assert result.as_numpy("OUT") is None
    after = {m: _count(stats(served.http_url, m), "success") for m in _OPS}
    assert after == {"add_one": before["add_one"], "scale_two": before["scale_two"],
                     "negate": before["negate"] + 1}  # fmt: skip


def test_a_failing_step_fails_the_request_naming_its_model(tmp_path, perfkit_server):
    repo = tmp_path / "repo"
    unary(repo, "add_one", "add_one")
    unary(repo, "scale_two", "scale_two")
    # The ensemble takes any length; its composing models take SIZE, so the check happens there.
    ensemble(repo, "loose", PIPE[:2], dims="-1")
    server = perfkit_server(repo)
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, SIZE + 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as exc:
        _infer(client, httpclient, "loose", x)
    assert exc.value.status() == "400"
    assert exc.value.message().startswith("in ensemble 'loose', unexpected shape for input")
    assert "for model 'add_one'" in exc.value.message()
    assert _count(stats(server.http_url, "loose"), "fail") == 1
    failed = 'nv_inference_request_failure{{model="{}",reason="{}",version="1"}}'
    assert metrics(server.metrics_url)[failed.format("loose", "OTHER")] == 1
    assert _count(stats(server.http_url, "add_one"), "success") == 0
    ok = _infer(client, httpclient, "loose", np.ones((1, SIZE), dtype=np.float32))
    np.testing.assert_array_equal(ok.as_numpy("OUT"), np.full((1, SIZE), 4, dtype=np.float32))


def test_a_batch_of_one_crosses_a_model_that_does_not_batch(tmp_path, perfkit_server):
    """Triton's reshape between a batching ensemble and a non-batching step: a batch of 1 loses
    its batch dimension on the way in and gets it back on the way out; a larger batch does not
    fit the step's shape."""
    repo = tmp_path / "repo"
    unary(repo, "flat", "scale_two", mbs=0)
    ensemble(repo, "wrap", [step("flat", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})])
    server = perfkit_server(repo)
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.arange(SIZE, dtype=np.float32).reshape(1, SIZE)
    np.testing.assert_array_equal(_infer(client, httpclient, "wrap", x).as_numpy("OUT"), x * 2)
    with pytest.raises(InferenceServerException, match="in ensemble 'wrap', unexpected shape"):
        _infer(client, httpclient, "wrap", np.ones((2, SIZE), dtype=np.float32))


def test_an_optional_input_may_be_left_out(tmp_path, perfkit_server):
    repo = tmp_path / "repo"
    (repo / "pair" / "1").mkdir(parents=True)
    models.write_config(
        repo,
        "pair",
        'name: "pair"\nbackend: "perfkit_identity"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },'
        ' { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] optional: true } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },'
        ' { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]\n',
    )
    ensemble(repo, "opt", [step("pair", {"INPUT0": "IN", "INPUT1": "EXTRA"}, {"OUTPUT0": "OUT"})],
             inputs=("IN", "EXTRA"))  # fmt: skip
    config = repo / "opt" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "EXTRA"', 'name: "EXTRA" optional: true'))
    server = perfkit_server(repo)
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, SIZE), dtype=np.float32)
    np.testing.assert_array_equal(_infer(client, httpclient, "opt", x).as_numpy("OUT"), x)


# -- concurrency and propagation ---------------------------------------------------------------


async def test_independent_steps_run_at_the_same_time(tmp_path, perfkit_server, monkeypatch):
    """Both branches' executions start before either is released: they run concurrently."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    with Gate(tmp_path, "left") as left, Gate(tmp_path, "right") as right:
        for name in ("left", "right"):
            models.slow_identity(repo, name, delay_us=0, max_batch_size=8)
        ensemble(
            repo,
            "fork",
            [
                step("left", {"INPUT0": "IN"}, {"OUTPUT0": "L"}),
                step("right", {"INPUT0": "IN"}, {"OUTPUT0": "R"}),
            ],
            outputs=("L", "R"),
            dims="16",
        )
        server = perfkit_server(repo)
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            x = np.full((1, 16), 7, dtype=np.float32)
            call = asyncio.ensure_future(client.infer("fork", [fp32_input(grpcaio, "IN", x)]))
            await asyncio.gather(left.started(), right.started())
            left.release()
            right.release()
            result = await asyncio.wait_for(call, 30)
            np.testing.assert_array_equal(result.as_numpy("L"), x)
            np.testing.assert_array_equal(result.as_numpy("R"), x)
        finally:
            await client.close()


async def test_timeout_reaches_the_composing_model(tmp_path, perfkit_server, monkeypatch):
    """The ensemble request's timeout is the composing request's: queued behind a held
    execution past it, the step (and so the ensemble request) is rejected."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    with Gate(tmp_path, "held") as gate:
        models.slow_identity(repo, "held", delay_us=0, max_batch_size=8)
        ensemble(repo, "wrap", [step("held", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], dims="16")
        server = perfkit_server(repo)
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            x = np.ones((1, 16), dtype=np.float32)
            first = asyncio.ensure_future(client.infer("wrap", [fp32_input(grpcaio, "IN", x)]))
            await gate.started()
            second = asyncio.ensure_future(
                client.infer("wrap", [fp32_input(grpcaio, "IN", x)], timeout=1)
            )
            pending = 'nv_inference_pending_request_count{model="held",version="1"}'
            await _until(lambda: metrics(server.metrics_url).get(pending) == 1)
            gate.release()
            await asyncio.wait_for(first, 30)
            with pytest.raises(InferenceServerException) as exc:
                await asyncio.wait_for(second, 30)
            assert "in ensemble 'wrap', Request timeout expired" in exc.value.message()
        finally:
            await client.close()


async def test_priority_reaches_the_composing_model(tmp_path, perfkit_server, monkeypatch):
    """Queued behind a held execution, the ensemble request sent later with the higher priority
    runs first at the composing model's dynamic batcher."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    with Gate(tmp_path, "ranked") as gate:
        batching = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"
        models.slow_identity(repo, "ranked", delay_us=0, max_batch_size=1, batching=batching)
        ensemble(
            repo, "ranks", [step("ranked", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], dims="16",
            mbs=1,
        )  # fmt: skip
        server = perfkit_server(repo)
        client = grpcaio.InferenceServerClient(server.grpc_url)

        def send(value: float, priority: int = 0) -> Any:
            x = np.full((1, 16), value, dtype=np.float32)
            inputs = [fp32_input(grpcaio, "IN", x)]
            return asyncio.ensure_future(client.infer("ranks", inputs, priority=priority))

        try:
            held = send(0)
            await gate.started()
            low, high = send(1, priority=2), send(2, priority=1)
            pending = 'nv_inference_pending_request_count{model="ranked",version="1"}'
            await _until(lambda: metrics(server.metrics_url).get(pending) == 2)
            gate.release()
            await asyncio.wait_for(held, 30)
            await gate.started()
            gate.release()
            done, _ = await asyncio.wait({low, high}, return_when=asyncio.FIRST_COMPLETED)
            assert done == {high}
            gate.release()
            await asyncio.wait_for(low, 30)
        finally:
            await client.close()


async def test_a_cancelled_request_cancels_its_running_step(tmp_path, perfkit_server, monkeypatch):
    """The client resets the call while a step runs: the ensemble request and its step's request
    both end CANCELED (as Triton propagates the cancellation to the step)."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    with Gate(tmp_path, "held") as gate:
        models.slow_identity(repo, "held", delay_us=0, max_batch_size=8)
        ensemble(repo, "wrap", [step("held", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], dims="16")
        server = perfkit_server(repo)
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            x = np.ones((1, 16), dtype=np.float32)
            call = asyncio.ensure_future(client.infer("wrap", [fp32_input(grpcaio, "IN", x)]))
            await gate.started()
            call.cancel()
            cancelled = 'nv_inference_request_failure{{model="{}",reason="CANCELED",version="1"}}'

            def both() -> bool:
                text = metrics(server.metrics_url)
                return all(text.get(cancelled.format(m)) == 1 for m in ("wrap", "held"))

            await _until(both)
            gate.release()
        finally:
            await client.close()


async def test_a_request_in_flight_finishes_when_a_composing_model_unloads(
    tmp_path, perfkit_server, monkeypatch
):
    """Unloading the second step's model while a request is in its first step: the ensemble goes
    first and its request still runs its second step (Triton's requests hold their models)."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    with Gate(tmp_path, "first") as gate:
        models.slow_identity(repo, "first", delay_us=0)
        models.slow_identity(repo, "second", delay_us=0)
        chain = [
            step("first", {"INPUT0": "IN"}, {"OUTPUT0": "MID"}),
            step("second", {"INPUT0": "MID"}, {"OUTPUT0": "OUT"}),
        ]
        ensemble(repo, "chain", chain, dims="16")
        server = perfkit_server(repo, "--model-control-mode=explicit", "--load-model=chain")
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            x = np.full((1, 16), 5, dtype=np.float32)
            call = asyncio.ensure_future(client.infer("chain", [fp32_input(grpcaio, "IN", x)]))
            await gate.started()
            unload = asyncio.ensure_future(client.unload_model("second"))
            ready = httpclient.InferenceServerClient(server.http_url).is_model_ready
            await _until(lambda: not ready("chain"))
            gate.release()
            result = await asyncio.wait_for(call, 30)
            np.testing.assert_array_equal(result.as_numpy("OUT"), x)
            await asyncio.wait_for(unload, 30)
            assert not ready("second")
        finally:
            await client.close()


async def _until(condition: Any, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def test_max_inflight_requests_limits_each_step(tmp_path, perfkit_server, monkeypatch):
    """With max_inflight_requests: 1, two requests never execute the step at once, even on a
    model with two instances: the second starts only after the first is released."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path))
    repo = tmp_path / "repo"
    with Gate(tmp_path, "two") as gate:
        models.slow_identity(repo, "two", delay_us=0, instances=2)
        ensemble(
            repo, "narrow", [step("two", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], dims="16",
            max_inflight=1,
        )  # fmt: skip
        server = perfkit_server(repo)
        client = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            x = np.ones((1, 16), dtype=np.float32)
            calls = [
                asyncio.ensure_future(client.infer("narrow", [fp32_input(grpcaio, "IN", x)]))
                for _ in range(2)
            ]
            for _ in calls:
                await gate.started()
                gate.release()
            await asyncio.wait_for(asyncio.gather(*calls), 30)
        finally:
            await client.close()
        assert not overlapping(spans(span_log(tmp_path, "two")))


# -- unload and reload -------------------------------------------------------------------------


def test_unloading_a_composing_model_takes_the_ensemble_until_it_returns(tmp_path, perfkit_server):
    repo = pipeline_repo(tmp_path / "repo")
    server = perfkit_server(repo, "--model-control-mode=explicit", "--load-model=pipe")
    client = httpclient.InferenceServerClient(server.http_url)
    client.unload_model("add_one")
    assert not client.is_model_ready("pipe")
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["pipe"]["state"] == "UNAVAILABLE"
    assert index["pipe"]["reason"] == "unloaded"
    assert client.is_model_ready("negate")
    client.load_model("add_one")
    assert client.is_model_ready("pipe")
    x = np.zeros((1, SIZE), dtype=np.float32)
    np.testing.assert_array_equal(_infer(client, httpclient, "pipe", x).as_numpy("OUT"), x + 2)
    client.unload_model("pipe")
    assert not client.is_model_ready("pipe")
    assert all(client.is_model_ready(m) for m in _OPS)
    # An ensemble unloaded itself stays unloaded when a composing model loads again.
    client.unload_model("add_one")
    client.load_model("add_one")
    assert not client.is_model_ready("pipe")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unload_dependents_takes_the_composing_models_loaded_for_it(
    tmp_path, perfkit_server, protocol
):
    """Triton's unload_dependents: the composing models the ensemble loaded go with it; one
    loaded on its own request, or still used by another loaded ensemble, stays."""
    repo = pipeline_repo(tmp_path / "repo")
    ensemble(repo, "negated", [step("negate", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})])
    server = perfkit_server(
        repo, "--model-control-mode=explicit", "--load-model=pipe", "--load-model=negated"
    )
    module: Any = httpclient if protocol == "http" else grpcclient
    url = server.http_url if protocol == "http" else server.grpc_url
    client = module.InferenceServerClient(url)
    client.load_model("scale_two")  # now loaded on its own request too
    client.unload_model("pipe", unload_dependents=True)
    ready = {m: client.is_model_ready(m) for m in ("pipe", *_OPS, "negated")}
    assert ready == {"pipe": False, "add_one": False, "scale_two": True, "negate": True,
                     "negated": True}  # fmt: skip


def test_unload_dependents_must_be_a_boolean(served):
    request = urllib.request.Request(
        f"http://{served.http_url}/v2/repository/models/nothing/unload",
        data=b'{"parameters": {"unload_dependents": "yes"}}',
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(request, timeout=10)
    assert exc.value.code == 400
    assert b"parameters.unload_dependents must be a boolean" in exc.value.read()


# -- load-time checks (one explicit-mode server; each case loads its own ensemble) -------------


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, Path]]:
    repo = tmp_path_factory.mktemp("ensemble-checks") / "repo"
    for op in ("add_one", "scale_two"):
        unary(repo, op, op)
    unary(repo, "small", "add_one", mbs=2)
    models.add_sub(repo, "add_sub")
    models.write_config(repo, "broken", 'name: "broken"\nbackend: "onnxruntime"\n')
    (repo / "broken" / "1").mkdir()
    handle = start_server(repo, "--model-control-mode=explicit")
    try:
        yield handle, repo
    finally:
        handle.stop()


ADD = step("add_one", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "missing_model": (
        dict(steps=[step("ghost", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
        "ensemble missing_model contains models that are not available or ambiguous: ghost",
    ),
    "unconnected_input": (
        dict(steps=[step("add_one", {"INPUT0": "NOWHERE"}, {"OUTPUT0": "OUT"})],
             inputs=("IN", "NOWHERE2")),
        "ensemble input 'IN' for ensemble unconnected_input' is not used",
    ),
    "step_input_from_nowhere": (
        dict(steps=[ADD, step("scale_two", {"INPUT0": "NOWHERE"}, {"OUTPUT0": "OUT2"})],
             outputs=("OUT", "OUT2")),
        "output 'OUT2' for ensemble 'step_input_from_nowhere' is not written: at least one of its "
        "depending tensors, 'NOWHERE', is not connected",
    ),
    "output_not_produced": (
        dict(steps=[ADD], outputs=("OUT", "EXTRA")),
        "ensemble output 'EXTRA' for ensemble output_not_produced' is not used",
    ),
    "written_twice": (
        dict(steps=[ADD, step("scale_two", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
        "ensemble tensor 'OUT' can appear in an output map only once for ensemble 'written_twice' "
        "step 1 (step 0 already writes it",
    ),
    "step_cycle": (
        dict(steps=[
            step("add_sub", {"INPUT0": "IN", "INPUT1": "B"}, {"OUTPUT0": "A", "OUTPUT1": "OUT"}),
            step("add_one", {"INPUT0": "A"}, {"OUTPUT0": "B"}),
        ], dims="16"),
        "output 'OUT' for ensemble 'step_cycle' is not written: at least one of its depending "
        "tensors, 'A', is not connected",
    ),
    "unused_tensor": (
        dict(steps=[step("add_sub", {"INPUT0": "IN", "INPUT1": "IN"},
                         {"OUTPUT0": "OUT", "OUTPUT1": "SPARE"})], dims="16"),
        "ensemble tensor 'SPARE' is unused in ensemble 'unused_tensor' (written by step 0",
    ),
    "batch_too_large": (
        dict(steps=[step("small", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], mbs=8),
        "ensemble batch_too_large allows maximum batch size 8, but it contains model small which "
        "only allows maximum batch size to be 2 (step 0 (model 'small')",
    ),
    "dtype_mismatch": (
        dict(steps=[ADD], dtype="TYPE_INT32"),
        "in ensemble dtype_mismatch, ensemble tensor IN: inconsistent data type: TYPE_INT32 is "
        "inferred from model dtype_mismatch while TYPE_FP32 is inferred from model add_one "
        "(step 0 (model 'add_one'), input 'INPUT0'",
    ),
    "shape_mismatch": (
        dict(steps=[ADD], dims="5"),
        "in ensemble shape_mismatch, ensemble tensor IN: inconsistent shape: [-1,5] is inferred "
        "from model shape_mismatch while [-1,4] is inferred from model add_one",
    ),
    "input_not_mapped": (
        dict(steps=[step("add_sub", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], dims="16"),
        "in ensemble input_not_mapped, input INPUT1 in model add_sub is not mapped to any "
        "ensemble tensors (step 0 (model 'add_sub')",
    ),
    "no_such_input": (
        dict(steps=[step("add_one", {"INPUT9": "IN"}, {"OUTPUT0": "OUT"})]),
        "in ensemble no_such_input, ensemble tensor IN is mapping to non-existing input INPUT9 in "
        "model add_one",
    ),
    "instance_group": (
        dict(steps=[ADD], extra="instance_group [ { count: 1 kind: KIND_CPU } ]\n"),
        "instance group should not be specified for ensemble 'instance_group'",
    ),
    "composing_load_fails": (
        dict(steps=[step("broken", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
        "ensemble 'composing_load_fails' depends on 'broken' which has no loaded version. Model "
        "'broken' loading failed with error:",
    ),
    "version_not_served": (
        dict(steps=[step("add_one", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}, version=3)]),
        "ensemble 'version_not_served' depends on 'add_one' whose required version 3 is not loaded",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_refuses(loader, case):
    server, repo = loader
    kwargs, expected = CASES[case]
    ensemble(repo, case, **kwargs)
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as exc:
        client.load_model(case)
    assert exc.value.status() == "400"
    assert expected in exc.value.message()
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index[case]["state"] == "UNAVAILABLE"
    assert expected in index[case]["reason"]


def test_load_refuses_a_cycle_between_ensembles(loader):
    server, repo = loader
    ensemble(repo, "ouro", [step("boros", {"IN": "IN"}, {"OUT": "OUT"})])
    ensemble(repo, "boros", [step("ouro", {"IN": "IN"}, {"OUT": "OUT"})])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("ouro")
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "circular dependency between ensembles: ouro -> boros -> ouro" in exc.value.message()
    assert not client.is_model_ready("boros")


def test_an_ensemble_of_an_ensemble_serves(loader):
    server, repo = loader
    ensemble(repo, "inner", [step("add_one", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})])
    ensemble(repo, "outer", [step("inner", {"IN": "IN"}, {"OUT": "MID"}),
                             step("scale_two", {"INPUT0": "MID"}, {"OUTPUT0": "OUT"})])  # fmt: skip
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("outer")
    x = np.ones((2, SIZE), dtype=np.float32)
    np.testing.assert_array_equal(_infer(client, httpclient, "outer", x).as_numpy("OUT"), x * 4)
    assert _count(stats(server.http_url, "inner"), "success") == 1
    client.unload_model("add_one")  # takes inner, and outer with it
    assert not client.is_model_ready("inner")
    assert not client.is_model_ready("outer")
    client.load_model("add_one")
    assert client.is_model_ready("outer")
