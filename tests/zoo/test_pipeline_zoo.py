"""The zoo's pipeline (ensemble and BLS) and stateful accumulator: the repositories `zoo.build` writes
load and serve correct outputs on a real tritonserver, and on perfkit_server once it runs python
models (the same test, skipped with the reason until then).

The nvidia-pytriton wheel's tritonserver carries only the python backend, so on it the ONNX step
runs the zoo's own model.onnx through onnxruntime inside a python model (`_onnx_step_as_python`);
everything else (the python models, the ensemble, the sequence batcher) is the zoo's files as built.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner

from perfkit import zoo
from perfkit.cli import cli
from perfkit.model_repo.config import load_config
from perfkit.zoo import _pipeline
from tests.fixtures.server import start_server

PIPELINES = ("pipeline_ensemble", "pipeline_bls")


def _python_models_on_perfkit_server() -> str | None:
    """Why perfkit_server cannot serve these yet (None: it can)."""
    from perfkit_server.backends import known_backend

    if not known_backend("python"):
        return "perfkit_server has no python backend yet (issue #13, merged separately)"
    return None


def _onnx_step_as_python(repo: Path) -> None:
    """Serve pipeline_classifier's model.onnx from a python model (the wheel has no onnxruntime
    backend): same tensors, same graph, onnxruntime in the stub process."""
    model_dir = repo / "pipeline_classifier"
    if not model_dir.is_dir():
        return
    config = (model_dir / "config.pbtxt").read_text()
    (model_dir / "config.pbtxt").write_text(
        config.replace('platform: "onnxruntime_onnx"', 'backend: "python"')
    )
    (model_dir / "1" / "model.py").write_text(
        textwrap.dedent(
            """
            import os

            import onnxruntime as ort
            import triton_python_backend_utils as pb_utils


            class TritonPythonModel:
                def initialize(self, args):
                    path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
                    self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

                def execute(self, requests):
                    responses = []
                    for request in requests:
                        x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                        (y,) = self.session.run(["OUTPUT0"], {"INPUT0": x})
                        responses.append(
                            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)])
                        )
                    return responses
            """
        )
    )


Start = Callable[[Path, list[str]], str]  # (repo, models to load) -> HTTP url


@pytest.fixture(params=["triton", "perfkit_server"])
def serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Start]:
    """Start the server of the param's kind on a repository, in explicit mode loading only the
    named models (as `perfkit run -m` does); yields the starter."""
    stops: list[Callable[[], Any]] = []
    if request.param == "perfkit_server":
        why = _python_models_on_perfkit_server()
        if why is not None:
            pytest.skip(why)

        def start(repo: Path, models: list[str]) -> str:
            handle = start_server(
                repo, "--model-control-mode=explicit", *(f"--load-model={m}" for m in models)
            )
            stops.append(handle.stop)
            return handle.http_url

    else:
        factory = request.getfixturevalue("triton_server")

        def start(repo: Path, models: list[str]) -> str:
            _onnx_step_as_python(repo)
            return str(factory(repo, load_models=models).http_url)

    yield start
    for stop in stops:
        stop()


def _images(batch: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (batch, *_pipeline.IMAGE_HWC), np.uint8)


def _classify(
    client: httpclient.InferenceServerClient, model: str, images: npt.NDArray[np.uint8]
) -> Any:
    inp = httpclient.InferInput("IMAGE", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    return client.infer(model, [inp])


@pytest.mark.parametrize("model", PIPELINES)
def test_pipeline_serves_the_reference_outputs(serve, tmp_path, model):
    zoo.build(model, tmp_path)
    client = httpclient.InferenceServerClient(serve(tmp_path, [model]))
    for batch, seed in ((1, 0), (3, 1), (_pipeline.MAX_BATCH_SIZE, 2)):
        images = _images(batch, seed)
        result = _classify(client, model, images)
        scores, classes = _pipeline.reference(images)
        np.testing.assert_array_equal(result.as_numpy("CLASSES"), classes)
        np.testing.assert_allclose(result.as_numpy("SCORES"), scores, rtol=1e-5, atol=1e-6)
    # The composing models served the requests: each has its own statistics. Triton records a
    # composing model's statistics after the ensemble has answered: a bounded poll of them.
    for _ in range(500):
        stats = client.get_inference_statistics()["model_stats"]
        served = {s["name"]: int(s["inference_stats"]["success"]["count"]) for s in stats}
        if all(served.get(step, 0) >= 3 for step in _pipeline.STEPS):
            break
    for step in _pipeline.STEPS:
        assert served.get(step, 0) >= 3, (step, served)


def _accumulate(
    client: httpclient.InferenceServerClient, sequence: int, value: int, start: bool, end: bool
) -> int:
    inp = httpclient.InferInput("INPUT0", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    result = client.infer(
        "accumulator", [inp], sequence_id=sequence, sequence_start=start, sequence_end=end
    )
    return int(result.as_numpy("OUTPUT0").reshape(-1)[0])


def test_accumulator_keeps_a_sum_per_sequence(serve, tmp_path):
    zoo.build("accumulator", tmp_path)
    client = httpclient.InferenceServerClient(serve(tmp_path, ["accumulator"]))
    values = {11: [1, 2, 3, 4], 12: [10, 20, 30, 40], 13: [100, 200, 300, 400]}
    totals: dict[int, list[int]] = {s: [] for s in values}
    # Interleaved: one request of each sequence in turn, so the sums must stay apart.
    for step in range(4):
        for sequence, series in values.items():
            totals[sequence].append(
                _accumulate(client, sequence, series[step], start=step == 0, end=step == 3)
            )
    assert totals == {s: list(np.cumsum(v)) for s, v in values.items()}
    # A new sequence with a used id starts from zero again.
    assert _accumulate(client, 11, 5, start=True, end=True) == 5


def test_the_onnx_step_serves_on_perfkit_server_now(perfkit_server, tmp_path):
    """The pipeline's ONNX step and its user config (dynamic batching, an instance group) load on
    perfkit_server as it is today, and compute the reference logits."""
    zoo.build("pipeline_classifier", tmp_path)
    server = perfkit_server(
        tmp_path, "--model-control-mode=explicit", "--load-model=pipeline_classifier"
    )
    client = httpclient.InferenceServerClient(server.http_url)
    pixels = _pipeline.preprocess(_images(4))
    inp = httpclient.InferInput("INPUT0", list(pixels.shape), "FP32")
    inp.set_data_from_numpy(pixels)
    out = client.infer("pipeline_classifier", [inp]).as_numpy("OUTPUT0")
    np.testing.assert_allclose(out, _pipeline.logits(pixels), rtol=1e-5, atol=1e-5)


def test_zoo_lists_and_builds_the_pipeline_models(tmp_path):
    listed = CliRunner().invoke(cli, ["models", "list"], terminal_width=250)
    assert listed.exit_code == 0, listed.output
    for name in (*PIPELINES, "accumulator", *_pipeline.STEPS):
        assert name in zoo.MODELS
        assert name in listed.output
    built = CliRunner().invoke(
        cli, ["models", "build", "pipeline_ensemble", "accumulator", "-r", str(tmp_path)]
    )
    assert built.exit_code == 0, built.output
    for step in _pipeline.STEPS:
        assert (tmp_path / step / "config.pbtxt").is_file()
    ensemble = load_config(tmp_path / "pipeline_ensemble" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == list(_pipeline.STEPS)
    assert (tmp_path / "pipeline_ensemble" / "1").is_dir()
    for step in _pipeline.STEPS:  # the composing models batch: a user's configs
        config = load_config(tmp_path / step / "config.pbtxt")
        assert config.HasField("dynamic_batching")
        assert [g.count for g in config.instance_group] == [1]
    accumulator = load_config(tmp_path / "accumulator" / "config.pbtxt")
    kinds = {c.name: c.control[0].kind for c in accumulator.sequence_batching.control_input}
    assert sorted(kinds) == ["CORRID", "END", "READY", "START"]
