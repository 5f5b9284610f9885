"""The format names a sweep may list in `[space] formats` (stdlib only: the sweep parser imports it).

    onnxruntime           the ONNX file on ONNX Runtime (CPU, or its CUDA provider on KIND_GPU)
    onnxruntime_tensorrt  the ONNX file on ONNX Runtime's TensorRT execution provider (GPU;
                          optimization.execution_accelerators.gpu_execution_accelerator "tensorrt")
    pytorch               a TorchScript model.pt on the pytorch backend (platform pytorch_libtorch)
    tensorrt              a TensorRT engine model.plan (platform tensorrt_plan; GPU)

"auto" stands for every candidate this machine can run that passes its correctness check.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("onnxruntime", "onnxruntime_tensorrt", "pytorch", "tensorrt")
AUTO = "auto"


def parse_formats(raw: Any) -> tuple[str, ...]:
    """`[space] formats` as given in a sweep file: "auto", one name, or a list of names.

    Returns ("auto",) for "auto", else the names in order without repeats. Raises ValueError
    saying what is allowed."""
    items = raw if isinstance(raw, list) else [raw]
    allowed = f'"{AUTO}" or a list of {", ".join(FORMATS)}'
    if not items or not all(isinstance(i, str) for i in items):
        raise ValueError(f"must be {allowed}, got {raw!r}")
    if AUTO in items:
        if len(items) > 1:
            raise ValueError(f'"{AUTO}" stands for every candidate: give it alone, got {raw!r}')
        return (AUTO,)
    for item in items:
        if item not in FORMATS:
            raise ValueError(f"unknown format {item!r}: must be {allowed}")
    return tuple(dict.fromkeys(items))
