"""The zoo writes Triton model repositories whose ONNX graphs compute what they claim (checked with ONNX Runtime)."""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from perfkit import zoo
from perfkit.errors import ModelError
from perfkit.model_repo.config import load_config


def _session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _inputs(spec: zoo.ZooModel, batch: int, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal((batch, *t.dims), dtype=np.float32) for t in spec.inputs}


@pytest.mark.parametrize("name", ["identity", "add_sub", "mlp"])
def test_config_matches_graph(zoo_repo: Path, name: str) -> None:
    spec = zoo.spec(name)
    config = load_config(zoo_repo / name / "config.pbtxt")
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == spec.max_batch_size
    assert not config.HasField("dynamic_batching")
    assert [(g.kind, g.count) for g in config.instance_group] == [(2, 1)]  # KIND_CPU x1

    session = _session(zoo_repo / name)
    for declared, actual in [
        (config.input, session.get_inputs()),
        (config.output, session.get_outputs()),
    ]:
        assert [t.name for t in declared] == [t.name for t in actual]
        for d, a in zip(declared, actual, strict=True):
            assert a.type == "tensor(float)"
            assert d.data_type == 11  # TYPE_FP32
            assert a.shape == ["batch", *d.dims]  # dynamic batch dim, dims exclude it


def test_identity_returns_its_input(zoo_repo: Path) -> None:
    x = _inputs(zoo.spec("identity"), 64)
    (y,) = _session(zoo_repo / "identity").run(None, x)
    np.testing.assert_array_equal(y, x["INPUT0"])


def test_add_sub_computes_sum_and_difference(zoo_repo: Path) -> None:
    x = _inputs(zoo.spec("add_sub"), 8)
    out0, out1 = _session(zoo_repo / "add_sub").run(["OUTPUT0", "OUTPUT1"], x)
    np.testing.assert_array_equal(out0, x["INPUT0"] + x["INPUT1"])
    np.testing.assert_array_equal(out1, x["INPUT0"] - x["INPUT1"])


@pytest.mark.parametrize("batch", [1, 32])
def test_mlp_matches_numpy(zoo_repo: Path, batch: int) -> None:
    path = zoo_repo / "mlp" / "1" / "model.onnx"
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    x = _inputs(zoo.spec("mlp"), batch)["INPUT0"]
    h = x
    for i in range(3):
        h = h @ weights[f"fc{i}.weight"] + weights[f"fc{i}.bias"]
        if i < 2:
            h = np.maximum(h, 0)
    assert [weights[f"fc{i}.weight"].shape for i in range(3)] == [
        (256, 1024),
        (1024, 1024),
        (1024, 10),
    ]
    (y,) = _session(zoo_repo / "mlp").run(None, {"INPUT0": x})
    assert y.shape == (batch, 10)
    np.testing.assert_allclose(y, h, rtol=1e-4, atol=1e-4)
    assert (
        zoo.parameter_count(onnx.load(str(path))) == 256 * 1024 + 1024 + 1024 * 1024 + 1024 + 10250
    )


@pytest.mark.parametrize("name", ["identity", "add_sub", "mlp"])
def test_builds_are_deterministic(zoo_repo: Path, tmp_path: Path, name: str) -> None:
    zoo.build(name, tmp_path)
    for rel in ("config.pbtxt", "1/model.onnx"):
        assert (tmp_path / name / rel).read_bytes() == (zoo_repo / name / rel).read_bytes()


def test_unknown_model_names_the_zoo(tmp_path: Path) -> None:
    with pytest.raises(
        ModelError, match=r"unknown zoo model 'resnet51'.*resnet50, mlp, identity, add_sub"
    ):
        zoo.build("resnet51", tmp_path)
    assert not (tmp_path / "resnet51").exists()


@pytest.fixture
def cached_mlp(monkeypatch: pytest.MonkeyPatch) -> str:
    """A small model marked `cached`, to exercise the cache path without building resnet50."""
    name = "mlp_cached"
    monkeypatch.setitem(
        zoo.SPECS, name, dataclasses.replace(zoo.spec("mlp"), name=name, cached=True)
    )
    return name


