"""The zoo's TorchScript models: fc_model_pt served with the seed's config verbatim, resnet50_pt
with the ONNX resnet50's weights (the same logits), the cache, the listing without torch, and
`perfkit run -m` on both through the embedded server over HTTP and gRPC."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perfkit import zoo
from perfkit.errors import ConfigError
from perfkit.model_repo.config import load_config
from perfkit.zoo._torch import FC_MODEL_PT_CONFIG
from tests.fixtures.server import start_server

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

# The seed's config.pbtxt, character for character.
SEED_CONFIG = """name: "fc_model_pt"
platform: "pytorch_libtorch"
max_batch_size : 64
input [ { name: "input__0" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ -1, -1, 4 ] },
         { name: "output__1" data_type: TYPE_FP32 dims: [ -1, -1, 8 ] } ]
"""


def _no_torch_env(tmp_path: Path) -> dict[str, str]:
    """A subprocess environment whose `import torch` fails (a FAKE torch that is not installed)."""
    fake = tmp_path / "fake-no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'torch' (FAKE)\")\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, COLUMNS="250")


def test_fc_model_pt_is_the_seed_config_verbatim(tmp_path: Path) -> None:
    model_dir = zoo.build("fc_model_pt", tmp_path)
    assert (model_dir / "config.pbtxt").read_text() == SEED_CONFIG == FC_MODEL_PT_CONFIG
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.pt"]
    config = load_config(model_dir / "config.pbtxt")
    assert zoo.model_config(zoo.spec("fc_model_pt")) == config
    assert [(t.name, list(t.dims)) for t in config.output] == [
        ("output__0", [-1, -1, 4]),
        ("output__1", [-1, -1, 8]),
    ]
    module = torch.jit.load(str(model_dir / "1" / "model.pt"))
    tokens = torch.tensor([[1, 2, 3], [-7, 10**12, 0]], dtype=torch.int64)
    out4, out8 = module(tokens)
    assert tuple(out4.shape) == (2, 3, 4)
    assert tuple(out8.shape) == (2, 3, 8)
    assert out4.dtype == out8.dtype == torch.float32
    # Seeded: a second build writes the same bytes.
    again = zoo.build("fc_model_pt", tmp_path / "again")
    assert (again / "1" / "model.pt").read_bytes() == (model_dir / "1" / "model.pt").read_bytes()


def test_a_cached_torchscript_model_is_built_once_and_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fc_model_pt marked cached with a generated config: the path resnet50_pt takes, at its size.
    name = "fc_cached"
    spec = dataclasses.replace(zoo.spec("fc_model_pt"), name=name, cached=True, config_text=None)
    monkeypatch.setitem(zoo.SPECS, name, spec)
    cache = tmp_path / "cache"
    first = zoo.build(name, tmp_path / "a", cache_dir=cache) / "1" / "model.pt"
    cached = zoo.cached_model_path(name, cache)
    assert cached.name == "model.pt"
    second = zoo.build(name, tmp_path / "b", cache_dir=cache) / "1" / "model.pt"
    assert first.stat().st_ino == second.stat().st_ino == cached.stat().st_ino
    config = load_config(tmp_path / "b" / name / "config.pbtxt")
    assert config.platform == "pytorch_libtorch"
    assert config.name == name
    assert [t.name for t in config.input] == ["input__0"]
    assert list(config.input[0].dims) == [-1]


def test_the_zoo_lists_without_torch_and_says_how_to_get_it(tmp_path: Path) -> None:
    env = _no_torch_env(tmp_path)
    listed = subprocess.run(
        [sys.executable, "-m", "perfkit", "models", "list"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    for name in ("resnet50", "resnet50_pt", "fc_model_pt"):
        assert name in listed.stdout
    built = subprocess.run(
        [sys.executable, "-m", "perfkit", "models", "build", "fc_model_pt", "identity",
         "-r", str(tmp_path / "repo")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert built.returncode != 0
    assert "pip install 'perfkit[torch]'" in " ".join(built.stderr.split())


def test_build_without_torch_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "perfkit.zoo._torch_nets", None)  # import fails
    monkeypatch.delattr(zoo, "_torch_nets", raising=False)
    with pytest.raises(ConfigError, match=r"needs torch.*pip install 'perfkit\[torch\]'"):
        zoo.build("fc_model_pt", tmp_path)


def perfkit_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perfkit", "run", "--no-live", *args],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
        env=dict(env or os.environ, COLUMNS="200"),
    )  # fmt: skip


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perfkit_run_measures_fc_model_pt(protocol: str, tmp_path: Path) -> None:
    out = tmp_path / "pa.csv"
    proc = perfkit_run("-m", "fc_model_pt", "-i", protocol, "--shape", "input__0:16", "-b", "2",
                       "--concurrency-range", "1:2", "--request-count", "40", "-f", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 3  # the header and one row per concurrency
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])


def test_perfkit_run_says_which_shape_fc_model_pt_needs() -> None:
    proc = perfkit_run("-m", "fc_model_pt", "--request-count", "10")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "--shape input__0:N" in " ".join((proc.stdout + proc.stderr).split())


@pytest.mark.slow
def test_resnet50_pt_has_the_onnx_resnet50_logits_and_perfkit_run_measures_it(
    zoo_cache_dir: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    model_dir = zoo.build("resnet50_pt", tmp_path, cache_dir=zoo_cache_dir)
    config = load_config(model_dir / "config.pbtxt")
    assert config.platform == "pytorch_libtorch"
    assert (config.input[0].name, list(config.input[0].dims)) == ("INPUT__0", [3, 224, 224])
    assert (config.output[0].name, list(config.output[0].dims)) == ("OUTPUT__0", [1000])
    module = torch.jit.load(str(model_dir / "1" / "model.pt"))
    assert sum(p.numel() for p in module.parameters()) == 25_557_032 - 26_560  # BN folded
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with torch.inference_mode():
        logits = module(torch.from_numpy(image)).numpy()
    onnx_dir = zoo.build("resnet50", tmp_path, cache_dir=zoo_cache_dir)
    session = ort.InferenceSession(
        str(onnx_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (want,) = session.run(None, {"INPUT0": image})
    np.testing.assert_allclose(logits, want, rtol=1e-3, atol=1e-3)
    assert logits.std() > 0.1

    # Served: the same logits over gRPC.
    import tritonclient.grpc as grpcclient

    with start_server(tmp_path, "--model-control-mode=explicit", "--load-model=resnet50_pt") as s:
        client = grpcclient.InferenceServerClient(s.grpc_url)
        inp = grpcclient.InferInput("INPUT__0", list(image.shape), "FP32")
        inp.set_data_from_numpy(image)
        served = client.infer("resnet50_pt", [inp]).as_numpy("OUTPUT__0")
        np.testing.assert_allclose(served, logits, rtol=1e-4, atol=1e-4)

    env = dict(os.environ, PERFKIT_CACHE=str(zoo_cache_dir))  # the build above is reused
    for protocol in ("grpc", "http"):
        proc = perfkit_run("-m", "resnet50_pt", "-i", protocol, "--concurrency-range", "1",
                           "--request-count", "3", env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Request concurrency: 1" in proc.stdout
