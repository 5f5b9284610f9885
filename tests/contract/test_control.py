"""Contract: repository index and explicit model control (load with a config override, unload)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from perfkit.model_repo.config import config_to_json
from tests.contract._client import PROTOCOLS, batch, expect_error, index, infer, wait_state
from tests.contract._models import IdentitySpec, backend_for, config_text
from tests.contract._server import Server

# On disk every model is: max_batch_size 8, one instance, no dynamic batching.
NAMES = [
    "idx",
    *(f"{prefix}_{p}" for prefix in ("ovr", "partial", "gone") for p in PROTOCOLS),
    "plain_after",
    "revert",
    "nobackend",
    "ovr_str",
    "revert_now",
]
SPECS = [IdentitySpec(name, max_batch_size=8, instance_count=1) for name in NAMES]

pytestmark = pytest.mark.timeout(180)

UNLOADED = ("UNAVAILABLE",)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def override_json(server: Server, spec: IdentitySpec, *, int64_strings: bool = False) -> str:
    """A whole-config override, as perfkit sends one: config.pbtxt text -> ModelConfig -> JSON
    with 64-bit ints as numbers (perfkit's `config_to_json`), or as strings (protobuf's JSON)."""
    config = text_format.Parse(
        config_text(spec, backend_for(server.kind)), model_config_pb2.ModelConfig()
    )
    if int64_strings:
        return str(json_format.MessageToJson(config, preserving_proto_field_name=True))
    return json.dumps(config_to_json(config))


def http_config(server: Server, model: str) -> dict[str, Any]:
    status, body = server.http("GET", f"/v2/models/{model}/config")
    assert status == 200, body
    config: dict[str, Any] = json.loads(body)
    return config


def summary(config: dict[str, Any]) -> tuple[int, int, int | None]:
    """(max_batch_size, instance count, queue delay µs or None without dynamic_batching)."""
    batching = config.get("dynamic_batching")
    delay = None if batching is None else int(batching.get("max_queue_delay_microseconds", 0))
    return config["max_batch_size"], config["instance_group"][0]["count"], delay


ON_DISK = (8, 1, None)


# -- repository index ---------------------------------------------------------------------------


def test_index_lists_ready_models(server: Server, protocol: str) -> None:
    entries = index(server, protocol)
    assert set(NAMES) <= set(entries)
    entry = entries["idx"]
    assert (entry["name"], entry["version"], entry["state"]) == ("idx", "1", "READY")
    if protocol == "grpc":
        assert entry["reason"] == ""


def test_index_http_entry_keys(server: Server) -> None:
    status, body = server.http("POST", "/v2/repository/index", b"{}")
    assert status == 200
    entries = {e["name"]: e for e in json.loads(body)}
    assert set(entries["idx"]) == {"name", "version", "state"}


# -- load with a config override ----------------------------------------------------------------


def test_load_override_applies(server: Server, protocol: str) -> None:
    model = f"ovr_{protocol}"
    assert summary(http_config(server, model)) == ON_DISK
    client = server.client(protocol)
    new = IdentitySpec(model, max_batch_size=4, instance_count=2, queue_delay_us=7000)
    client.load_model(model, config=override_json(server, new))
    assert client.is_model_ready(model)
    assert summary(http_config(server, model)) == (4, 2, 7000)
    pb = server.client("grpc").get_model_config(model).config
    assert (pb.max_batch_size, pb.instance_group[0].count) == (4, 2)
    assert pb.HasField("dynamic_batching")
    assert pb.dynamic_batching.max_queue_delay_microseconds == 7000
    # ... and in behaviour: a batch of 4 is served, 5 is over the new max_batch_size.
    data = batch(4)
    np.testing.assert_array_equal(infer(server, protocol, model, data).as_numpy("OUTPUT0"), data)
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, model, batch(5))
    assert "batch-size must be <= 4" in expect_error(protocol, exc, "400")


def test_load_override_int64_as_strings(server: Server) -> None:
    """protobuf's canonical JSON writes uint64 max_queue_delay_microseconds as a string."""
    model = "ovr_str"
    new = IdentitySpec(model, max_batch_size=4, instance_count=2, queue_delay_us=7000)
    body = override_json(server, new, int64_strings=True)
    assert '"7000"' in body
    server.client("http").load_model(model, config=body)
    assert summary(http_config(server, model)) == (4, 2, 7000)


def test_partial_override_refused_old_version_serves(server: Server, protocol: str) -> None:
    """An override replaces the whole config: one with only instance_group has no inputs/outputs,
    the identity refuses to load it, and the version already loaded keeps serving."""
    model = f"partial_{protocol}"
    client = server.client(protocol)
    partial = json.dumps({"instance_group": [{"count": 3, "kind": "KIND_CPU"}]})
    with pytest.raises(InferenceServerException) as exc:
        client.load_model(model, config=partial)
    message = expect_error(protocol, exc, "400")
    assert model in message
    assert client.is_model_ready(model)
    assert summary(http_config(server, model)) == ON_DISK
    data = batch(2)
    np.testing.assert_array_equal(infer(server, protocol, model, data).as_numpy("OUTPUT0"), data)
    assert index(server, protocol)[model]["state"] == "READY"


