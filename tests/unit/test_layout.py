"""The shape of the tree (issue 9): no module over 500 lines but the HTTP/2 server's framing, and
the command-line layer stays a mapping from flags to specs and from results to output."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500
# The lean HTTP/2 server (framing, flow control, HPACK caching) reads best as one module.
LONGER_ALLOWED = {"server/perfkit_server/grpc_wire.py"}
# What the CLI may import: the packages' public APIs and the specs and results they take and
# give; never the load engine's internals (driver, transports, session, level, sweep).
CLI_MAY_IMPORT_PACKAGES = ("perfkit.cli", "perfkit.report", "perfkit.tune")
CLI_MAY_IMPORT = {
    "perfkit",
    "perfkit.errors",
    "perfkit.results",
    "perfkit.load",
    "perfkit.load.spec",
    "perfkit.launch",
    "perfkit.zoo",
    "perfkit.sweepfile",
    "perfkit.model_repo",
}


def modules() -> list[Path]:
    return sorted([*(ROOT / "perfkit").rglob("*.py"), *(ROOT / "server").rglob("*.py")])


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_500_lines(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    lines = len(path.read_text().splitlines())
    assert rel in LONGER_ALLOWED or lines <= MAX_LINES, (
        f"{rel} has {lines} lines (limit {MAX_LINES}): split it along a seam"
    )


@pytest.mark.parametrize(
    "path", sorted((ROOT / "perfkit" / "cli").glob("*.py")), ids=lambda p: p.name
)
def test_cli_imports_only_public_entry_points(path: Path) -> None:
    """cli/ maps flags to specs and results to output: it never reaches into the load engine."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perfkit"):
            mod = node.module
            assert mod in CLI_MAY_IMPORT or mod.startswith(CLI_MAY_IMPORT_PACKAGES), (
                f"{path.name} imports {mod}: the CLI goes through the packages' public APIs"
            )
