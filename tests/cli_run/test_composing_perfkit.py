"""The composing-model and cache breakdown of `perfkit run` against perfkit_server (issue 13,
acceptances 2 and 4): the repository `test_composing.py` serves from the real tritonserver (python
composing models, an ensemble of them and a BLS model), here served by perfkit_server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_run.test_cli import no_traceback, perfkit
from tests.cli_run.test_composing import composing_block, write_pipelines
from tests.fixtures.server import ServerHandle, start_server
from tests.fixtures.triton import write_identity


@pytest.fixture
def pipelines(tmp_path: Path) -> Iterator[ServerHandle]:
    write_pipelines(tmp_path / "repo")
    with start_server(tmp_path / "repo") as server:
        yield server


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_ensemble_composing_breakdown(pipelines, proto):
    url = pipelines.http_url if proto == "http" else pipelines.grpc_url
    p = perfkit("-m", "pipe", "-u", url, "-i", proto, "--concurrency-range", "2",
                "--request-count", "60")  # fmt: skip
    assert p.returncode == 0, p.stderr
    no_traceback(p)
    assert "  Composing models: " in p.stdout.splitlines()
    blocks = composing_block(p.stdout)
    assert sorted(blocks) == ["first", "second"]
    for b in blocks.values():
        assert b["version"] == 1
        assert b["Successful request count"] == 60


def test_bls_composing_models(pipelines):
    p = perfkit("-m", "bls", "-u", pipelines.grpc_url, "-i", "grpc", "--request-count", "40",
                "--bls-composing-models", "first, second:1")  # fmt: skip
    assert p.returncode == 0, p.stderr
    blocks = composing_block(p.stdout)
    assert sorted(blocks) == ["first", "second"]
    assert all(b["Successful request count"] == 40 for b in blocks.values())


def test_response_cache_figures(tmp_path):
    repo = tmp_path / "repo"
    write_identity(repo, "cached")
    cfg = repo / "cached" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "response_cache { enable: true }\n")
    with start_server(repo, "--cache-config", "local,size=1048576") as server:
        p = perfkit("-m", "cached", "-u", server.http_url, "--input-data", "zero",
                    "--request-count", "50")  # fmt: skip
    assert p.returncode == 0, p.stderr
    hits = int(re.search(r"    Cache hit count: (\d+)", p.stdout).group(1))  # type: ignore[union-attr]
    misses = int(re.search(r"    Cache miss count: (\d+)", p.stdout).group(1))  # type: ignore[union-attr]
    assert misses >= 1
    assert hits + misses == 50
    assert hits >= 40
