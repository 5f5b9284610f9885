"""Contract: the same ensemble on perfkit_server and a real tritonserver: same outputs, same
statistics (the ensemble's and each composing model's), same pruning, same unload semantics.

Composing models compute add_one, scale_two and negate: python-backend models on Triton (the
only backend its wheel carries), onnxruntime graphs on perfkit_server; the ensemble configs are
the same file. Ensembles are Triton core, so the real server runs all of it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._client import PROTOCOLS, STAT_KEYS, index, statistics, wait_state
from tests.contract._models import PERFKIT, TRITON
from tests.contract._server import Server
from tests.fixtures.server import start_server
from tests.fixtures.triton import triton_available
from tests.server.test_ensemble import PIPE, SIZE, ensemble, step, unary

pytestmark = pytest.mark.timeout(180)

OPS = ("add_one", "scale_two", "negate")

_MODEL_PY = textwrap.dedent(
    '''
    """perfkit contract: OUTPUT0 = op(INPUT0) for Triton's python backend."""
    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils

    OPS = {"add_one": lambda x: x + 1, "scale_two": lambda x: x * 2, "negate": lambda x: -x}


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            self.op = OPS[config["parameters"]["op"]["string_value"]]

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out = pb_utils.Tensor("OUTPUT0", self.op(x).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
    '''
)


def _python_model(repo: Path, name: str, op: str, mbs: int = 8) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "1" / "model.py").write_text(_MODEL_PY)
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {mbs}\n'
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]\n'
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        f'parameters {{ key: "op" value {{ string_value: "{op}" }} }}\n'
    )


def _write_composing(repo: Path, kind: str, name: str, op: str, mbs: int = 8) -> None:
    if kind == TRITON:
        _python_model(repo, name, op, mbs)
    else:
        unary(repo, name, op, mbs=mbs)


def _write_repo(repo: Path, kind: str) -> None:
    for op in OPS:
        _write_composing(repo, kind, op, op)
    _write_composing(repo, kind, "small", "add_one", mbs=2)
    ensemble(repo, "pipe", PIPE, outputs=("OUT", "NEG"))
    # Any length at the ensemble, SIZE at its composing models: a request can fail in a step.
    ensemble(repo, "loose", PIPE[:2], dims="-1")


@contextlib.contextmanager
def _launch(kind: str, repo: Path, base: Path, cache: Path) -> Iterator[tuple[str, str, str, Path]]:
    models = ("pipe", "loose")  # explicit mode: each loads its composing models
    if kind == PERFKIT:
        log = base / "perfkit.log"
        handle = start_server(
            repo, "--model-control-mode=explicit", *(f"--load-model={m}" for m in models),
            log_path=log,
        )  # fmt: skip
        try:
            yield handle.http_url, handle.grpc_url, handle.metrics_url, log
        finally:
            handle.stop()
        return
    from perfkit.launch import LocalTriton

    log = base / "triton.log"
    triton = LocalTriton(
        repo,
        load_models=models,
        disable_auto_complete_config=True,
        cache_dir=cache,
        log_path=log,
        extra_args=("--exit-timeout-secs=3",),
    )
    triton.start()
    try:
        yield triton.http_url, triton.grpc_url, triton.metrics_url.removesuffix("/metrics"), log
    finally:
        triton.stop()


@pytest.fixture(scope="module", params=[PERFKIT, pytest.param(TRITON, marks=pytest.mark.triton)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # fmt: skip
    kind: str = request.param
    if kind == TRITON and not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    base = tmp_path_factory.mktemp(f"ensemble-{kind}")
    repo = base / "repo"
    _write_repo(repo, kind)
    cache = request.getfixturevalue("triton_cache_dir") if kind == TRITON else base
    with _launch(kind, repo, base, cache) as (http_url, grpc_url, metrics_url, log):
        srv = Server(kind, repo, http_url, grpc_url, metrics_url, log, {})
        try:
            yield srv
        finally:
            srv.close()
            if request.session.testsfailed:
                sys.stderr.write(f"----- {kind} log ({log}) -----\n{srv.log()[-20000:]}\n")


def _infer(server: Server, protocol: str, model: str, x: Any, outputs: tuple[str, ...] = ()) -> Any:
    module: Any = httpclient if protocol == "http" else grpcclient
    inp = module.InferInput("IN", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    wanted = [module.InferRequestedOutput(o) for o in outputs] or None
    return server.client(protocol).infer(model, [inp], outputs=wanted)


def _successes(server: Server, models: tuple[str, ...]) -> dict[str, int]:
    return {m: statistics(server, "http", m)["inference_stats"]["success"]["count"] for m in models}


def _settled(
    server: Server, protocol: str, before: dict[str, dict[str, Any]], added: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Statistics once each model's success count grew by `added` (bounded poll): Triton
    updates a request's statistics when it releases the request, just after its response."""
    deadline = time.monotonic() + 30
    while True:
        after = {m: statistics(server, protocol, m) for m in before}
        grown = {
            m: after[m]["inference_stats"]["success"]["count"]
            - before[m]["inference_stats"]["success"]["count"]
            for m in added
        }
        if grown == added or time.monotonic() > deadline:
            return after
        time.sleep(0.02)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_outputs(server, protocol):
    x = np.arange(2 * SIZE, dtype=np.float32).reshape(2, SIZE)
    result = _infer(server, protocol, "pipe", x)
    np.testing.assert_array_equal(result.as_numpy("OUT"), (x + 1) * 2)
    np.testing.assert_array_equal(result.as_numpy("NEG"), -x)


def test_loading_the_ensemble_loads_its_composing_models(server):
    entries = index(server, "http")
    for model in ("pipe", "loose", *OPS):
        assert entries[model]["state"] == "READY", model
    assert "small" not in entries or entries["small"].get("state") != "READY"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_statistics(server, protocol):
    names = ("pipe", *OPS)
    before = {m: statistics(server, protocol, m) for m in names}
    n, rows = 4, 3
    for _ in range(n):
        _infer(server, protocol, "pipe", np.ones((rows, SIZE), dtype=np.float32))
    after = _settled(server, protocol, before, dict.fromkeys(names, n))
    for m in names:
        stats = after[m]["inference_stats"]
        assert set(STAT_KEYS) <= set(stats), m
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            assert stats[key]["count"] - before[m]["inference_stats"][key]["count"] == n, (m, key)
        assert after[m]["inference_count"] - before[m]["inference_count"] == n * rows, m
        assert after[m]["execution_count"] - before[m]["execution_count"] == n, m
        sizes = {b["batch_size"]: b for b in after[m]["batch_stats"]}
        assert sizes[rows]["compute_infer"]["count"] >= n, m


def test_the_ensemble_compute_time_is_its_steps(server):
    """Triton adds each composing request's compute times to its ensemble request's."""
    names = ("pipe", *OPS)
    before = {m: statistics(server, "http", m) for m in names}
    _infer(server, "http", "pipe", np.ones((1, SIZE), dtype=np.float32))
    after = _settled(server, "http", before, dict.fromkeys(names, 1))
    for key in ("compute_input", "compute_infer", "compute_output"):
        delta = {
            m: after[m]["inference_stats"][key]["ns"] - before[m]["inference_stats"][key]["ns"]
            for m in names
        }
        assert delta["pipe"] == sum(delta[m] for m in OPS), key


def test_requested_outputs_prune_the_other_steps(server):
    before = {m: statistics(server, "http", m) for m in ("pipe", *OPS)}
    x = np.full((1, SIZE), 3, dtype=np.float32)
    result = _infer(server, "http", "pipe", x, outputs=("NEG",))
    np.testing.assert_array_equal(result.as_numpy("NEG"), -x)
    assert result.as_numpy("OUT") is None
    _settled(server, "http", before, {"pipe": 1, "negate": 1})
    after = _successes(server, OPS)
    assert after == {
        m: before[m]["inference_stats"]["success"]["count"] + (m == "negate") for m in OPS
    }


def _fail_loose(server: Server, protocol: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as exc:
        _infer(server, protocol, "loose", np.ones((1, SIZE + 1), dtype=np.float32))
    return exc.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_step_fails_the_request(server, protocol):
    error = _fail_loose(server, protocol)
    assert error.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    message = error.message()
    assert message.startswith("in ensemble 'loose', ")
    assert "unexpected shape for input 'INPUT0' for model 'add_one'" in message


@pytest.mark.diverges(
    "Triton counts a failed ensemble request twice in fail (RespondIfError reports it, then its "
    "request tracker again); perfkit_server counts it once"
)
def test_a_failed_request_counts_twice_in_the_ensemble_fail(server):
    def fails() -> int:
        return int(statistics(server, "http", "loose")["inference_stats"]["fail"]["count"])

    before = fails()
    _fail_loose(server, "http")
    # Triton counts it again when it releases the request; perfkit_server's count is final.
    deadline = time.monotonic() + (10 if server.kind == TRITON else 0)
    while fails() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fails() == before + 2


def test_load_refuses_a_batch_larger_than_a_composing_model(server):
    ensemble(server.repo, "too_wide", [step("small", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})])
    with pytest.raises(InferenceServerException) as exc:
        server.client("http").load_model("too_wide")
    assert exc.value.status() == "400"
    assert (
        "ensemble too_wide allows maximum batch size 8, but it contains model small which only "
        "allows maximum batch size to be 2"
    ) in exc.value.message()


def test_unload_semantics(server):
    client = server.client("http")
    x = np.zeros((1, SIZE), dtype=np.float32)
    client.unload_model("add_one")
    assert not client.is_model_ready("pipe")
    entry = index(server, "http")["pipe"]
    assert (entry["state"], entry.get("reason")) == ("UNAVAILABLE", "unloaded")
    assert client.is_model_ready("negate")
    client.load_model("add_one")  # the ensemble comes back with it
    assert client.is_model_ready("pipe")
    np.testing.assert_array_equal(_infer(server, "http", "pipe", x).as_numpy("OUT"), x + 2)
    client.unload_model("pipe")  # its composing models stay
    assert not client.is_model_ready("pipe")
    for model in OPS:
        assert client.is_model_ready(model), model
    client.load_model("pipe")
    assert client.is_model_ready("pipe")


def test_config_and_metadata(server):
    """The served config as Triton normalizes an ensemble's (no instance groups, no optimization,
    decoupled false, each step's model_namespace), and the same metadata."""
    client = server.client("http")
    config = client.get_model_config("pipe")
    # Triton 2.51's proto predates max_inflight_requests; newer ones print it as 0.
    config["ensemble_scheduling"].pop("max_inflight_requests", None)
    assert config["platform"] == "ensemble"
    assert config["backend"] == ""
    assert config["instance_group"] == []
    assert "optimization" not in config
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["ensemble_scheduling"]["step"][0] == {
        "model_name": "add_one",
        "model_version": -1,
        "input_map": {"INPUT0": "IN"},
        "output_map": {"OUTPUT0": "MID"},
        "model_namespace": "",
    }
    meta = client.get_model_metadata("pipe")
    assert meta["platform"] == "ensemble"
    assert meta["versions"] == ["1"]
    assert [o["name"] for o in meta["outputs"]] == ["OUT", "NEG"]
    assert all(o["shape"] == [-1, SIZE] for o in meta["outputs"] + meta["inputs"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unload_dependents(server, protocol):
    """unload_dependents takes the composing models loaded only for the ensemble; those another
    loaded ensemble (loose) uses stay."""
    client = server.client(protocol)
    client.unload_model("pipe", unload_dependents=True)
    ready = {m: client.is_model_ready(m) for m in ("pipe", "loose", *OPS)}
    assert ready == {"pipe": False, "loose": True, "add_one": True, "scale_two": True,
                     "negate": False}  # fmt: skip
    client.load_model("pipe")
    assert all(client.is_model_ready(m) for m in ("pipe", *OPS))


def test_a_composing_model_that_no_longer_fits_takes_the_ensemble_down(server):
    """add_one reloaded with max_batch_size 2 (the ensemble allows 8): the ensemble is
    re-checked and unloaded; add_one back as it was brings it back."""
    client = server.client("http")
    config = client.get_model_config("add_one")
    config["max_batch_size"] = 2
    client.load_model("add_one", config=json.dumps(config))
    assert client.is_model_ready("add_one")
    assert not client.is_model_ready("pipe")
    entry = wait_state(server, "pipe", ("UNAVAILABLE",))
    assert entry.get("reason") == "unloaded"
    client.unload_model("add_one")
    client.load_model("add_one")  # from its file again
    assert client.is_model_ready("pipe")
    assert client.is_model_ready("loose")


ADD = step("add_one", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "c_missing_model": (
        {"steps": [step("ghost", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]},
        "ensemble c_missing_model contains models that are not available or ambiguous: ghost",
    ),
    "c_written_twice": (
        {"steps": [ADD, step("scale_two", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]},
        "ensemble tensor 'OUT' can appear in an output map only once for ensemble "
        "'c_written_twice' step 1",
    ),
    "c_not_written": (
        {"steps": [ADD, step("scale_two", {"INPUT0": "NOWHERE"}, {"OUTPUT0": "OUT2"})],
         "outputs": ("OUT", "OUT2")},
        "output 'OUT2' for ensemble 'c_not_written' is not written: at least one of its "
        "depending tensors, 'NOWHERE', is not connected",
    ),
    "c_dtype": (
        {"steps": [ADD], "dtype": "TYPE_INT32"},
        "in ensemble c_dtype, ensemble tensor IN: inconsistent data type: TYPE_INT32 is inferred "
        "from model c_dtype while TYPE_FP32 is inferred from model add_one",
    ),
    "c_shape": (
        {"steps": [ADD], "dims": "5"},
        "in ensemble c_shape, ensemble tensor IN: inconsistent shape: [-1,5] is inferred from "
        "model c_shape while [-1,4] is inferred from model add_one",
    ),
    "c_no_such_input": (
        {"steps": [step("add_one", {"INPUT9": "IN"}, {"OUTPUT0": "OUT"})]},
        "in ensemble c_no_such_input, ensemble tensor IN is mapping to non-existing input INPUT9 "
        "in model add_one",
    ),
    "c_instance_group": (
        {"steps": [ADD], "extra": "instance_group [ { count: 1 kind: KIND_CPU } ]\n"},
        "instance group should not be specified for ensemble 'c_instance_group'",
    ),
}  # fmt: skip


_CHECKED_AT_POLL = {"c_written_twice", "c_not_written", "c_instance_group"}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_load_refuses_with_tritons_words(server, case):
    kwargs, expected = REFUSED[case]
    ensemble(server.repo, case, **kwargs)
    with pytest.raises(InferenceServerException) as exc:
        server.client("http").load_model(case)
    if case in _CHECKED_AT_POLL and server.kind == TRITON:
        # Triton checks the ensemble's own config when it polls the repository: it answers 500
        # "failed to poll" and only its log says why. perfkit_server answers 400 with the reason,
        # as for every config it refuses.
        assert exc.value.status() == "500"
        assert "failed to poll from model repository" in exc.value.message()
        assert expected in server.log()
    else:
        assert exc.value.status() == "400"
        assert expected in exc.value.message()


def test_a_batch_of_one_crosses_a_model_that_does_not_batch(server):
    """Triton's reshape between a batching ensemble and a step with max_batch_size 0."""
    _write_composing(server.repo, server.kind, "flat", "scale_two", mbs=0)
    ensemble(server.repo, "wrap_flat", [step("flat", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})])
    client = server.client("http")
    client.load_model("wrap_flat")
    x = np.arange(SIZE, dtype=np.float32).reshape(1, SIZE)
    result = _infer(server, "http", "wrap_flat", x)
    np.testing.assert_array_equal(result.as_numpy("OUT"), x * 2)
    with pytest.raises(InferenceServerException) as exc:
        _infer(server, "http", "wrap_flat", np.ones((2, SIZE), dtype=np.float32))
    message = exc.value.message()
    assert message.startswith("in ensemble 'wrap_flat', ")
    assert (
        f"unexpected shape for input 'INPUT0' for model 'flat'. Expected [{SIZE}], got " in message
    )
