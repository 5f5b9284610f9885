"""A perfkit_server shared by the module's tests (start-up costs seconds; tests only read)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.server import ServerHandle, start_server
from tests.load.helpers import build_repo


@pytest.fixture(scope="package")
def run_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = build_repo(tmp_path_factory.mktemp("load-repo"), tmp_path_factory.mktemp("zoo-cache"))
    with start_server(repo) as server:
        yield server
