"""Model warmup (Triton's `model_warmup`): the requests every instance runs before the model is
ready, built once per load.

Data files come only from the model's warmup/ directory (Triton's rule): the name is relative with
no '..' (load_limits checks it first), the resolved path stays inside that directory (a symlink may
not lead out), the file is a regular one (no device, FIFO or directory is ever opened), and exactly
the bytes one sample needs are read; a shorter file fails the load naming it. As in Triton, a
request of batch_size > 1 repeats that sample.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.datatypes import NP_BY_V2
from perfkit.model_repo.config import v2_datatype
from perfkit_server.backends.base import Array, Backend
from perfkit_server.load_limits import WARMUP_DIR, check_warmup_file_name

# One warmup request: its inputs and how many times each instance runs it.
Warmup = tuple[dict[str, Array], int]


def warmup_requests(config: Any, model_dir: Path, source: str) -> list[Warmup]:
    """The config's warmup requests, their data files read (blocking: call from a thread)."""
    requests: list[Warmup] = []
    for warmup in config.model_warmup:
        inputs: dict[str, Array] = {}
        rng = np.random.default_rng(0)
        for name, spec in warmup.inputs.items():
            field = f"{source}: model_warmup '{warmup.name}': input '{name}'"
            dtype = NP_BY_V2[v2_datatype(spec.data_type)]
            dims = tuple(int(d) for d in spec.dims)
            shape = (max(1, warmup.batch_size), *dims) if config.max_batch_size > 0 else dims
            which = spec.WhichOneof("input_data_type")
            if which == "random_data" and dtype.kind in "fiu":
                array = rng.random(shape).astype(dtype)
            elif which == "input_data_file":
                nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
                raw = read_warmup_file(model_dir, spec.input_data_file, nbytes, field)
                sample = np.frombuffer(raw, dtype=dtype).reshape(dims)
                array = np.ascontiguousarray(np.broadcast_to(sample, shape))
            else:
                array = np.zeros(shape, dtype=dtype)
            inputs[name] = array
        requests.append((inputs, max(1, warmup.count)))
    return requests


def run_warmup(backend: Backend, requests: list[Warmup]) -> None:
    """Run each warmup request on one freshly loaded instance."""
    for inputs, count in requests:
        for _ in range(count):
            backend.infer(inputs)


def read_warmup_file(model_dir: Path, name: str, nbytes: int, field: str) -> bytes:
    """Exactly `nbytes` from the regular file `name` inside `model_dir`/warmup, or ValueError."""
    where = f"{field}: input_data_file {name!r}"
    relative = check_warmup_file_name(name, field)
    base = (model_dir / WARMUP_DIR).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ValueError(
            f"{where} resolves outside the model's {WARMUP_DIR} directory; it must name a file "
            "inside it (a symlink may not lead out)"
        )
    try:
        # stat first: a FIFO or device is refused without being opened.
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise ValueError(f"{where} in the model's {WARMUP_DIR} directory is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file in the model's {WARMUP_DIR} directory") from None
    except OSError as exc:
        raise ValueError(f"{where} in the model's {WARMUP_DIR} directory: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise ValueError(f"{where} in the model's {WARMUP_DIR} directory is not a regular file")
        chunks: list[bytes] = []
        left = nbytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left > 0:
        raise ValueError(
            f"{where} in the model's {WARMUP_DIR} directory holds {nbytes - left} bytes; the "
            f"input needs {nbytes} bytes (one sample of its dims and data type)"
        )
    return b"".join(chunks)
