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
    "tests.fixtures.fake_nvml",
]
pytest_plugins = [p for p in _PLUGINS if importlib.util.find_spec(p) is not None]

# `make fuzz` runs the HTTP/2 fuzz tests (tests/server/test_h2_fuzz.py) under this profile.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is a test extra; only the fuzz tests need it
    pass
else:
    _hypothesis_settings.register_profile("fuzz", max_examples=2000, deadline=None)
