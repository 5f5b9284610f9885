"""Format selection (Model Navigator's job, issue 14): from an ONNX or TorchScript model, the formats
and backends this machine can run, each checked against the source on sample inputs before the
tuner measures it; the format is a search dimension, and the winner's file and config are written
back together.

    from perfkit import formats
    formats.FORMATS                              # "onnxruntime", "onnxruntime_tensorrt", "pytorch", "tensorrt"
    prepared = formats.prepare(sweep, model_dir, base, note)  # files made + checked, sweep resolved
    formats.with_format(config, "pytorch")       # the variant serving a format (pure)
    result = prepared.finish(result)             # after the write-back: keep the winner's file

Modules: `catalog` (the formats, and what each means in config.pbtxt; pure),
`onnx_torch` (an ONNX graph as a torch module), `convert` (the conversions), `verify` (sample
inputs, runners, tolerances), `making` and `candidates` (the candidates of a tune and their files).
This package imports torch, onnx, onnxruntime and tensorrt only inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from perfkit.formats.catalog import AUTO, TABLE, check_resolved, format_of, with_format
from perfkit.sweepfile.spec import FORMATS

if TYPE_CHECKING:
    from perfkit.formats.candidates import Prepared
    from perfkit.model_repo.config import ModelConfig
    from perfkit.sweepfile import TuneSweep

__all__ = [
    "AUTO",
    "FORMATS",
    "TABLE",
    "check_resolved",
    "format_of",
    "prepare",
    "with_format",
]


def prepare(
    sweep: TuneSweep, model_dir: Path, base: ModelConfig, note: Callable[[str], None]
) -> Prepared:
    """The candidates of `sweep.space.formats`, made and checked (`perfkit.formats.candidates`)."""
    from perfkit.formats.candidates import prepare as prepare_candidates

    return prepare_candidates(sweep, model_dir, base, note)
