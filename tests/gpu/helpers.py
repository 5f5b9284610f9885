"""Helpers of the `gpu` tests: repositories, inputs from a model's config, torch on CUDA as the
reference, Prometheus scrapes. Nothing here imports torch at module level (collection stays cheap
and works without torch)."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import model_config_pb2 as mc

from perfkit import zoo
from perfkit.datatypes import by_config
from perfkit.model_repo.config import config_to_json, format_config, load_config
from tests.fixtures.fake_nvml import FAKE_DIR

_INDEXED = re.compile(r"__(\d+)$")
Array = npt.NDArray[Any]


def real_nvml_env() -> dict[str, str]:
    """This process's environment without the FAKE NVML: a server started with it reads the GPUs."""
    env = dict(os.environ)
    env.pop("PERFKIT_FAKE_NVML", None)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(FAKE_DIR)]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    return env


def build_zoo(name: str, repo: Path, cache_dir: Path) -> Path:
    return zoo.build(name, repo, cache_dir=cache_dir)


def groups_config(
    config: mc.ModelConfig, groups: Sequence[dict[str, Any]] | None
) -> mc.ModelConfig:
    """A copy of `config` with these instance groups ({"kind", "count", "gpus"}); None: no
    instance_group at all (Triton's default: one KIND_AUTO instance)."""
    new = mc.ModelConfig()
    new.CopyFrom(config)
    del new.instance_group[:]
    for g in groups or ():
        group = new.instance_group.add()
        group.count = int(g.get("count", 1))
        group.kind = mc.ModelInstanceGroup.Kind.Value(g.get("kind", "KIND_AUTO"))
        group.gpus.extend(g.get("gpus", ()))
    return new


def set_instance_groups(repo: Path, name: str, groups: Sequence[dict[str, Any]] | None) -> None:
    path = repo / name / "config.pbtxt"
    path.write_text(format_config(groups_config(load_config(path), groups)))


def copy_model(repo: Path, src: str, dst: str) -> None:
    """`repo/src` copied to `repo/dst`, its config renamed."""
    shutil.copytree(repo / src, repo / dst)
    path = repo / dst / "config.pbtxt"
    config = load_config(path)
    config.name = dst
    path.write_text(format_config(config))


def override_json(repo: Path, name: str, groups: Sequence[dict[str, Any]] | None) -> str:
    """The JSON config of `repo/name` with these instance groups, for a load request."""
    config = groups_config(load_config(repo / name / "config.pbtxt"), groups)
    return json.dumps(config_to_json(config))


def config(repo: Path, name: str) -> mc.ModelConfig:
    return load_config(repo / name / "config.pbtxt")


def _order(tensors: Sequence[Any]) -> list[Any]:
    """Config tensors in the order the TorchScript module takes or returns them: by the index of
    `<name>__<index>` names, else as the config lists them (Triton's pytorch backend rules)."""
    if all(_INDEXED.search(t.name) for t in tensors):
        return sorted(tensors, key=lambda t: int(_INDEXED.search(t.name).group(1)))  # type: ignore[union-attr]
    return list(tensors)


def random_inputs(
    cfg: mc.ModelConfig, batch: int, *, seed: int = 0, variable: int = 8, int_high: int = 4
) -> dict[str, Array]:
    """One batch for each input of `cfg` (variable dims: `variable`; integers in [0, int_high))."""
    rng = np.random.default_rng(seed)
    out: dict[str, Array] = {}
    for t in cfg.input:
        shape = ([batch] if cfg.max_batch_size > 0 else []) + [
            variable if d < 0 else int(d) for d in t.dims
        ]
        dtype = by_config(mc.DataType.Name(t.data_type)).numpy
        assert dtype is not None, f"{t.name}: no numpy type for {mc.DataType.Name(t.data_type)}"
        if np.issubdtype(dtype, np.integer):
            out[t.name] = rng.integers(0, int_high, size=shape).astype(dtype)
        else:
            out[t.name] = rng.standard_normal(shape).astype(dtype)
    return out


def v2_datatype(cfg: mc.ModelConfig, name: str) -> str:
    t = next(t for t in cfg.input if t.name == name)
    return by_config(mc.DataType.Name(t.data_type)).v2


def torch_reference(
    model_pt: Path, cfg: mc.ModelConfig, inputs: dict[str, Array], device: str
) -> dict[str, Array]:
    """The TorchScript module run by torch itself on `device`: outputs by config name."""
    import torch

    module = torch.jit.load(str(model_pt), map_location=device)  # type: ignore[no-untyped-call]
    module.eval()
    args = [torch.from_numpy(inputs[t.name]).to(device) for t in _order(cfg.input)]
    with torch.inference_mode():
        result = module(*args)
    results = list(result) if isinstance(result, tuple | list) else [result]
    outputs = _order(cfg.output)
    assert len(results) >= len(outputs), f"{model_pt}: {len(results)} outputs for {len(outputs)}"
    return {t.name: r.detach().cpu().numpy() for t, r in zip(outputs, results, strict=False)}


def assert_close(got: Array, want: Array, *, rel: float, what: str) -> None:
    """Same shape and dtype; values within `rel` of the reference's largest magnitude (a GPU's
    kernels for another batch size may sum in another order, TF32/FP16 included)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape}, torch gives {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, torch gives {want.dtype}"
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-6)
    worst = (
        float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0
    )
    assert worst <= rel * scale, f"{what}: off by {worst:.3g} (allowed {rel * scale:.3g})"


def scrape(metrics_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as {family: {sorted labels: value}} (a counter's `_total` sample under its family's
    name; histogram buckets left out)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (family.name, f"{family.name}_total"):
                labels = tuple(sorted(sample.labels.items()))
                out.setdefault(family.name, {})[labels] = sample.value
    return out


def by_uuid(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    """A GPU family's samples keyed by their gpu_uuid label."""
    return {dict(labels)["gpu_uuid"]: value for labels, value in samples.items()}
