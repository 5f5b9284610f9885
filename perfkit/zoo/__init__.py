"""The model zoo: ONNX graphs built with onnx.helper and seeded weights, written as Triton model repositories.

    from perfkit import zoo
    zoo.MODELS                                  # name -> one-line description
    zoo.build("mlp", Path("repo"))              # -> repo/mlp/{config.pbtxt, 1/model.onnx}
    zoo.build("fc_model_pt", Path("repo"))      # -> repo/fc_model_pt/{config.pbtxt, 1/model.pt}

The TorchScript models (`resnet50_pt`, `fc_model_pt`; platform pytorch_libtorch) need torch
(`pip install 'perfkit[torch]'`) only to be built; the zoo lists them without it.

Large models (resnet50) are generated once into a cache ($PERFKIT_CACHE, else ~/.cache/perfkit), keyed
by name and builder version, and hard-linked (or copied, across file systems) into each repository. The
cache files are written atomically (temp file + rename) and made read-only, so concurrent builders
cannot corrupt them and a write through a hard link fails loudly instead of changing the cache.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from perfkit.errors import ConfigError, ModelError
from perfkit.model_repo.config import format_config
from perfkit.zoo._configs import BUILDER_VERSION, SPECS, TensorSpec, ZooModel, model_config
from perfkit.zoo._graphs import parameter_count

__all__ = [
    "BUILDER_VERSION",
    "MODELS",
    "SPECS",
    "TensorSpec",
    "ZooModel",
    "build",
    "cache_root",
    "cached_model_path",
    "model_config",
    "parameter_count",
    "spec",
]

logger = logging.getLogger(__name__)

MODELS: dict[str, str] = {name: s.description for name, s in SPECS.items()}


def spec(name: str) -> ZooModel:
    """The zoo model called `name`; raises `ModelError` naming the known models."""
    try:
        return SPECS[name]
    except KeyError:
        raise ModelError(
            f"unknown zoo model {name!r}; the zoo has: {', '.join(SPECS)}. "
            "See `perfkit models list`."
        ) from None


def cache_root(cache_dir: Path | None = None) -> Path:
    """The cache directory: `cache_dir`, else $PERFKIT_CACHE, else ~/.cache/perfkit."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("PERFKIT_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "perfkit"


def cached_model_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where the cached model file of a zoo model lives (it may not exist yet)."""
    filename = (SPECS[name].filename if name in SPECS else None) or "model.onnx"
    return cache_root(cache_dir) / "zoo" / f"{name}-v{BUILDER_VERSION}" / filename


# os.link errors that mean "no hard link here" (another file system, or none allowed).
_NO_HARD_LINKS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o644, replace: bool = True) -> None:
    """Write `data` to a temp file beside `path`, then rename it into place.

    With `replace=False` a file already at `path` is kept: the temp file is hard-linked to `path`,
    which fails when another writer got there first. A cache file, once there, is then never
    replaced under a reader that is hard-linking it (a rename over a file that is being linked can
    make the link fail with ENOENT on an overlay file system).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # an identical file, built by another process or thread
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _ensure_cached(model: ZooModel, cache_dir: Path | None) -> Path:
    path = cached_model_path(model.name, cache_dir)
    if path.is_file():
        return path
    logger.info("building %s into the cache at %s", model.name, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Two processes may build at once: each writes its own temp file and renames it into place;
        # both results are identical, and a rename never exposes a partial file.
        _write_atomic(path, model.serialize(), mode=0o444, replace=False)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the model cache at {path.parent}: {exc}. Set PERFKIT_CACHE to a writable "
            "directory."
        ) from exc
    return path


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = target.parent / f".{target.name}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def build(name: str, repo_dir: Path, *, cache_dir: Path | None = None) -> Path:
    """Write zoo model `name` into the Triton model repository `repo_dir`; returns `<repo_dir>/<name>`.

    Writes `<repo_dir>/<name>/config.pbtxt` and `<repo_dir>/<name>/1/model.onnx` (model.pt for a
    TorchScript model, model.py for a python model, nothing for an ensemble), replacing what was
    there, and the zoo models it runs (an ensemble's steps, a BLS model's calls) beside it. Raises
    `ModelError` for an unknown name and `ConfigError` when a directory is not writable or a
    TorchScript model's torch is missing.
    """
    model = spec(name)
    for required in model.requires:
        build(required, repo_dir, cache_dir=cache_dir)
    model_dir = Path(repo_dir) / name
    try:
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        if model.filename is None:
            pass  # an ensemble: the version directory Triton requires, empty
        elif model.cached:
            _link_or_copy(_ensure_cached(model, cache_dir), model_dir / "1" / model.filename)
        else:
            _write_atomic(model_dir / "1" / model.filename, model.serialize())
        config_text = model.config_text or format_config(model_config(model))
        _write_atomic(model_dir / "config.pbtxt", config_text.encode())
    except OSError as exc:
        raise ConfigError(
            f"cannot write model {name!r} into the model repository {repo_dir}: {exc}"
        ) from exc
    return model_dir
