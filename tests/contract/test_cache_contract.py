"""The response cache against the real tritonserver: hits, statistics, metrics, load refusals.

Each case runs on perfkit_server (perfkit_identity models) and on the nvidia-pytriton wheel's
tritonserver (the same config.pbtxt with backend "python"), both started with
`--cache-config=local,size=1048576`. The Triton param skips, saying why, when that server is
missing or its install has no `local` cache library (caches/local/libtritoncache_local.so).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from perfkit.launch.triton import pytriton_server_dir
from tests.contract._models import PERFKIT, TRITON, IdentitySpec, write_model
from tests.fixtures.triton import triton_available

CACHE_FLAG = "--cache-config=local,size=1048576"
CACHED = "response_cache { enable: true }"


@dataclass
class Started:
    http: str
    metrics: str  # "host:port"
    log: Callable[[], str]


def _local_cache_missing() -> str:
    """Why the Triton here cannot run a `local` cache case, or ''."""
    if not triton_available():
        return "no tritonserver: neither on PATH nor the nvidia-pytriton wheel"
    source = pytriton_server_dir()
    if source is not None and not (source / "caches/local/libtritoncache_local.so").is_file():
        return f"the tritonserver at {source} has no local cache (caches/local/libtritoncache_local.so)"
    return ""


@pytest.fixture(params=[PERFKIT, pytest.param(TRITON, marks=pytest.mark.triton)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == TRITON and (why := _local_cache_missing()):
        pytest.skip(why)
    return str(request.param)


@pytest.fixture
def start(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Callable[..., Started]:
    """`start(repo, *flags, load=("*",))`: the param's server on `repo` in explicit mode."""

    def run(repo: Path, *flags: str, load: tuple[str, ...] = ("*",)) -> Started:
        if kind == TRITON:
            log = tmp_path / "triton.log"
            server = request.getfixturevalue("triton_server")(
                repo, load_models=load, log_path=log, extra_args=(*flags, "--exit-timeout-secs=3")
            )
            metrics = server.metrics_url.removesuffix("/metrics")
            return Started(server.http_url, metrics, lambda: log.read_text(errors="replace"))
        handle = request.getfixturevalue("perfkit_server")(
            repo, "--model-control-mode=explicit", *(f"--load-model={m}" for m in load), *flags
        )
        return Started(handle.http_url, handle.metrics_url, handle.log)

    return run


def model(repo: Path, kind: str, name: str, extra: str = CACHED) -> None:
    config = write_model(repo, IdentitySpec(name), kind) / "config.pbtxt"
    config.write_text(config.read_text() + extra + "\n")


def infer(url: str, name: str, x: np.ndarray) -> np.ndarray:
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferenceServerClient(url).infer(name, [inp]).as_numpy("OUTPUT0")
    assert out is not None
    return out


def statistics(url: str, name: str) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    result: dict[str, Any] = client.get_inference_statistics(name)["model_stats"][0]
    return result


def scrape(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    out: dict[str, float] = {}
    for line in lines:
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_repeated_request_is_a_hit(start, kind, tmp_path):
    model(tmp_path, kind, "cached")
    model(tmp_path, kind, "plain", extra="")
    server = start(tmp_path, CACHE_FLAG)
    http, metrics_url = server.http, server.metrics
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    for name in ("cached", "plain"):
        for _ in range(3):
            np.testing.assert_array_equal(infer(http, name, x), x)

    s = statistics(http, "cached")
    assert (s["execution_count"], s["inference_count"]) == (1, 1)
    st = s["inference_stats"]
    assert (st["success"]["count"], st["queue"]["count"]) == (3, 3)
    assert (st["cache_hit"]["count"], st["cache_miss"]["count"]) == (2, 1)
    assert st["compute_infer"]["count"] == 1  # success less hits
    assert st["cache_hit"]["ns"] > 0
    assert st["cache_miss"]["ns"] > 0
    plain = statistics(http, "plain")
    assert plain["execution_count"] == 3
    assert plain["inference_stats"]["cache_hit"]["count"] == 0
    assert plain["inference_stats"]["cache_miss"]["count"] == 0

    m = scrape(metrics_url)
    labels = '{model="cached",version="1"}'
    assert m[f"nv_cache_num_hits_per_model{labels}"] == 2
    assert m[f"nv_cache_num_misses_per_model{labels}"] == 1
    assert f"nv_cache_hit_duration_per_model{labels}" in m
    assert m[f"nv_inference_request_success{labels}"] == 3
    assert m[f"nv_inference_exec_count{labels}"] == 1
    assert not [k for k in m if k.startswith("nv_cache") and 'model="plain"' in k]
    # The local cache's own gauges (Triton polls them on a thread: wait for its next poll).
    deadline = time.monotonic() + 30
    want = {"nv_cache_num_entries": 1.0, "nv_cache_num_hits": 2.0}
    while {k: scrape(metrics_url).get(k) for k in want} != want:
        assert time.monotonic() < deadline, f"the cache gauges never reached {want}"
        time.sleep(0.1)  # a bounded poll for Triton's metrics thread, not an ordering


def test_model_cache_on_a_server_without_one_is_not_cached(start, kind, tmp_path):
    model(tmp_path, kind, "cached")
    server = start(tmp_path)
    http, metrics_url = server.http, server.metrics
    x = np.ones((1, 16), dtype=np.float32)
    for _ in range(2):
        infer(http, "cached", x)
    s = statistics(http, "cached")
    assert s["execution_count"] == 2
    assert s["inference_stats"]["cache_hit"]["count"] == 0
    m = scrape(metrics_url)
    assert "nv_cache_num_entries" not in m
    # Triton still reports the per-model counters of a model whose config enables the cache.
    assert m['nv_cache_num_hits_per_model{model="cached",version="1"}'] == 0


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("model_transaction_policy { decoupled: true }", "with 'decoupled' transaction policy"),
        ("sequence_batching { }", "with sequence batching scheduler"),
    ],
)
def test_cache_with_decoupled_or_sequence_batching_fails_the_load(
    start, kind, tmp_path, extra, why
):
    model(tmp_path, kind, "plain", extra="")
    # A decoupled model needs a backend that can be decoupled: the python model on both servers.
    model(tmp_path, TRITON if "decoupled" in extra else kind, "refused", f"{CACHED}\n{extra}")
    server = start(tmp_path, CACHE_FLAG, load=("plain",))
    client = httpclient.InferenceServerClient(server.http)
    with pytest.raises(InferenceServerException, match="failed to load 'refused'"):
        client.load_model("refused")
    assert not client.is_model_ready("refused")
    # Triton answers "failed to poll from model repository" and logs why; perfkit_server says
    # why in the answer too. Both log Triton's reason.
    log = server.log()
    assert "Response Cache does not currently support model refused" in log
    assert why in log
