"""No config field silently ignored (issue #13, acceptance 7).

Every top-level field of model_config.proto (read from the descriptor, so a field a newer Triton adds
fails here until it has a rule) is set to a non-default value in the config of a tiny model loaded
through a real server's load API: the load either succeeds and the field shows its effect (the
field is implemented), succeeds for a stated reason (accepted: no effect on this server, as on
Triton), or is refused with a message naming the field. Rules that depend on the backend or on a GPU
instance are checked on `check_fields` directly (no GPU or TensorRT here).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from perfkit_server.config_guard import (
    ACCEPTED,
    CHECKED,
    FIELDS,
    IMPLEMENTED,
    REFUSED,
    check_fields,
)
from perfkit_server.placement import Group
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from perfkit.model_repo.config import config_from_json
from tests.fixtures.server import ServerHandle, start_server
from tests.server import models
from tests.server.helpers import fp32_input

TOP_LEVEL = [f.name for f in mc.ModelConfig.DESCRIPTOR.fields]

TENSOR = {"data_type": "TYPE_FP32", "dims": [16]}
IDENTITY: dict[str, Any] = {
    "name": "m",
    "backend": "perfkit_identity",
    "max_batch_size": 8,
    "input": [{"name": "INPUT0", **TENSOR}],
    "output": [{"name": "OUTPUT0", **TENSOR}],
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
}
ONNX: dict[str, Any] = {
    "name": "onnx",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 8,
    "input": [{"name": "INPUT0", **TENSOR}],
    "output": [{"name": "OUTPUT0", **TENSOR}],
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
}

Check = Callable[[httpclient.InferenceServerClient, str], None]


def _config(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    return dict(client.get_model_config(model))


def _infer(client: httpclient.InferenceServerClient, model: str, batch: int = 1) -> Any:
    x = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16)
    return x, client.infer(model, [fp32_input(httpclient, "INPUT0", x)]).as_numpy("OUTPUT0")


def _reported(key: str, expected: Any) -> Check:
    """The served config carries the value (the least a field read on load shows)."""

    def check(client: httpclient.InferenceServerClient, model: str) -> None:
        value = _config(client, model)[key]
        assert value == expected or (
            isinstance(expected, dict) and expected.items() <= value.items()
        )

    return check


def _contains(served: Any, sent: Any) -> bool:
    """Whether the served config's value holds everything sent (normalization may add fields)."""
    if isinstance(sent, dict):
        return isinstance(served, dict) and all(
            k in served and _contains(served[k], v) for k, v in sent.items()
        )
    if isinstance(sent, list):
        return (
            isinstance(served, list)
            and len(served) == len(sent)
            and all(_contains(a, b) for a, b in zip(served, sent, strict=True))
        )
    return bool(served == sent)


def _versions(client: httpclient.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model, "1")
    assert client.is_model_ready(model, "2")


def _batch_cap(client: httpclient.InferenceServerClient, model: str) -> None:
    _infer(client, model, 2)
    with pytest.raises(InferenceServerException, match="batch"):
        _infer(client, model, 3)


def _negated(client: httpclient.InferenceServerClient, model: str) -> None:
    x, y = _infer(client, model)
    np.testing.assert_array_equal(y, -x)


def _platform(client: httpclient.InferenceServerClient, model: str) -> None:
    assert client.get_model_metadata(model)["platform"] == "onnxruntime_onnx"
    x, y = _infer(client, model)
    np.testing.assert_array_equal(y, x)


def _input_optional(client: httpclient.InferenceServerClient, model: str) -> None:
    assert _config(client, model)["input"][0]["optional"] is True


def _group(client: httpclient.InferenceServerClient, model: str) -> None:
    group = _config(client, model)["instance_group"][0]
    assert (group["name"], group["count"]) == ("pair", 2)


