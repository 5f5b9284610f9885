"""Small torch modules the pytorch backend tests script and serve (tests/server/test_pytorch_backend.py).

No `from __future__ import annotations`: TorchScript reads these annotations as types.
"""

import torch
from torch import Tensor, nn


class AddSub(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return a + b, a - b


class DictIn(nn.Module):
    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return 2 * x["a"] + x["b"]


class AsDouble(nn.Module):
    """Returns FP64 where its config says FP32."""

    def forward(self, x: Tensor) -> Tensor:
        return x.double()


class AllTypes(nn.Module):
    """One input per Triton datatype, each returned changed and in its own dtype."""

    def forward(
        self,
        b: Tensor,
        u8: Tensor,
        i8: Tensor,
        i16: Tensor,
        i32: Tensor,
        i64: Tensor,
        f16: Tensor,
        f32: Tensor,
        f64: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return (
            torch.logical_not(b),
            u8 + 1,
            -i8,
            i16 * 2,
            i32 - 7,
            i64 * 1000000000,
            f16 * 0.5,
            f32 / 3.0,
            f64 * 1e100,
        )
