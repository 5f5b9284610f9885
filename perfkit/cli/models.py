"""`perfkit models list|build`: the model zoo on the command line."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from perfkit import zoo
from perfkit.cli._console import out


@click.group("models")
def models() -> None:
    """List the zoo models and write them into a Triton model repository."""


def _tensor(t: zoo.TensorSpec) -> str:
    return f"{t.name} {t.datatype} [{','.join(map(str, t.dims))}]"


@models.command("list")
def list_models() -> None:
    """List the zoo models."""
    table = Table(box=None)
    # The name is what `perfkit run -m` takes: never wrapped or cut, however narrow the terminal.
    table.add_column("model", no_wrap=True)
    for column in ("max batch", "inputs", "outputs", "description"):
        table.add_column(column)
    for name, spec in zoo.SPECS.items():
        table.add_row(
            name,
            str(spec.max_batch_size),
            ", ".join(_tensor(t) for t in spec.inputs),
            ", ".join(_tensor(t) for t in spec.outputs),
            spec.description,
        )
    out.print(table)


@models.command("build")
@click.argument("names", nargs=-1, required=True, type=click.Choice(list(zoo.MODELS)))
@click.option(
    "--model-repository",
    "-r",
    "repo",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Triton model repository to write into (created if missing).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PERFKIT_CACHE",
    default=None,
    help="Where large models are built once and reused [default: $PERFKIT_CACHE or ~/.cache/perfkit].",
)
def build_models(names: tuple[str, ...], repo: Path, cache_dir: Path | None) -> None:
    """Write zoo models NAMES... into a model repository (<repo>/<name>/config.pbtxt, 1/model.onnx)."""
    for name in dict.fromkeys(names):
        path = zoo.build(name, repo, cache_dir=cache_dir)
        out.print(f"{name}: {path}")


COMMANDS: list[click.Command] = [models]
