"""Report test fixtures: headless Chromium (tests/fixtures/chromium.py), also when the root
conftest does not list that plugin."""

from __future__ import annotations

from tests.fixtures.chromium import chromium

__all__ = ["chromium"]
