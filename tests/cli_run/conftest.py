"""tests/cli_run runs `perfkit run` against the shared `load_server` (tests/fixtures/load_server.py)."""

from __future__ import annotations

import pytest

from tests.fixtures.server import ServerHandle


@pytest.fixture
def run_server(load_server: ServerHandle) -> ServerHandle:
    return load_server