# Per top-level field: (which model, the fields to set, the expected outcome). An outcome is a Check
# (loads, and the check shows the effect), "loads" (accepted, or implemented by a part of issue #13
# whose own tests show the effect) or "refused".
Case = tuple[dict[str, Any], dict[str, Any], "Check | str"]
SAMPLES: dict[str, list[Case]] = {
    "name": [
        (IDENTITY, {"name": "m"}, _reported("name", "m")),
        (IDENTITY, {"name": "x"}, "refused"),
    ],
    "platform": [(ONNX, {"platform": "onnxruntime_onnx"}, _platform)],
    "backend": [
        (IDENTITY, {"backend": "perfkit_identity"}, _reported("backend", "perfkit_identity"))
    ],
    "runtime": [
        (IDENTITY, {"runtime": "libtriton_perfkit_identity.so"}, "loads"),
        (IDENTITY, {"runtime": "model.py"}, "refused"),
    ],
    "version_policy": [(IDENTITY, {"version_policy": {"all": {}}}, _versions)],
    "max_batch_size": [(IDENTITY, {"max_batch_size": 2}, _batch_cap)],
    "input": [
        (IDENTITY, {"input": [{"name": "INPUT0", "optional": True, **TENSOR}]}, _input_optional),
        (IDENTITY, {"input": [{"name": "INPUT0", "format": "FORMAT_NONE", **TENSOR}]}, "loads"),
        (IDENTITY, {"input": [{"name": "INPUT0", "format": "FORMAT_NCHW", **TENSOR}]}, "refused"),
        (
            IDENTITY,
            {"input": [{"name": "INPUT0", "reshape": {"shape": [4, 4]}, **TENSOR}]},
            "refused",
        ),
        (
            IDENTITY,
            {"input": [{"name": "INPUT0", "allow_ragged_batch": True, **TENSOR}]},
            "refused",
        ),
        (IDENTITY, {"input": [{"name": "INPUT0", "is_shape_tensor": True, **TENSOR}]}, "refused"),
    ],
    "output": [
        (
            IDENTITY,
            {"output": [{"name": "OUTPUT0", "label_filename": "labels.txt", **TENSOR}]},
            "loads",
        ),
        (
            IDENTITY,
            {"output": [{"name": "OUTPUT0", "label_filename": "gone.txt", **TENSOR}]},
            "refused",
        ),
        (
            IDENTITY,
            {"output": [{"name": "OUTPUT0", "reshape": {"shape": [16]}, **TENSOR}]},
            "refused",
        ),
    ],
    "batch_input": [
        (
            IDENTITY,
            {
                "batch_input": [
                    {
                        "kind": "BATCH_ELEMENT_COUNT",
                        "target_name": ["N"],
                        "data_type": "TYPE_FP32",
                        "source_input": ["INPUT0"],
                    }
                ]
            },
            "refused",
        ),
    ],
    "batch_output": [
        (
            IDENTITY,
            {
                "batch_output": [
                    {
                        "kind": "BATCH_SCATTER_WITH_INPUT_SHAPE",
                        "target_name": ["OUTPUT0"],
                        "source_input": ["INPUT0"],
                    }
                ]
            },
            "refused",
        ),
    ],
    "optimization": [
        (
            ONNX,
            {"optimization": {"graph": {"level": 2}}},
            _reported("optimization", {"graph": {"level": 2}}),
        ),
        (IDENTITY, {"optimization": {"cuda": {"graphs": True}}}, "loads"),
        (IDENTITY, {"optimization": {"gather_kernel_buffer_threshold": 4}}, "loads"),
    ],
    "dynamic_batching": [
        (
            IDENTITY,
            {"dynamic_batching": {"preferred_batch_size": [4]}},
            _reported("dynamic_batching", {"preferred_batch_size": [4]}),
        ),
    ],
    "sequence_batching": [
        (IDENTITY, {"sequence_batching": {"max_sequence_idle_microseconds": 5000000}}, "loads")
    ],
    "ensemble_scheduling": [
        (
            IDENTITY,
            {"ensemble_scheduling": {"step": [{"model_name": "onnx", "model_version": -1}]}},
            "refused",
        ),
    ],
    "instance_group": [
        (IDENTITY, {"instance_group": [{"name": "pair", "count": 2, "kind": "KIND_CPU"}]}, _group),
        (
            IDENTITY,
            {
                "instance_group": [
                    {
                        "count": 1,
                        "kind": "KIND_CPU",
                        "rate_limiter": {"resources": [{"name": "R", "count": 1}]},
                    }
                ]
            },
            "loads",
        ),
        (
            IDENTITY,
            {"instance_group": [{"count": 1, "kind": "KIND_CPU", "host_policy": "numa0"}]},
            "refused",
        ),
    ],
    "default_model_filename": [(ONNX, {"default_model_filename": "neg.onnx"}, _negated)],
    "cc_model_filenames": [(IDENTITY, {"cc_model_filenames": {"8.0": "model_80.onnx"}}, "loads")],
    "metric_tags": [(IDENTITY, {"metric_tags": {"team": "a"}}, "refused")],
    "parameters": [
        (
            IDENTITY,
            {"parameters": {"execute_delay_us": {"string_value": "1"}}},
            _reported("parameters", {"execute_delay_us": {"string_value": "1"}}),
        ),
        (IDENTITY, {"parameters": {"execute_delay_us": {"string_value": "soon"}}}, "refused"),
    ],
    "model_warmup": [
        (
            IDENTITY,
            {
                "model_warmup": [
                    {
                        "name": "w",
                        "batch_size": 1,
                        "inputs": {
                            "INPUT0": {"data_type": "TYPE_FP32", "dims": [16], "zero_data": True}
                        },
                    }
                ]
            },
            "loads",
        ),
        (
            IDENTITY,
            {
                "model_warmup": [
                    {
                        "name": "w",
                        "batch_size": 1,
                        "inputs": {
                            "INPUT0": {
                                "data_type": "TYPE_FP32",
                                "dims": [16],
                                "input_data_file": "none.bin",
                            }
                        },
                    }
                ]
            },
            "refused",
        ),
    ],
    "model_operations": [
        (IDENTITY, {"model_operations": {"op_library_filename": ["libop.so"]}}, "refused")
    ],
    "model_transaction_policy": [(IDENTITY, {"model_transaction_policy": {}}, "loads")],
    "model_repository_agents": [
        (IDENTITY, {"model_repository_agents": {"agents": [{"name": "checksum"}]}}, "refused")
    ],
    "response_cache": [(IDENTITY, {"response_cache": {"enable": True}}, "loads")],
    "model_metrics": [
        (
            IDENTITY,
            {
                "model_metrics": {
                    "metric_control": [
                        {
                            "metric_identifier": {
                                "family": "nv_inference_first_response_histogram_ms"
                            },
                            "histogram_options": {"buckets": [1.0, 10.0]},
                        }
                    ]
                }
            },
            "loads",
        ),
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    repo = tmp_path_factory.mktemp("repo")
    for version in ("1", "2"):
        (repo / "m" / version).mkdir(parents=True)
    (repo / "m" / "labels.txt").write_text("\n".join(f"c{i}" for i in range(16)))
    models.write_config(repo, "m", 'name: "m"\nbackend: "perfkit_identity"\n')
    models.identity_onnx(repo, "onnx")
    graph = onnx.load(str(repo / "onnx" / "1" / "model.onnx"))
    graph.graph.node[0].op_type = "Neg"  # the same signature, another graph: y = -x
    onnx.save(graph, str(repo / "onnx" / "1" / "neg.onnx"))
    with start_server(repo, "--model-control-mode=explicit") as handle:
        yield handle


def _cases() -> list[Any]:
    return [
        pytest.param(field, i, id=f"{field}-{i}")
        for field in TOP_LEVEL
        for i in range(len(SAMPLES.get(field, [None])))
    ]


def test_every_top_level_field_has_a_rule_and_a_sample():
    """A new model_config.proto field fails here until it is implemented, accepted or refused."""
    assert sorted(FIELDS) == sorted(TOP_LEVEL)
    assert sorted(SAMPLES) == sorted(TOP_LEVEL)
    for name, rule in FIELDS.items():
        assert rule.status in (IMPLEMENTED, ACCEPTED, REFUSED, CHECKED), name
        assert rule.why, name


@pytest.mark.parametrize(("field", "index"), _cases())
def test_field_is_served_with_effect_or_refused(server, field, index):
    base, fields, outcome = SAMPLES[field][index]
    config = copy.deepcopy(base)
    config.update(copy.deepcopy(fields))
    parsed = config_from_json(config)
    assert field in [f.name for f, _ in parsed.ListFields()], "the sample must set the field"
    model = base["name"]
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        if outcome == "refused":
            assert FIELDS[field].status in (REFUSED, CHECKED, IMPLEMENTED)
            with pytest.raises(InferenceServerException) as info:
                client.load_model(model, config=json.dumps(config))
            assert field in str(info.value), str(info.value)
            # The guard's own words: both ways out (model_operations is refused before the guard
            # runs, by backends.check_parameters: a config may not name code to load).
            if FIELDS[field].status == REFUSED and field != "model_operations":
                assert "remove" in str(info.value), str(info.value)
                assert "perfkit run -u" in str(info.value), str(info.value)
            return
        assert FIELDS[field].status != REFUSED
        client.load_model(model, config=json.dumps(config))
        assert client.is_model_ready(model)
        if callable(outcome):
            outcome(client, model)
        else:
            # Loaded without a visible effect here: the table says why (accepted), or a part of
            # issue #13 with its own tests implements it, or a checked field's value is allowed;
            # either way the served config reports the field as the load gave it.
            assert FIELDS[field].status in (ACCEPTED, IMPLEMENTED, CHECKED)
            assert _contains(_config(client, model)[field], config[field]), field
    finally:
        client.unload_model(model)
        client.close()


def _check(text: str, backend: str = "perfkit_identity", gpu: bool = False) -> None:
    from google.protobuf import text_format

    config = mc.ModelConfig(name="m", backend=backend)
    text_format.Parse(text, config)
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    check_fields(config, backend, "cfg", [Group(0, "m_0", kind, 1, (0,) if gpu else ())], None)


@pytest.mark.parametrize(
    "text",
    [
        "optimization { cuda { graphs: true } }",
        "optimization { priority: PRIORITY_MAX }",
        "optimization { eager_batching: true }",
    ],
)
def test_tensorrt_only_settings_refused_on_tensorrt_accepted_elsewhere(text):
    _check(text, "onnxruntime")
    _check(text, "pytorch")
    with pytest.raises(ValueError, match=r"optimization\.(cuda|priority|eager_batching).*remove"):
        _check(text, "tensorrt", gpu=True)


@pytest.mark.parametrize(
    "text",
    [
        "optimization { input_pinned_memory { enable: false } }",
        "optimization { output_pinned_memory { enable: false } }",
        "optimization { gather_kernel_buffer_threshold: 8 }",
        'cc_model_filenames { key: "8.0" value: "m80.onnx" }',
    ],
)
def test_gpu_copy_settings_refused_only_with_a_gpu_instance(text):
    _check(text, "onnxruntime")
    with pytest.raises(ValueError, match=r"(optimization|cc_model_filenames).*perfkit run -u"):
        _check(text, "onnxruntime", gpu=True)


def test_default_pinned_memory_is_fine_on_gpu():
    _check("optimization { input_pinned_memory { enable: true } }", "onnxruntime", gpu=True)


def test_message_names_the_path_and_both_ways_out():
    with pytest.raises(ValueError) as info:
        _check(
            'input [ { name: "I" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } } ]'
        )
    message = str(info.value)
    assert message.startswith("cfg: input[0].reshape: perfkit_server does not implement")
    assert "remove 'input[0].reshape'" in message
    assert "perfkit run -u" in message


def test_label_file_must_stay_in_the_model_directory(tmp_path: Path) -> None:
    from google.protobuf import text_format

    config = mc.ModelConfig(name="m")
    text_format.Parse('output [ { name: "O" label_filename: "../x.txt" } ]', config)
    with pytest.raises(ValueError, match=r"output\[0\]\.label_filename.*'\.\.'"):
        check_fields(config, "perfkit_identity", "cfg", None, tmp_path)
