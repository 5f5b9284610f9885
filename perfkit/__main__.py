"""`python -m perfkit`."""

from __future__ import annotations

from perfkit.cli import main

main()
