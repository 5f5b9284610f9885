"""Placeholder: the tensorrt backend is being written (issue #11)."""

from __future__ import annotations

from collections.abc import Mapping

from perfkit_server.backends.base import Array, InstanceSpec


class TensorRTBackend:
    def __init__(self, spec: InstanceSpec) -> None:
        raise ValueError(f"model '{spec.model_name}': the tensorrt backend is not available yet")

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        raise NotImplementedError

    def close(self) -> None:
        pass
