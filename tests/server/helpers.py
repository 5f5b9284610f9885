"""Small client helpers shared by the server tests."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient


def fp32_input(module: Any, name: str, array: np.ndarray[Any, Any]) -> Any:
    inp = module.InferInput(name, list(array.shape), "FP32")
    inp.set_data_from_numpy(array)
    return inp


async def concurrent_singles(
    url: str, model: str, n: int, dim: int = 16
) -> list[np.ndarray[Any, Any]]:
    """Send `n` batch-1 requests at once over gRPC aio; return OUTPUT0 of each, in order."""
    client = grpcaio.InferenceServerClient(url)
    try:
        arrays = [np.full((1, dim), i, dtype=np.float32) for i in range(n)]
        results = await asyncio.gather(
            *(client.infer(model, [fp32_input(grpcaio, "INPUT0", a)]) for a in arrays)
        )
        outs = [r.as_numpy("OUTPUT0") for r in results]
        for a, out in zip(arrays, outs, strict=True):
            np.testing.assert_array_equal(out, a)
        return outs
    finally:
        await client.close()


def stats(url: str, model: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    result: dict[str, Any] = client.get_inference_statistics(model)["model_stats"][0]
    return result


# perfkit_identity's test hooks (no config can name a file): the server's environment names a
# directory; the backend logs spans to <dir>/<model>.spans and is gated by <dir>/<model>.started
# and <dir>/<model>.release when those are named pipes. Set it before starting the server:
#     monkeypatch.setenv(HOOK_ENV, str(tmp_path))
HOOK_ENV = "PERFKIT_SERVER_TEST_HOOK_DIR"


def span_log(directory: Path, model: str) -> Path:
    """Where perfkit_identity logs the spans of `model` under the hook directory."""
    return directory / f"{model}.spans"


def spans(path: Path) -> list[tuple[int, int, int]]:
    """(start_ns, end_ns, instance) per execution, from a perfkit_identity span log."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(a), int(b), int(c)) for a, b, c in rows]


def overlapping(rows: list[tuple[int, int, int]]) -> bool:
    ordered = sorted(rows)
    return any(b[0] < a[1] for a, b in itertools.pairwise(ordered))


def metrics(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+\{[^}]*\}|\w+) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


class Gate:
    """The two named pipes of a gated perfkit_identity model: each execution says it started
    (a readable byte on `started`) and waits until the test releases it.

        monkeypatch.setenv(HOOK_ENV, str(tmp_path))   # the server's hook directory
        gate = Gate(tmp_path, "m")                     # before the model loads
        models.slow_identity(repo, "m", delay_us=0)
        ...
        await gate.started()   # an execution is running now
        gate.release()         # ... and may finish

    Both pipes are opened read-write here, so the server's opens never block and a pipe never
    reads as closed. `close()` (or the context manager) releases whatever still waits.
    """

    def __init__(self, directory: Path, model: str) -> None:
        self.started_path = directory / f"{model}.started"
        self.release_path = directory / f"{model}.release"
        os.mkfifo(self.started_path)
        os.mkfifo(self.release_path)
        self._started = os.open(self.started_path, os.O_RDWR | os.O_NONBLOCK)
        self._release = os.open(self.release_path, os.O_RDWR)

    async def started(self, timeout_s: float = 30.0) -> None:
        """Wait until an execution has started (one started byte is consumed per call)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if os.read(self._started, 1):
                    return
            except BlockingIOError:
                pass
            readable = loop.create_future()
            loop.add_reader(self._started, readable.set_result, None)
            try:
                await asyncio.wait_for(readable, timeout_s)
            finally:
                loop.remove_reader(self._started)

    def release(self, executions: int = 1) -> None:
        """Let `executions` executions (running or future) finish."""
        os.write(self._release, b"r" * executions)

    def close(self) -> None:
        # Release what waits now; a later execution finds no pipe and fails instead of hanging.
        self.release(64)
        self.started_path.unlink()
        self.release_path.unlink()
        os.close(self._started)
        os.close(self._release)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
