"""The response cache (`--cache-config local,size=N`, config `response_cache { enable: true }`).

A hit is proven by the model's execution_count not moving (the model never ran), and shows in
the statistics' cache_hit / cache_miss and in the nv_cache_* metrics as Triton reports them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from perfkit_server.__main__ import main
from perfkit_server.response_cache import entry_size
from tritonclient.utils import InferenceServerException

from tests.fixtures.server import start_server
from tests.server.helpers import metrics, stats
from tests.server.models import write_config

CACHED = "response_cache { enable: true }"


# Triton's repeat_int32 test model (backend perfkit_repeat), with `extra` config lines.
REPEAT = """name: "refused"
backend: "perfkit_repeat"
max_batch_size: 0
input [
  {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] }},
  {{ name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
output [
  {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
{extra}
"""


def identity(
    repo: Path, name: str, *, dims: str = "16", extra: str = CACHED, pairs: int = 1
) -> None:
    """perfkit_identity INPUTi -> OUTPUTi (FP32, batching up to 8), with `extra` config lines."""
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    inputs = ", ".join(
        f'{{ name: "INPUT{i}" data_type: TYPE_FP32 dims: [ {dims} ] }}' for i in range(pairs)
    )
    outputs = ", ".join(
        f'{{ name: "OUTPUT{i}" data_type: TYPE_FP32 dims: [ {dims} ] }}' for i in range(pairs)
    )
    write_config(
        repo,
        name,
        f'name: "{name}"\nbackend: "perfkit_identity"\nmax_batch_size: 8\n'
        f"input [ {inputs} ]\noutput [ {outputs} ]\n{extra}\n",
    )


def infer(
    url: str, model: str, array: np.ndarray, outputs: list[str] | None = None, pairs: int = 1
) -> dict:
    """One HTTP infer of INPUT0 (and INPUT1 = -array when pairs=2); output name -> array."""
    client = httpclient.InferenceServerClient(url)
    inputs = []
    for i, name in enumerate(["INPUT0", "INPUT1"][:pairs]):
        inp = httpclient.InferInput(name, list(array.shape), "FP32")
        inp.set_data_from_numpy(array if i == 0 else -array)
        inputs.append(inp)
    wanted = [httpclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    result = client.infer(model, inputs, outputs=wanted)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def cache_stats(url: str, model: str) -> tuple[int, int, int, int, int]:
    """(execution_count, inference_count, success, cache_hit, cache_miss) counts."""
    s = stats(url, model)
    infer_stats = s["inference_stats"]
    return (
        s["execution_count"],
        s["inference_count"],
        infer_stats["success"]["count"],
        infer_stats["cache_hit"]["count"],
        infer_stats["cache_miss"]["count"],
    )


def test_repeated_input_is_served_from_the_cache(perfkit_server, tmp_path):
    identity(tmp_path, "cached")
    identity(tmp_path, "plain", extra="")
    server = perfkit_server(tmp_path, "--cache-config=local,size=1048576")
    x = np.arange(16, dtype=np.float32).reshape(1, 16)

    first = infer(server.http_url, "cached", x)["OUTPUT0"]
    for _ in range(2):
        np.testing.assert_array_equal(infer(server.http_url, "cached", x)["OUTPUT0"], first)
    # gRPC reads the same cache.
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(grpc.infer("cached", [inp]).as_numpy("OUTPUT0"), x)
    # The model ran once: three hits never reached it.
    assert cache_stats(server.http_url, "cached") == (1, 1, 4, 3, 1)
    s = stats(server.http_url, "cached")["inference_stats"]
    assert s["cache_hit"]["ns"] > 0
    assert s["cache_miss"]["ns"] > 0
    assert s["compute_infer"]["count"] == 1  # hits add no compute

    # Other bytes, or the same bytes in another shape, are another request.
    infer(server.http_url, "cached", x + 1)
    assert cache_stats(server.http_url, "cached") == (2, 2, 5, 3, 2)

    # A model without response_cache runs every time and counts no cache traffic.
    for _ in range(3):
        infer(server.http_url, "plain", x)
    assert cache_stats(server.http_url, "plain") == (3, 3, 3, 0, 0)

    m = metrics(server.metrics_url)
    labels = '{model="cached",version="1"}'
    assert m[f"nv_cache_num_hits_per_model{labels}"] == 3
    assert m[f"nv_cache_num_misses_per_model{labels}"] == 2
    assert f"nv_cache_hit_duration_per_model{labels}" in m
    assert f"nv_cache_miss_duration_per_model{labels}" in m
    assert m[f"nv_inference_request_success{labels}"] == 5
    assert m[f"nv_inference_exec_count{labels}"] == 2
    assert not any(k.startswith("nv_cache") and '"plain"' in k for k in m)
    # The local cache's server-wide gauges.
    assert m["nv_cache_num_entries"] == 2
    assert m["nv_cache_num_hits"] == 3
    assert m["nv_cache_num_misses"] == 2
    assert m["nv_cache_num_lookups"] == 5
    assert 0 < m["nv_cache_util"] < 1


def test_key_covers_shape_and_each_response_picks_its_outputs(perfkit_server, tmp_path):
    identity(tmp_path, "flex", dims="-1")
    identity(tmp_path, "pair", pairs=2)
    server = perfkit_server(tmp_path, "--cache-config=local,size=1048576")
    x = np.arange(16, dtype=np.float32)
    # Same 64 bytes as [1, 16] and as [2, 8]: two keys (Triton's own key would share them).
    np.testing.assert_array_equal(
        infer(server.http_url, "flex", x.reshape(1, 16))["OUTPUT0"], x.reshape(1, 16)
    )
    np.testing.assert_array_equal(
        infer(server.http_url, "flex", x.reshape(2, 8))["OUTPUT0"], x.reshape(2, 8)
    )
    assert cache_stats(server.http_url, "flex") == (2, 3, 2, 0, 2)
    # The entry holds every output: a request for another output of the same inputs hits.
    x2 = x.reshape(1, 16)
    assert list(infer(server.http_url, "pair", x2, ["OUTPUT0"], pairs=2)) == ["OUTPUT0"]
    second = infer(server.http_url, "pair", x2, ["OUTPUT1"], pairs=2)
    assert list(second) == ["OUTPUT1"]
    np.testing.assert_array_equal(second["OUTPUT1"], -x2)
    assert cache_stats(server.http_url, "pair")[3:] == (1, 1)


def test_lru_eviction_keeps_the_cache_within_its_size(perfkit_server, tmp_path):
    identity(tmp_path, "lru")
    one = entry_size({"OUTPUT0": np.zeros((1, 16), dtype=np.float32)})
    server = perfkit_server(tmp_path, f"--cache-config=local,size={2 * one + one // 2}")
    a, b, c = (np.full((1, 16), v, dtype=np.float32) for v in (1, 2, 3))
    for x in (a, b, a, c):  # a is used again before c comes, so c evicts b
        infer(server.http_url, "lru", x)
    assert cache_stats(server.http_url, "lru")[0] == 3
    infer(server.http_url, "lru", a)  # still cached
    assert cache_stats(server.http_url, "lru")[0] == 3
    infer(server.http_url, "lru", b)  # evicted: runs again
    assert cache_stats(server.http_url, "lru") == (4, 4, 6, 2, 4)
    m = metrics(server.metrics_url)
    assert m["nv_cache_num_entries"] == 2
    assert m["nv_cache_num_evictions"] == 2
    assert m["nv_cache_util"] <= 1


def test_a_response_larger_than_the_cache_is_not_cached(perfkit_server, tmp_path):
    identity(tmp_path, "big", dims="512")
    server = perfkit_server(tmp_path, "--cache-config=local,size=1024")
    x = np.ones((1, 512), dtype=np.float32)  # 2 KiB of output
    for _ in range(2):
        infer(server.http_url, "big", x)
    assert cache_stats(server.http_url, "big") == (2, 2, 2, 0, 2)
    assert metrics(server.metrics_url)["nv_cache_num_entries"] == 0


def test_model_cache_without_server_cache_is_not_cached(perfkit_server, tmp_path):
    identity(tmp_path, "wants")
    server = perfkit_server(tmp_path)
    x = np.ones((1, 16), dtype=np.float32)
    for _ in range(2):
        infer(server.http_url, "wants", x)
    assert cache_stats(server.http_url, "wants") == (2, 2, 2, 0, 0)
    assert "enables response_cache but the server has no cache" in server.log()
    assert "nv_cache_num_entries" not in metrics(server.metrics_url)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ("model_transaction_policy { decoupled: true }", "with 'decoupled' transaction policy"),
        ("sequence_batching { }", "with sequence batching scheduler"),
    ],
)
def test_cache_with_decoupled_or_sequence_model_fails_its_load(
    perfkit_server, tmp_path, extra, why
):
    if "decoupled" in extra:  # a backend that can be decoupled (perfkit_identity is refused)
        write_config(tmp_path, "refused", REPEAT.format(extra=f"{CACHED}\n{extra}"))
        (tmp_path / "refused" / "1").mkdir()
    else:
        identity(tmp_path, "refused", extra=f"{CACHED}\n{extra}")
    server = perfkit_server(
        tmp_path, "--cache-config=local,size=1048576", "--model-control-mode=explicit"
    )
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("refused")
    assert "Response Cache does not currently support model refused" in str(exc.value)
    assert why in str(exc.value)
    assert client.is_server_live()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cache-config=local"], "No cache specified"),
        (["--cache-config=,size=10"], "No cache specified"),
        (["--cache-config=local,size"], "'<cache name>,<setting>=<value>'"),
        (["--cache-config=local,size="], "'<cache name>,<setting>=<value>'"),
        (["--cache-config=redis,host=x"], "unknown cache 'redis'"),
        (["--cache-config=local,bytes=10"], "takes one setting, 'size'"),
        (["--cache-config=local,size=lots"], "expected a size in bytes"),
        (["--cache-config=local,size=0"], "must be > 0 bytes"),
        (["--cache-config=local,size=1", "--cache-config=local,size=2"], "given twice"),
        (["--cache-config=local,size=99999999999999999999"], "more than this machine's memory"),
        (
            ["--cache-config=local,size=10", "--response-cache-byte-size=10"],
            "Incompatible flags --response-cache-byte-size and --cache-config",
        ),
        (["--response-cache-byte-size=0"], "must be > 0 bytes"),
    ],
)
def test_bad_cache_flags_are_refused_with_a_message(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["--model-repository", str(tmp_path), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_perfkit_serve_passes_the_cache_and_rate_limit_flags(tmp_path):
    identity(tmp_path, "cached")
    handle = start_server(
        tmp_path,
        "--cache-config=local,size=65536",
        "--rate-limit=execution_count",
        "--rate-limit-resource=R:1",
        command=[sys.executable, "-m", "perfkit", "serve"],
        log_path=tmp_path / "serve.log",
    )
    try:
        x = np.ones((1, 16), dtype=np.float32)
        for _ in range(2):
            infer(handle.http_url, "cached", x)
        assert cache_stats(handle.http_url, "cached") == (1, 1, 2, 1, 1)
    finally:
        handle.stop()
