"""The rate limiter on perfkit_server and the real tritonserver (its rate limiter is Triton core).

Both servers run two-instance identity models whose instance groups need one global resource.
Each execution appends its start and end (CLOCK_MONOTONIC, shared by every process of the host)
to a span log: perfkit_identity through its test-hook directory, the python model (one stub
process per instance on Triton) to the file its config parameter names. The assertions are about
how many executions ran at once, never about speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._models import PERFKIT, TRITON
from tests.fixtures.triton import triton_available
from tests.server.helpers import HOOK_ENV, fp32_input, spans
from tests.server.test_rate_limiter import most_at_once

MODEL_PY = '''"""Identity for Triton's python backend that logs each execution's span."""
import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = int(params["execute_delay_us"]["string_value"]) / 1e6
        self.span_log = params["span_log"]["string_value"]

    def execute(self, requests):
        start = time.monotonic_ns()
        time.sleep(self.delay_s)
        responses = [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())
                ]
            )
            for r in requests
        ]
        with open(self.span_log, "a") as log:
            log.write(f"{start} {time.monotonic_ns()} {os.getpid()}\\n")
        return responses
'''


@dataclass
class Started:
    http: str
    grpc: str
    log: Callable[[], str]


@pytest.fixture(params=[PERFKIT, pytest.param(TRITON, marks=pytest.mark.triton)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == TRITON and not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    return str(request.param)


@pytest.fixture
def start(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Started]:
    """`start(repo, *flags, load=("*",))`: the param's server on `repo` in explicit mode."""
    monkeypatch.setenv(HOOK_ENV, str(tmp_path / "spans"))

    def run(repo: Path, *flags: str, load: tuple[str, ...] = ("*",)) -> Started:
        if kind == TRITON:
            log = tmp_path / "triton.log"
            server = request.getfixturevalue("triton_server")(
                repo, load_models=load, log_path=log, extra_args=(*flags, "--exit-timeout-secs=3")
            )
            return Started(
                server.http_url, server.grpc_url, lambda: log.read_text("utf-8", "replace")
            )
        handle = request.getfixturevalue("perfkit_server")(
            repo, "--model-control-mode=explicit", *(f"--load-model={m}" for m in load), *flags
        )
        return Started(handle.http_url, handle.grpc_url, handle.log)

    return run


def model(repo: Path, kind: str, name: str, resources: str, delay_us: int = 2000) -> None:
    """A two-instance identity whose group needs `resources`; spans go to <tmp>/spans/<name>.spans."""
    span_dir = repo.parent / "spans"
    span_dir.mkdir(exist_ok=True)
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    backend = "python" if kind == TRITON else "perfkit_identity"
    if kind == TRITON:
        (repo / name / "1" / "model.py").write_text(MODEL_PY)
    params = f'parameters {{ key: "execute_delay_us" value {{ string_value: "{delay_us}" }} }}\n'
    if kind == TRITON:
        span = span_dir / f"{name}.spans"
        params += f'parameters {{ key: "span_log" value {{ string_value: "{span}" }} }}\n'
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        f"instance_group [ {{ count: 2 kind: KIND_CPU rate_limiter {{ resources [ {resources} ] }} }} ]\n"
        + params
    )


async def _load(url: str, models: list[str], n: int) -> None:
    client = grpcaio.InferenceServerClient(url)
    try:
        x = np.zeros((1, 16), dtype=np.float32)
        calls = [
            client.infer(m, [fp32_input(grpcaio, "INPUT0", x)]) for _ in range(n) for m in models
        ]
        await asyncio.gather(*calls)
    finally:
        await client.close()


@pytest.mark.parametrize(("count", "flags"), [(1, ()), (2, ("--rate-limit-resource=R:2",))])
async def test_two_models_sharing_a_resource_stay_within_its_count(
    start, kind, tmp_path, count, flags
):
    repo = tmp_path / "repo"
    for name in ("a", "b"):
        model(repo, kind, name, '{ name: "R" global: true count: 1 }')
    server = start(repo, "--rate-limit=execution_count", *flags)
    await _load(server.grpc, ["a", "b"], 12)
    rows = [row for name in ("a", "b") for row in spans(tmp_path / "spans" / f"{name}.spans")]
    client = httpclient.InferenceServerClient(server.http)

    def executions() -> int:
        stats = [client.get_inference_statistics(n)["model_stats"][0] for n in ("a", "b")]
        return sum(s["execution_count"] for s in stats)

    # Triton updates a model's statistics as it releases a request, just after the response: a
    # bounded poll for the last execution's count (the spans file has every execution already).
    for _ in range(1500):  # at most ~30 s
        if executions() == len(rows):
            break
        await asyncio.sleep(0.02)
    assert len(rows) == executions()
    assert most_at_once(rows) <= count


def test_a_load_needing_more_than_the_flag_gives_fails(start, kind, tmp_path):
    repo = tmp_path / "repo"
    model(repo, kind, "small", '{ name: "R" count: 1 }')
    model(repo, kind, "needs2", '{ name: "R" count: 2 }')
    model(repo, kind, "global_r", '{ name: "R" global: true count: 1 }')
    server = start(
        repo, "--rate-limit=execution_count", "--rate-limit-resource=R:1", load=("small",)
    )
    client = httpclient.InferenceServerClient(server.http)
    with pytest.raises(InferenceServerException, match='Resource count for "R" is limited to 1'):
        client.load_model("needs2")
    with pytest.raises(InferenceServerException, match="both global and device-specific"):
        client.load_model("global_r")
    assert client.is_model_ready("small")
    assert not client.is_model_ready("needs2")
    assert not client.is_model_ready("global_r")