def test_cached_model_is_built_once_and_linked(cached_mlp: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = zoo.build(cached_mlp, tmp_path / "a", cache_dir=cache) / "1" / "model.onnx"
    cached = zoo.cached_model_path(cached_mlp, cache)
    assert cached.is_file()
    assert cached.parent.name == f"{cached_mlp}-v{zoo.BUILDER_VERSION}"
    # Read-only, so a write through a hard link cannot silently change the cache.
    assert not os.stat(cached).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    mtime = cached.stat().st_mtime_ns
    second = zoo.build(cached_mlp, tmp_path / "b", cache_dir=cache) / "1" / "model.onnx"
    assert cached.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert first.stat().st_ino == second.stat().st_ino == cached.stat().st_ino
    assert load_config(tmp_path / "b" / cached_mlp / "config.pbtxt").name == cached_mlp
    # Rebuilding into the same repository replaces the entry and keeps it valid.
    zoo.build(cached_mlp, tmp_path / "b", cache_dir=cache)
    assert second.read_bytes() == cached.read_bytes()


def test_cache_dir_comes_from_perfkit_cache(
    cached_mlp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERFKIT_CACHE", str(tmp_path / "envcache"))
    zoo.build(cached_mlp, tmp_path / "repo")
    assert zoo.cached_model_path(cached_mlp).is_relative_to(tmp_path / "envcache")
    assert zoo.cached_model_path(cached_mlp).is_file()


def test_concurrent_builds_leave_a_valid_cache(cached_mlp: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    errors: list[BaseException] = []

    def build(i: int) -> None:
        try:
            zoo.build(cached_mlp, tmp_path / f"repo{i}", cache_dir=cache)
        except BaseException as exc:  # collected and re-raised by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = zoo.spec(cached_mlp).graph().SerializeToString()
    assert zoo.cached_model_path(cached_mlp, cache).read_bytes() == expected
    for i in range(4):
        assert (tmp_path / f"repo{i}" / cached_mlp / "1" / "model.onnx").read_bytes() == expected
    assert [p.name for p in zoo.cached_model_path(cached_mlp, cache).parent.iterdir()] == [
        "model.onnx"
    ]


@pytest.mark.slow
def test_resnet50(zoo_cache_dir: Path, tmp_path: Path) -> None:
    model_dir = zoo.build("resnet50", tmp_path, cache_dir=zoo_cache_dir)
    model = onnx.load(str(model_dir / "1" / "model.onnx"))
    # torchvision resnet50: 25,557,032 parameters; BN folded keeps one bias per BN channel (26,560).
    assert zoo.parameter_count(model) == 25_557_032 - 26_560
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 53
    assert "BatchNormalization" not in ops
    # v1.5: the strided conv of a downsampling bottleneck is the 3x3 one.
    strided = {
        n.name
        for n in model.graph.node
        for a in n.attribute
        if n.op_type == "Conv" and a.name == "strides" and list(a.ints) == [2, 2]
    }
    assert {"layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"} <= strided
    assert not any(name.endswith(".conv1") and name.startswith("layer") for name in strided)

    config = load_config(model_dir / "config.pbtxt")
    assert list(config.input[0].dims) == [3, 224, 224]
    assert list(config.output[0].dims) == [1000]
    x = _inputs(zoo.spec("resnet50"), 2)
    (y,) = _session(model_dir).run(None, x)
    assert y.shape == (2, 1000)
    assert np.isfinite(y).all()
    assert y.std() > 0.1
    # The cache is reused by a second repository.
    again = zoo.build("resnet50", tmp_path / "again", cache_dir=zoo_cache_dir)
    assert (again / "1" / "model.onnx").stat().st_ino == (
        model_dir / "1" / "model.onnx"
    ).stat().st_ino
