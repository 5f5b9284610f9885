"""The candidates of a tune's `[space] formats`: which formats this machine can run, their files
made and checked before the study, and the files kept or removed after it.

`prepare` (before the study): for each format asked ("auto": every one), why it cannot run here
(no torch, no GPU, no TensorRT, ...) or its model file in the model's latest version directory:
the source's own, a file already there, or one converted from the source (`perfkit.formats
.convert`). Each candidate is then checked against the source on sample inputs
(`perfkit.formats.verify`) and offered only when it passes; the sweep's formats become the
offered ones. The files perfkit added are listed in `<model>/.perfkit-formats.json` until the
tune ends, so a tune that stopped before cleaning up removes them the next time.

`Prepared.finish` (after the write-back): keeps the file the config on disk now reads (the
winner's, when it was written back) and removes every other file perfkit added. A file perfkit
did not add is never removed nor overwritten: a file already at a candidate's path is checked as
that candidate.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit.errors import ConfigError
from perfkit.formats.catalog import (
    AUTO,
    PLAN,
    TABLE,
    config_file,
    format_of,
    model_file,
)
from perfkit.formats.making import Candidate, Maker
from perfkit.model_repo.config import ModelConfig, load_config
from perfkit.results import TuneResult
from perfkit.sweepfile import TuneSweep
from perfkit.sweepfile.spec import FORMATS

MANIFEST = ".perfkit-formats.json"


@dataclass(frozen=True, slots=True)
class Prepared:
    """The formats of a tune: the sweep with its formats resolved, the candidates, the files."""

    sweep: TuneSweep
    source: str | None = None
    candidates: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()
    model_dir: Path | None = None
    added: tuple[str, ...] = field(default=())

    def settings(self) -> dict[str, Any]:
        """For results.json: each candidate and its check ({} without formats)."""
        if not self.candidates:
            return {}
        return {
            "formats": {
                "source": self.source,
                "candidates": {c.format: c.as_json() for c in self.candidates},
            }
        }

    def finish(self, result: TuneResult) -> TuneResult:
        """After the write-back: keep the file the config on disk reads, remove the other files
        perfkit added; the result's messages and settings say which format won and what was kept."""
        if self.model_dir is None or not self.candidates:
            return result
        on_disk = load_config(self.model_dir / "config.pbtxt")
        version = _version_dir(self.model_dir, on_disk).name
        keep = f"{version}/{config_file(on_disk)}"
        removed = [f for f in self.added if f != keep]
        for rel in removed:
            (self.model_dir / rel).unlink(missing_ok=True)
        (self.model_dir / MANIFEST).unlink(missing_ok=True)
        best = result.trial(result.best_trial)
        best_format = self.source if best is None else best.params.get("format", self.source)
        served = format_of(on_disk)
        line = f"format: the best trial runs {best_format}; the config on disk serves {served}"
        if keep in self.added:
            line += f" from {keep} (made by perfkit, kept)"
        if removed:
            line += f"; removed the files perfkit added: {', '.join(removed)}"
        formats = {**self.settings()["formats"], "best": best_format, "served": served}
        formats.update(kept=keep if keep in self.added else None, removed=removed)
        return dataclasses.replace(
            result,
            messages=(*result.messages, line),
            settings={**result.settings, "formats": formats},
        )


