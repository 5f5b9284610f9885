"""Model repository layout: `<repo>/<model>/config.pbtxt` and `<repo>/<model>/<version>/`. Atomic config writes.
Pure: imports nothing of perfkit but perfkit.model_repo; raises its own `InvalidRepository`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from perfkit.model_repo import InvalidRepository

CONFIG_FILE = "config.pbtxt"
# A model name is a directory name: at most a file name's length (NAME_MAX), in UTF-8 bytes.
MAX_MODEL_NAME_BYTES = 255


def check_model_name(name: str) -> str:
    """Return `name` if it names a model directory inside a repository; refuse anything that could escape it."""
    if (
        not name
        or name in {".", ".."}
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name.startswith(".")
    ):
        raise InvalidRepository(
            f"invalid model name {name!r}: a model name is a single directory name inside the model "
            "repository (no '/', '\\', leading '.', or '..')"
        )
    if len(name.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_BYTES:
        raise InvalidRepository(
            f"invalid model name {name[:32]!r}... ({len(name)} characters): a model name is a "
            f"directory name of at most {MAX_MODEL_NAME_BYTES} bytes"
        )
    return name


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Numbered version directories of a model, by version."""
    versions: dict[int, Path] = {}
    if not model_dir.is_dir():
        return versions
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit():
            versions[int(child.name)] = child
    return dict(sorted(versions.items()))


def scan_repository(root: Path) -> dict[str, Path]:
    """Model directories of a repository, by model name: directories with a config.pbtxt or a version dir."""
    if not root.is_dir():
        raise InvalidRepository(
            f'model repository "{root}" does not exist or is not a directory. Pass the directory that '
            "holds one sub-directory per model."
        )
    models: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if (child / CONFIG_FILE).is_file() or version_dirs(child):
            models[child.name] = child
    return models


def model_dir(root: Path, name: str) -> Path:
    """The directory of model `name` in repository `root` (which need not exist yet)."""
    return root / check_model_name(name)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
