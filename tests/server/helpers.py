"""Small client helpers shared by the server tests."""

from __future__ import annotations

import asyncio
import itertools
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


def spans(path: Path) -> list[tuple[int, int, int]]:
    """(start_ns, end_ns, instance) per execution, from perfkit_identity's span_log."""
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