def _version_dir(model_dir: Path, config: ModelConfig) -> Path:
    """The version directory the tune serves: the latest (the default version policy)."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind not in (None, "latest") or (kind == "latest" and policy.latest.num_versions != 1):
        raise ConfigError(
            f"{model_dir}/config.pbtxt: version_policy serves more than the latest version; "
            "space.formats places one model file per format in the latest version only"
        )
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ConfigError(f"{model_dir}: no version directory (1/, 2/, ...) holds a model file")
    return max(versions, key=lambda p: int(p.name))


def _on_gpu(base: ModelConfig, kinds: Sequence[str]) -> bool:
    """Whether the tune runs the model on a GPU: a KIND_GPU group or kind searched, else KIND_AUTO
    (or no group) with a GPU visible."""
    from tritonclient.grpc import model_config_pb2 as mc

    own = {mc.ModelInstanceGroup.Kind.Name(g.kind) for g in base.instance_group}
    if "KIND_GPU" in own or "KIND_GPU" in kinds:
        return True
    if own and own <= {"KIND_CPU", "KIND_MODEL"}:
        return False
    from perfkit.nvml import visible_gpus

    return bool(visible_gpus())


def unavailable(fmt: str, gpu: bool) -> str:
    """Why `fmt` cannot run on this machine ("" when it can)."""
    if fmt in ("onnxruntime", "onnxruntime_tensorrt"):
        try:
            import onnxruntime as ort
        except ImportError:
            return "needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu)"
        providers = ort.get_available_providers()
        if fmt == "onnxruntime_tensorrt":
            if not gpu:
                return "needs a GPU (KIND_GPU instances): ONNX Runtime's TensorRT provider"
            if "TensorrtExecutionProvider" not in providers:
                return f"this onnxruntime has no TensorRT provider (it has {', '.join(providers)})"
        elif gpu and "CUDAExecutionProvider" not in providers:
            return (
                "KIND_GPU, and this onnxruntime has no CUDA provider: pip install onnxruntime-gpu"
            )
        return ""
    try:
        import torch
    except ImportError:
        return "needs torch (pip install 'perfkit[torch]')"
    if fmt == "pytorch":
        if gpu and not torch.cuda.is_available():
            return f"KIND_GPU, and torch {torch.__version__} sees no CUDA GPU"
        return ""
    if not gpu:
        return "needs a GPU (a TensorRT plan runs on KIND_GPU instances)"
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"needs TensorRT's Python package to build the plan ({exc})"
    if not torch.cuda.is_available():
        return "the plan's check runs on CUDA tensors, and torch sees no CUDA GPU"
    return ""


def _read_manifest(model_dir: Path) -> set[str]:
    try:
        doc = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
        return {str(f) for f in doc.get("added", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def _write_manifest(model_dir: Path, added: Sequence[str]) -> None:
    path = model_dir / MANIFEST
    if added:
        path.write_text(json.dumps({"added": sorted(added)}) + "\n", encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def prepare(
    sweep: TuneSweep, model_dir: Path, base: ModelConfig, note: Callable[[str], None]
) -> Prepared:
    """Make and check the candidates of `sweep.space.formats` (see the module docstring).

    Raises ConfigError when the model is not an ONNX or TorchScript model, or none of the
    formats asked can run here and pass the check."""
    asked = sweep.space.formats
    if not asked:
        return Prepared(sweep=sweep)
    where = f"{sweep.source}:space.formats"
    source = format_of(base)
    if source is None or TABLE[source].kind == PLAN:
        raise ConfigError(
            f"{where}: model {sweep.model!r} serves {base.platform or base.backend or '(none)'}; "
            "formats are chosen from an ONNX (onnxruntime) or TorchScript (pytorch) model. "
            "Remove space.formats."
        )
    version_dir = _version_dir(model_dir, base)
    source_path = version_dir / config_file(base)
    if not source_path.is_file():
        raise ConfigError(f"{where}: the model file {source_path} does not exist")
    from perfkit.load.spec import parse_shapes

    for rel in _read_manifest(model_dir):  # left by a tune that stopped before its clean-up
        if model_dir / rel != source_path:
            (model_dir / rel).unlink(missing_ok=True)
    maker = Maker(
        base=base,
        source=source,
        source_path=source_path,
        gpu=_on_gpu(base, sweep.space.instance_kind),
        shapes=parse_shapes(sweep.load.shapes, flag="load.shape"),
        max_batch=max((base.max_batch_size, *sweep.space.max_batch_size)),
        model_dir=model_dir,
        on_added=lambda added: _write_manifest(model_dir, sorted(added)),
    )
    names = FORMATS if asked == (AUTO,) else asked
    candidates: list[Candidate] = []
    for fmt in names:
        reason = unavailable(fmt, maker.gpu)
        if reason:
            candidates.append(Candidate(fmt, reason=reason))
        else:
            candidates.append(maker.candidate(fmt, f"{version_dir.name}/{model_file(base, fmt)}"))
    used = {c.file for c in candidates if c.offered}
    for rel in sorted(maker.added - used):  # the files of candidates not offered go at once
        (model_dir / rel).unlink(missing_ok=True)
    added = tuple(sorted(maker.added & used))
    _write_manifest(model_dir, added)
    offered = tuple(c.format for c in candidates if c.offered)
    notes = [
        f"formats of {sweep.model} (source {source}, {source_path.name}), checked at batch "
        f"{maker.batch} against the source: {maker.tolerance}",
        *(f"  {c.describe()}" for c in candidates),
    ]
    for line in notes:
        note(line)
    if not offered:
        raise ConfigError(
            f"{where}: none of {', '.join(names)} can be tuned here: "
            + "; ".join(c.describe() for c in candidates)
        )
    space = dataclasses.replace(sweep.space, formats=offered)
    return Prepared(
        sweep=dataclasses.replace(sweep, space=space),
        source=source,
        candidates=tuple(candidates),
        notes=tuple(notes),
        model_dir=model_dir,
        added=added,
    )
