"""Format candidates on real files: ONNX -> TorchScript (the graph interpreter, traced) checked
against ONNX Runtime, TorchScript -> ONNX (torch's TorchScript-based exporter), an unsupported op
and a wrong candidate refused with the reason, and the files kept or removed after a tune."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from perfkit import zoo
from perfkit.errors import ConfigError
from perfkit.formats import candidates, convert, verify
from perfkit.formats.catalog import with_format
from perfkit.model_repo.config import format_config, load_config
from perfkit.sweepfile import SpaceSpec, TuneSweep, parse_sweep
from perfkit.tune import output
from tests.report.builders import make_tune

torch = pytest.importorskip("torch")


def _prepare(repo: Path, model: str, *formats: str) -> candidates.Prepared:
    sweep = TuneSweep(
        source="t.toml", model=model, repository=repo, space=SpaceSpec(formats=formats)
    )
    model_dir = repo / model
    return candidates.prepare(sweep, model_dir, load_config(model_dir / "config.pbtxt"), print)


@pytest.mark.parametrize("name", ["mlp", "add_sub"])
def test_onnx_to_torchscript_matches_onnx_runtime(name: str, tmp_path: Path) -> None:
    model_dir = zoo.build(name, tmp_path)
    config = load_config(model_dir / "config.pbtxt")
    convert.onnx_to_torchscript(model_dir / "1/model.onnx", config, model_dir / "1/model.pt", {})

    module = torch.jit.load(str(model_dir / "1/model.pt"))
    # forward() takes the config's inputs by name (Triton's pytorch backend maps them so).
    arguments = [a.name for a in module.forward.schema.arguments][1:]
    assert arguments == [t.name for t in config.input]
    if name == "mlp":  # the weights are the module's buffers, not constants inlined in its code
        assert sorted(v.numel() for v in module.state_dict().values())[-1] == 1024 * 1024
    inputs = verify.sample_inputs(config, {})
    assert next(iter(inputs.values())).shape[0] == 2  # checked at batch 2, traced at batch 1
    source = verify.ort_runner(model_dir / "1/model.onnx", config, ["CPUExecutionProvider"])
    candidate = verify.torch_runner(model_dir / "1/model.pt", config, "cpu")
    check = verify.compare(config, source(inputs), candidate(inputs))
    assert check.ok, check.describe()
    assert check.max_abs_error < 1e-5


def test_an_unsupported_op_is_not_offered_and_names_the_op(tmp_path: Path) -> None:
    model_dir = tmp_path / "erf"
    (model_dir / "1").mkdir(parents=True)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Erf", ["INPUT0"], ["OUTPUT0"])],
        "erf",
        [vi("INPUT0", TensorProto.FLOAT, ["batch", 4])],
        [vi("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(model_dir / "1/model.onnx"))
    (model_dir / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    )
    prepared = _prepare(tmp_path, "erf", "onnxruntime", "pytorch")
    by_format = {c.format: c for c in prepared.candidates}
    assert by_format["onnxruntime"].offered
    assert not by_format["pytorch"].offered
    assert "ONNX op(s) Erf not supported" in by_format["pytorch"].reason
    assert prepared.sweep.space.formats == ("onnxruntime",)
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx"]
    assert not (model_dir / candidates.MANIFEST).exists()
    # Asked for alone, nothing is left to tune: the error says why.
    with pytest.raises(ConfigError, match=r"t.toml:space.formats: none of pytorch .*Erf"):
        _prepare(tmp_path, "erf", "pytorch")


def test_a_wrong_candidate_fails_the_check_with_its_error(tmp_path: Path) -> None:
    model_dir = zoo.build("add_sub", tmp_path)
    config = load_config(model_dir / "config.pbtxt")
    # The user's own model.pt computes INPUT0 + INPUT1 twice: OUTPUT1 is wrong.
    wrong = onnx.load(str(model_dir / "1/model.onnx"))
    wrong.graph.node[1].op_type = "Add"
    onnx.save(wrong, str(tmp_path / "wrong.onnx"))
    convert.onnx_to_torchscript(tmp_path / "wrong.onnx", config, model_dir / "1/model.pt", {})
    user_file = (model_dir / "1/model.pt").read_bytes()

    prepared = _prepare(tmp_path, "add_sub", "onnxruntime", "pytorch")
    pytorch = {c.format: c for c in prepared.candidates}["pytorch"]
    assert pytorch.origin == "already there"
    assert not pytorch.offered
    assert pytorch.check is not None
    assert not pytorch.check.ok
    assert pytorch.reason.startswith("fails the check against the source: max abs error")
    assert "output 'OUTPUT1' differs by up to" in pytorch.reason
    assert "atol 0.0001 + rtol 0.001" in pytorch.reason
    assert pytorch.check.max_abs_error > 1.0
    assert (model_dir / "1/model.pt").read_bytes() == user_file  # never removed nor replaced
    # The comparison itself: a wrong shape and an integer mismatch are failures too.
    ref = {"OUTPUT0": np.zeros((2, 16), np.float32), "OUTPUT1": np.zeros((2, 16), np.float32)}
    bad = dict(ref, OUTPUT1=np.zeros((1, 16), np.float32))
    assert "has shape [1, 16]" in verify.compare(config, ref, bad).failure


def test_torchscript_source_gets_an_onnx_runtime_candidate(tmp_path: Path) -> None:
    onnx_dir = zoo.build("add_sub", tmp_path / "src")
    config = load_config(onnx_dir / "config.pbtxt")
    model_dir = tmp_path / "repo" / "add_sub_pt"
    (model_dir / "1").mkdir(parents=True)
    convert.onnx_to_torchscript(onnx_dir / "1/model.onnx", config, model_dir / "1/model.pt", {})
    pt_config = with_format(config, "pytorch")
    pt_config.name = "add_sub_pt"
    (model_dir / "config.pbtxt").write_text(format_config(pt_config))

    prepared = _prepare(tmp_path / "repo", "add_sub_pt", "auto")
    by_format = {c.format: c for c in prepared.candidates}
    assert prepared.source == "pytorch"
    assert by_format["pytorch"].origin == "the source"
    ort = by_format["onnxruntime"]
    assert ort.offered
    assert ort.origin == "converted from TorchScript"
    assert ort.check is not None
    assert ort.check.max_abs_error == 0.0
    assert "needs a GPU" in by_format["tensorrt"].reason
    assert "needs a GPU" in by_format["onnxruntime_tensorrt"].reason
    assert prepared.sweep.space.formats == ("onnxruntime", "pytorch")
    exported = onnx.load(str(model_dir / "1/model.onnx"))
    assert [i.name for i in exported.graph.input] == ["INPUT0", "INPUT1"]
    assert prepared.added == ("1/model.onnx",)


def test_finish_keeps_the_winners_file_and_removes_the_rest(tmp_path: Path) -> None:
    model_dir = zoo.build("mlp", tmp_path)
    base = load_config(model_dir / "config.pbtxt")
    # A tune that stopped before its clean-up left its file listed: it is perfkit's, remade.
    (model_dir / "1/model.pt").write_bytes(b"left over")
    (model_dir / candidates.MANIFEST).write_text('{"added": ["1/model.pt"]}')
    prepared = _prepare(tmp_path, "mlp", "onnxruntime", "pytorch")
    assert prepared.candidates[1].origin == "converted from ONNX"
    assert prepared.candidates[1].offered
    assert prepared.added == ("1/model.pt",)
    assert (model_dir / candidates.MANIFEST).exists()  # until the tune ends
    # A study whose best trial runs the pytorch variant, written back as the tuner does.
    result = make_tune(multi_objective=False)
    best = dataclasses.replace(result.trials[5], params={"format": "pytorch"})
    winner = format_config(with_format(base, "pytorch"))
    result = dataclasses.replace(
        result,
        trials=(*result.trials[:5], best, *result.trials[6:]),
        best_config_pbtxt=winner,
        settings=prepared.settings(),
    )
    wb = output.write_back(result, model_dir, dry_run=False)
    assert wb.written_to == model_dir / "config.pbtxt"
    result = prepared.finish(result)

    assert load_config(model_dir / "config.pbtxt").platform == "pytorch_libtorch"
    assert (model_dir / "config.pbtxt.orig").exists()
    assert (model_dir / "1/model.pt").is_file()
    assert (model_dir / "1/model.onnx").is_file()
    assert not (model_dir / candidates.MANIFEST).exists()
    formats = result.settings["formats"]
    assert formats["best"] == formats["served"] == "pytorch"
    assert formats["kept"] == "1/model.pt"
    assert formats["candidates"]["pytorch"]["verified"] is True
    assert "1/model.pt (made by perfkit, kept)" in result.messages[-1]


def test_sweep_formats_key() -> None:
    def space(value: str) -> SpaceSpec:
        text = f'[model]\nname = "m"\n[space]\nformats = {value}\n'
        return parse_sweep(text, "s.toml").space

    assert space('"auto"').formats == ("auto",)
    assert space('["pytorch", "onnxruntime", "pytorch"]').formats == ("pytorch", "onnxruntime")
    with pytest.raises(
        ConfigError, match=r's.toml:space.formats: must be "auto" alone or a list of onnxruntime, '
    ):
        space('["onnx"]')
