"""`perfkit models list|build` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from perfkit.cli import cli
from perfkit.model_repo.config import load_config


def test_models_list_names_every_model() -> None:
    result = CliRunner().invoke(cli, ["models", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("resnet50", "mlp", "identity", "add_sub"):
        assert name in result.output


def test_models_build_writes_a_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = CliRunner().invoke(
        cli, ["models", "build", "identity", "add_sub", "--model-repository", str(repo)]
    )
    assert result.exit_code == 0, result.output
    for name in ("identity", "add_sub"):
        assert load_config(repo / name / "config.pbtxt").name == name
        assert (repo / name / "1" / "model.onnx").is_file()


def test_models_build_rejects_an_unknown_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["models", "build", "nope", "-r", str(tmp_path)])
    assert result.exit_code == 2  # click usage error; `perfkit` maps it to 3
    assert "'nope' is not one of" in result.output
