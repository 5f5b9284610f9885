"""`Maker`: the model file of each candidate (the source's, one already there, or converted) and
its check against the source, for `perfkit.formats.candidates.prepare`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perfkit.formats import convert, verify
from perfkit.formats.catalog import ONNX, PLAN, TABLE, TORCHSCRIPT, model_file
from perfkit.model_repo.config import ModelConfig

_KIND_NAMES = {ONNX: "ONNX", TORCHSCRIPT: "TorchScript", PLAN: "a TensorRT plan"}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One format asked for: offered (its file checked) or not, and why."""

    format: str
    # The model file, relative to the model directory ("1/model.pt"); "" when not made.
    file: str = ""
    offered: bool = False
    # Why it is not offered ("" when it is).
    reason: str = ""
    # How the file came to be: "the source", "converted from ONNX", "already there".
    origin: str = ""
    check: verify.Check | None = None

    def describe(self) -> str:
        if not self.offered:
            return f"{self.format}: not offered: {self.reason}"
        checked = "" if self.check is None else f"; {self.check.describe()}"
        return f"{self.format}: {self.file} ({self.origin}{checked})"

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"offered": self.offered, "file": self.file, "origin": self.origin}
        if self.reason:
            doc["reason"] = self.reason
        if self.check is not None:
            doc.update(
                max_abs_error=self.check.max_abs_error,
                max_rel_error=self.check.max_rel_error,
                verified=self.check.ok,
                worst_output=self.check.worst_output,
            )
        return doc


class Maker:
    """Makes and checks the candidates of one model (the source's outputs computed once)."""

    def __init__(
        self,
        *,
        base: ModelConfig,
        source: str,
        source_path: Path,
        gpu: bool,
        shapes: Mapping[str, Sequence[int]],
        max_batch: int,
        model_dir: Path,
        on_added: Callable[[set[str]], None],
    ) -> None:
        self.base, self.source, self.source_path = base, source, source_path
        self.gpu, self.shapes, self.max_batch = gpu, shapes, max_batch
        self.model_dir = model_dir
        self.on_added = on_added
        # The files perfkit wrote (relative to the model directory), and each made file's error.
        self.added: set[str] = set()
        self._made: dict[str, str] = {}
        self._reference: verify.Arrays | None = None
        self._inputs: verify.Arrays | None = None
        self.batch = min(verify.BATCH, base.max_batch_size) if base.max_batch_size > 0 else 0
        self.tolerance = verify.tolerance_text()

    def candidate(self, fmt: str, rel: str) -> Candidate:
        path = self.model_dir / rel
        kind = TABLE[fmt].kind
        if path == self.source_path:
            origin = "the source"
        elif path.exists() and rel not in self.added:
            origin = "already there"
        else:
            origin = f"converted from {_KIND_NAMES[TABLE[self.source].kind]}"
            error = self._make(rel, kind)
            if error:
                return Candidate(fmt, file=rel, reason=error, origin=origin)
        if path == self.source_path and fmt == self.source and not self.gpu:
            return Candidate(fmt, file=rel, offered=True, origin=origin)  # the reference itself
        try:
            check = self._check(fmt, path)
        except verify.Unverifiable as exc:
            return Candidate(fmt, file=rel, reason=f"cannot be checked: {exc}", origin=origin)
        except Exception as exc:  # the runtimes' own errors: the candidate cannot run here
            return Candidate(
                fmt, file=rel, reason=f"fails to run here: {_first_line(exc)}", origin=origin
            )
        reason = "" if check.ok else f"fails the check against the source: {check.describe()}"
        return Candidate(fmt, file=rel, offered=check.ok, reason=reason, origin=origin, check=check)

    def _make(self, rel: str, kind: str) -> str:
        """Write the file `rel` of `kind` from the source (once); the error, "" when made."""
        if rel in self._made:
            return self._made[rel]
        self.added.add(rel)
        self.on_added(self.added)  # listed before it is written: a crash leaves it listed
        path = self.model_dir / rel
        try:
            if kind == TORCHSCRIPT:
                convert.onnx_to_torchscript(self.source_path, self.base, path, self.shapes)
            elif kind == ONNX:
                convert.torchscript_to_onnx(self.source_path, self.base, path, self.shapes)
            else:
                onnx_rel = f"{Path(rel).parent}/{model_file(self.base, 'onnxruntime')}"
                onnx_path = self.model_dir / onnx_rel
                if onnx_path != self.source_path and not onnx_path.exists():
                    error = self._make(onnx_rel, ONNX)
                    if error:
                        raise convert.ConversionFailed(f"no ONNX model to build it from: {error}")
                convert.onnx_to_plan(onnx_path, self.base, path, self.max_batch, self.shapes)
            self._made[rel] = ""
        except (convert.ConversionFailed, verify.Unverifiable) as exc:
            self._made[rel] = str(exc)
        except ImportError as exc:
            self._made[rel] = f"the conversion needs {exc.name or exc}: install it"
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. a source torch cannot load
            self._made[rel] = f"the conversion failed: {_first_line(exc)}"
        return self._made[rel]

    def _check(self, fmt: str, path: Path) -> verify.Check:
        if self._reference is None or self._inputs is None:
            self._inputs = verify.sample_inputs(self.base, self.shapes)
            self._reference = self._runner(self.source, self.source_path, gpu=False)(self._inputs)
        got = self._runner(fmt, path, gpu=self.gpu)(self._inputs)
        return verify.compare(self.base, self._reference, got)

    def _runner(self, fmt: str, path: Path, *, gpu: bool) -> verify.Runner:
        if fmt == "pytorch":
            return verify.torch_runner(path, self.base, "cuda" if gpu else "cpu")
        if fmt == "tensorrt":
            return verify.plan_runner(path, self.base)
        providers = ["CPUExecutionProvider"]
        if gpu:
            providers.insert(0, "CUDAExecutionProvider")
        if fmt == "onnxruntime_tensorrt":
            providers.insert(0, "TensorrtExecutionProvider")
        return verify.ort_runner(path, self.base, providers)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
