"""Shared fixtures. Each area keeps its fixtures in tests/fixtures/<area>.py, loaded here as plugins."""

from __future__ import annotations

import importlib.util

_PLUGINS = [
    "tests.fixtures.server",
    "tests.fixtures.load_server",
    "tests.fixtures.zoo",
    "tests.fixtures.triton",
    "tests.fixtures.postgres",
    "tests.fixtures.chromium",
]
pytest_plugins = [p for p in _PLUGINS if importlib.util.find_spec(p) is not None]