def test_override_without_backend_loads(server: Server) -> None:
    model = "nobackend"
    override = json.loads(override_json(server, IdentitySpec(model, max_batch_size=4)))
    del override["backend"]
    server.client("http").load_model(model, config=json.dumps(override))
    config = http_config(server, model)
    assert config["max_batch_size"] == 4
    assert config["backend"] == backend_for(server.kind)


def test_plain_load_after_override_changes_nothing(server: Server) -> None:
    model = "plain_after"
    client = server.client("http")
    new = IdentitySpec(model, max_batch_size=4, instance_count=2, queue_delay_us=3000)
    client.load_model(model, config=override_json(server, new))
    assert summary(http_config(server, model)) == (4, 2, 3000)
    client.load_model(model)  # no body
    assert client.is_model_ready(model)
    assert summary(http_config(server, model)) == (4, 2, 3000)
    server.client("grpc").load_model(model)
    assert summary(http_config(server, model)) == (4, 2, 3000)


def test_unload_then_load_reverts_to_disk(server: Server) -> None:
    model = "revert"
    client = server.client("http")
    new = IdentitySpec(model, max_batch_size=2, instance_count=2, queue_delay_us=1000)
    client.load_model(model, config=override_json(server, new))
    assert summary(http_config(server, model)) == (2, 2, 1000)
    client.unload_model(model)
    assert wait_state(server, model, UNLOADED)["state"] == "UNAVAILABLE"
    client.load_model(model)
    assert client.is_model_ready(model)
    assert summary(http_config(server, model)) == ON_DISK


def test_unload_then_load_when_not_ready_reverts(server: Server) -> None:
    """perfkit tune's reload_from_disk: unload, wait only until the model is not ready, load."""
    model = "revert_now"
    client = server.client("http")
    new = IdentitySpec(model, max_batch_size=2, instance_count=2, queue_delay_us=1000)
    client.load_model(model, config=override_json(server, new))
    client.unload_model(model)
    deadline = time.monotonic() + 20
    while client.is_model_ready(model) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.load_model(model)
    assert client.is_model_ready(model)
    assert summary(http_config(server, model)) == ON_DISK
    data = batch(8)
    np.testing.assert_array_equal(infer(server, "http", model, data).as_numpy("OUTPUT0"), data)


# -- unload -------------------------------------------------------------------------------------


def test_unload_makes_requests_fail(server: Server, protocol: str) -> None:
    model = f"gone_{protocol}"
    client = server.client(protocol)
    client.load_model(model)  # loaded from disk, whatever ran before
    np.testing.assert_array_equal(
        infer(server, protocol, model, batch(1)).as_numpy("OUTPUT0"), batch(1)
    )
    client.unload_model(model)
    wait_state(server, model, UNLOADED)
    assert not client.is_model_ready(model)
    want = f"Request for unknown model: '{model}' has no available versions"
    with pytest.raises(InferenceServerException) as exc:
        infer(server, protocol, model, batch(1))
    assert want in expect_error(protocol, exc, "404")
    for call in ("get_model_metadata", "get_model_config"):
        with pytest.raises(InferenceServerException) as exc:
            getattr(client, call)(model)
        assert want in expect_error(protocol, exc, "404"), call


def test_unloaded_index_entry(server: Server, protocol: str) -> None:
    model = f"gone_{protocol}"
    server.client("http").unload_model(model)  # already unloaded by the test above, or now
    entry = wait_state(server, model, UNLOADED)
    assert entry["state"] == "UNAVAILABLE"
    entry = index(server, protocol)[model]
    assert (entry["name"], entry["version"], entry["state"], entry["reason"]) == (
        model,
        "1",
        "UNAVAILABLE",
        "unloaded",
    )


def test_unloaded_statistics_refused(server: Server, protocol: str) -> None:
    model = f"gone_{protocol}"
    server.client("http").unload_model(model)
    wait_state(server, model, UNLOADED)
    with pytest.raises(InferenceServerException) as exc:
        server.client(protocol).get_inference_statistics(model)
    assert f"requested model '{model}' is not available" in expect_error(protocol, exc, "400")


def test_unknown_model_statistics_refused(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        server.client(protocol).get_inference_statistics("nope")
    assert "requested model 'nope' is not available" in expect_error(protocol, exc, "400")


def test_load_unknown_model(server: Server, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        server.client(protocol).load_model("nope")
    assert "failed to load 'nope'" in expect_error(protocol, exc, "500")


def test_unload_unknown_model_succeeds(server: Server, protocol: str) -> None:
    server.client(protocol).unload_model("nope")
    assert "nope" not in index(server, protocol)
