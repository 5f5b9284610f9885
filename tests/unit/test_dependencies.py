"""The declared dependencies (pyproject.toml) against what the code imports.

- Every requirement of the core install and of each extra is used where that extra is for: imported
  by perfkit/ or server/perfkit_server (core, server, server-gpu, gpu, docker, torch), by tests/ or
  benchmarks/ (test, postgres), or, for what is never imported (pytest plugins, the linters, a
  database driver, a tritonserver in a wheel), named where it is used.
- The GPU extras never bring the CPU onnxruntime (onnxruntime-gpu is the same module).
- `perfkit --help` and a remote `perfkit run -u URL` import no module of the server's stack (an
  import hook refuses them in the subprocess and reports any attempt), and the embedded default
  without the `server` extra says what to install (exit 3).
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.fixtures.server import ServerHandle

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PYPROJECT["optional-dependencies"]

CODE = ("perfkit", "server/perfkit_server")
TESTS = ("tests", "benchmarks")
# Where each extra's requirements must be imported; the core install's are perfkit's own, dev's
# type stubs type the code.
SCOPE = {"": CODE, "test": TESTS, "postgres": TESTS, "dev": CODE + TESTS}

# Import names of distributions that are not installed here (the GPU ones), and of type stubs
# (used by the imports they type).
KNOWN_IMPORTS = {
    "onnxruntime-gpu": {"onnxruntime"},
    "nvidia-ml-py": {"pynvml"},
    "cupy-cuda12x": {"cupy"},
    "tensorrt": {"tensorrt"},
    "pandas-stubs": {"pandas"},
    "types-psutil": {"psutil"},
    "types-protobuf": {"google"},
}
# Used but never imported: (file, text that shows the use).
USED_WITHOUT_IMPORT = {
    "pytest-timeout": ("pyproject.toml", "\ntimeout = "),
    "pytest-asyncio": ("pyproject.toml", "\nasyncio_mode = "),
    "pytest-xdist": ("Makefile", "-n auto --dist loadfile"),
    # SQLAlchemy's driver for optuna's postgresql:// storage URLs (the shared-study tests).
    "psycopg2-binary": ("tests/fixtures/postgres.py", "postgresql://"),
    # The tritonserver binary in the wheel, found by perfkit.launch.triton.
    "nvidia-pytriton": ("perfkit/launch/triton.py", "pytriton"),
    "ruff": ("Makefile", "$(BIN)/ruff check"),
    "mypy": ("Makefile", "$(BIN)/mypy"),
    "import-linter": ("Makefile", "$(BIN)/lint-imports"),
    "vulture": ("Makefile", "$(BIN)/vulture"),
}
# The server's stack and the other extras: what a remote `perfkit run` must never import.
SERVER_ONLY = (
    "perfkit_server", "onnxruntime", "httptools", "hpack", "docker", "torch", "tensorrt", "cupy",
)  # fmt: skip


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@cache
def _installed_imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            out.setdefault(_norm(dist), set()).add(module)
    return out


def import_names(dist: str) -> set[str]:
    names = KNOWN_IMPORTS.get(dist) or _installed_imports().get(_norm(dist))
    assert names, (
        f"{dist} is not installed here and its import name is unknown: add it to KNOWN_IMPORTS "
        "in tests/unit/test_dependencies.py"
    )
    return names


@cache
def imported_top_levels(roots: tuple[str, ...]) -> frozenset[str]:
    """The top-level module of every absolute import (at any depth, importorskip and
    import_module included) in the .py files under roots."""
    found: set[str] = set()
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
                elif (  # pytest.importorskip("x"), importlib.import_module("x")
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("importorskip", "import_module")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    found.add(node.args[0].value.split(".")[0])
    return frozenset(found)


def requirements(extra: str) -> list[Requirement]:
    """The extra's requirements ("" for the core install), perfkit's own extras left out."""
    reqs = [Requirement(r) for r in (EXTRAS[extra] if extra else PYPROJECT["dependencies"])]
    for req in reqs:
        if req.name == "perfkit":
            assert req.extras <= EXTRAS.keys(), f"[{extra}] names an unknown extra: {req}"
    return [req for req in reqs if req.name != "perfkit"]


def expanded(extra: str) -> set[str]:
    """Every distribution an extra brings (its perfkit extras expanded), by normalized name."""
    out = {_norm(r.name) for r in requirements(extra)}
    for req in EXTRAS[extra]:
        parsed = Requirement(req)
        if parsed.name == "perfkit":
            for inner in parsed.extras:
                out |= expanded(inner)
    return out


@pytest.mark.parametrize("extra", ["", *EXTRAS])
def test_every_declared_dependency_is_used(extra):
    roots = SCOPE.get(extra, CODE)
    imported = imported_top_levels(roots)
    unused = []
    for req in requirements(extra):
        if req.name in USED_WITHOUT_IMPORT:
            path, text = USED_WITHOUT_IMPORT[req.name]
            if text not in (ROOT / path).read_text():
                unused.append(f"{req.name} (not used in {path} any more)")
        elif not import_names(req.name) & imported:
            unused.append(f"{req.name} (none of {sorted(import_names(req.name))} imported)")
    where = " or ".join(f"{r}/" for r in roots)
    assert not unused, (
        f"pyproject.toml [{extra or 'project.dependencies'}] declares what nothing in {where} "
        f"uses: {', '.join(unused)}. Drop it, or move it to the extra whose code imports it."
    )


def test_gpu_extras_never_bring_the_cpu_onnxruntime():
    core = {_norm(r.name) for r in requirements("")}
    assert "onnxruntime" not in core
    assert "onnxruntime-gpu" not in core
    for extra in EXTRAS:
        both = {"onnxruntime", "onnxruntime-gpu"} <= expanded(extra)
        assert not both, (
            f"[{extra}] brings onnxruntime and onnxruntime-gpu: one module, two packages"
        )
    assert "onnxruntime" not in expanded("gpu") | expanded("server-gpu") | expanded("test")
    assert "onnxruntime" in expanded("server")
    assert "onnxruntime-gpu" in expanded("server-gpu")
    # `make test` and `make demo` install dev: the embedded default and every test's stack.
    assert {"onnxruntime", "httptools", "hpack", "docker", "torch"} <= expanded("dev")


# Runs the perfkit CLI with the server-only modules refused: an attempt is written to stderr (so a
# guarded `try: import` shows too) and fails as a missing module would.
BLOCKING_CLI = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            sys.stderr.write(f"REFUSED-IMPORT {name}\\n")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
sys.argv = ["perfkit", *sys.argv[2:]]
from perfkit.cli import main
main()
"""


