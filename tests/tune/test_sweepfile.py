"""Sweep files: every shipped sweep parses; errors name file:key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfkit.errors import ConfigError
from perfkit.sweepfile import load_sweep, parse_sweep

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[model]
name = "mlp"
"""


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_sweeps_parse(path: Path) -> None:
    spec = load_sweep(path, base_dir=ROOT)
    assert spec.model
    assert spec.trials >= 1
    assert spec.objectives


def test_defaults_and_paths(tmp_path: Path) -> None:
    spec = parse_sweep(MINIMAL, "s.toml", base_dir=tmp_path)
    assert spec.repository == (tmp_path / "model_repository").resolve()
    assert spec.objectives == (("throughput_infer_per_s", "maximize"),)
    assert spec.search.sampler == "tpe"
    assert spec.url is None


def test_two_objectives_switch_to_nsga2(tmp_path: Path) -> None:
    text = MINIMAL + '[objectives]\nthroughput = "maximize"\np99_latency = "minimize"\n'
    spec = parse_sweep(text, "s.toml", base_dir=tmp_path)
    assert spec.search.sampler == "nsga2"
    assert [d for _, d in spec.objectives] == ["maximize", "minimize"]


@pytest.mark.parametrize(
    ("extra", "where", "why"),
    [
        ("[space]\nmax_batch_size = [8, 8]\n", "s.toml:space.max_batch_size", "twice"),
        ("[space]\ninstance_kind = ['KIND_TPU']\n", "s.toml:space.instance_kind", "must be one of"),
        (
            "[space]\nmax_batch_size = [4]\npreferred_batch_sizes = [[8]]\n",
            "s.toml:space.preferred_batch_sizes",
            "larger",
        ),
        ("[space]\ninstance_count = [0]\n", "s.toml:space.instance_count", ">= 1"),
        ("[space]\nbogus = 1\n", "s.toml:space.bogus", "unknown key"),
        ("[load]\nmode = 'request_rate'\n", "s.toml:load.request_rate", "required"),
        ("[load]\nconcurrency = 'x'\n", "s.toml:load.concurrency", "integers"),
        ("[objectives]\nthroughput = 'up'\n", "s.toml:objectives.throughput", "maximize"),
        ("[objectives]\nspeed = 'maximize'\n", "s.toml:objectives.speed", "unknown objective"),
        (
            "[constraints]\nlatency_percentile = 42\n",
            "s.toml:constraints.latency_percentile",
            "must be",
        ),
        ("[budget]\ntrials = 0\n", "s.toml:budget.trials", ">= 1"),
        ("[search]\nsampler = 'cmaes'\n", "s.toml:search.sampler", "must be one of"),
        ("[measure]\nmax_windows = 2\n", "s.toml:measure.max_windows", "stability_windows"),
        ("[nonsense]\n", "s.toml:nonsense", "unknown section"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, extra: str, where: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sweep(MINIMAL + extra, "s.toml", base_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(where + ":"), message
    assert why in message


def test_missing_model_name_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"s\.toml:model\.name: is required"):
        parse_sweep("[model]\nrepository = 'r'\n", "s.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"s\.toml: not valid TOML"):
        parse_sweep("[model\n", "s.toml", base_dir=tmp_path)
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".hidden", "a\\b", ""])
def test_model_name_is_checked_like_the_load_api(tmp_path: Path, name: str) -> None:
    """Issue #10 finding 10: a sweep's model name is one directory inside the repository, never a
    path (the rule of perfkit.model_repo.repository.check_model_name, which the load API uses)."""
    sweep = tmp_path / "s.toml"
    sweep.write_text(f"[model]\nname = '{name}'\n")  # a TOML literal string: no escapes
    with pytest.raises(ConfigError) as info:
        load_sweep(sweep, base_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{sweep}:model.name:"), message
    assert "model name" in message or "non-empty" in message


def test_cli_refuses_a_bad_sweep_with_file_key_and_reason(tmp_path: Path) -> None:
    from tests.tune.conftest import run_perfkit

    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[space]\nmax_batch_size = [8, -1]\n")
    proc = run_perfkit("tune", str(bad))
    assert proc.returncode == 3
    assert f"{bad}:space.max_batch_size: values must be >= 0, got -1" in " ".join(
        proc.stderr.split()
    )
