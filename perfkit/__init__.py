"""perfkit: measure and tune models served by Triton-compatible inference servers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