def perfkit_without(blocked: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKING_CLI, ",".join(blocked), *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_help_and_remote_run_import_nothing_of_the_server(perfkit_server, zoo_repo):
    helped = perfkit_without(SERVER_ONLY, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "REFUSED-IMPORT" not in helped.stderr, helped.stderr
    server: ServerHandle = perfkit_server(zoo_repo)
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        p = perfkit_without(
            SERVER_ONLY, "run", "--no-live", "-m", "add_sub", "-u", url, "-i", protocol,
            "--concurrency-range", "1", "-p", "250", "-s", "1000", "-r", "4",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert "REFUSED-IMPORT" not in p.stderr, p.stderr
        assert "Request concurrency: 1" in p.stdout


@pytest.mark.parametrize("missing", ["onnxruntime", "httptools", "hpack"])
def test_embedded_default_without_the_server_extra_says_what_to_install(missing):
    p = perfkit_without((missing,), "run", "--no-live", "-m", "add_sub", "--concurrency-range", "1")
    assert p.returncode == 3, p.stdout + p.stderr
    said = " ".join(p.stderr.split())
    assert (
        "the embedded server needs perfkit[server]: pip install 'perfkit[server]', or measure a "
        f"running server with -u URL (missing here: {missing})"
    ) in said
    assert "Traceback" not in p.stderr
