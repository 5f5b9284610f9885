"""Contract: a decoupled model over gRPC streaming, on perfkit_server and on the real tritonserver.

The model is Triton's `repeat_int32` (IN, DELAY, WAIT -> one response per element of IN with OUT
and IDX, then FINAL without outputs). The real server runs it as a decoupled python model
(`request.get_response_sender()`); perfkit_server runs it with its perfkit_repeat backend, and
also runs the very same model.py once its python backend is there (the `perfkit_python` param
skips until then). Responses, their order, ids and `triton_final_response` flags, the empty final
response on request, an error response, the unary refusals and the request statistics must match
(perfkit_repeat also reports response_stats, which a python model's never has).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.contract._models import PERFKIT, TRITON
from tests.contract.conftest import _perfkit, _triton
from tests.fixtures.triton import triton_available

PERFKIT_PYTHON = "perfkit_python"
MODEL = "repeat_int32"
WAIT_S = 30.0

CONFIG = """name: "repeat_int32"
backend: "{backend}"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] }},
  {{ name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
output [
  {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

MODEL_PY = '''"""repeat_int32 as a decoupled python model: one response per element of IN, then FINAL."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "repeat_int32 needs model_transaction_policy { decoupled: true }"
            )

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
            if values.shape != delays.shape:
                shapes = [
                    "[" + ",".join(str(d) for d in a.shape) + "]" for a in (values, delays)
                ]
                message = f"expected IN and DELAY shape to match, got {shapes[0]} and {shapes[1]}"
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(message)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            for i, (value, delay) in enumerate(zip(values.tolist(), delays.tolist())):
                if delay:
                    time.sleep(delay / 1000)
                out = pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))
                idx = pb_utils.Tensor("IDX", np.array([i], dtype=np.uint32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def _python_backend_known() -> bool:
    from perfkit_server.backends import known_backend

    return known_backend("python")


@pytest.fixture(
    scope="module",
    params=[PERFKIT, PERFKIT_PYTHON, pytest.param(TRITON, marks=pytest.mark.triton)],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """(kind, grpc url, http url) of a server serving repeat_int32."""
    kind: str = request.param
    if kind == TRITON and not triton_available():
        pytest.skip("no tritonserver: neither on PATH nor the nvidia-pytriton wheel")
    if kind == PERFKIT_PYTHON and not _python_backend_known():
        pytest.skip("perfkit_server has no python backend yet: the same model.py runs once it does")
    base = tmp_path_factory.mktemp(f"decoupled-{kind}")
    model_dir = base / "repo" / MODEL
    (model_dir / "1").mkdir(parents=True)
    backend = "perfkit_repeat" if kind == PERFKIT else "python"
    (model_dir / "config.pbtxt").write_text(CONFIG.format(backend=backend))
    if backend == "python":
        (model_dir / "1" / "model.py").write_text(MODEL_PY)
    launcher: contextlib.AbstractContextManager[tuple[str, str, str, Path]]
    if kind == TRITON:
        launcher = _triton(base / "repo", base, request.getfixturevalue("triton_cache_dir"))
    else:
        launcher = _perfkit(base / "repo", base)
    with launcher as (http_url, grpc_url, _metrics, _log):
        yield kind, grpc_url, http_url


def _inputs(module: Any, values: list[int], delays: list[int] | None = None) -> list[Any]:
    delays = delays if delays is not None else [0] * len(values)
    arrays = (
        ("IN", np.array(values, dtype=np.int32), "INT32"),
        ("DELAY", np.array(delays, dtype=np.uint32), "UINT32"),
        ("WAIT", np.array([0], dtype=np.uint32), "UINT32"),
    )
    inputs = []
    for name, array, datatype in arrays:
        inp = module.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


class _Stream:
    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(lambda result, error: self.results.put((result, error)))

    def take(self, n: int) -> list[tuple[Any, Any]]:
        deadline = time.monotonic() + WAIT_S
        return [self.results.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(n)]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(server: Any) -> Iterator[_Stream]:
    s = _Stream(server[1])
    yield s
    s.close()


def _row(result: Any) -> tuple[str, int | None, int | None, bool]:
    out, idx = result.as_numpy("OUT"), result.as_numpy("IDX")
    response = result.get_response()
    return (
        response.id,
        None if out is None else int(out[0]),
        None if idx is None else int(idx[0]),
        bool(response.parameters["triton_final_response"].bool_param),
    )


def test_responses_in_order_then_an_empty_final_on_request(stream: _Stream) -> None:
    stream.client.async_stream_infer(
        MODEL, _inputs(grpcclient, [4, 5, 6]), request_id="a", enable_empty_final_response=True
    )
    rows = [_row(result) for result, _ in stream.take(4)]
    assert rows == [
        ("a", 4, 0, False),
        ("a", 5, 1, False),
        ("a", 6, 2, False),
        ("a", None, None, True),
    ]


def test_without_the_parameter_no_empty_final(stream: _Stream) -> None:
    stream.client.async_stream_infer(MODEL, _inputs(grpcclient, [1, 2]), request_id="quiet")
    stream.client.async_stream_infer(
        MODEL, _inputs(grpcclient, []), request_id="marker", enable_empty_final_response=True
    )
    rows = [_row(result) for result, _ in stream.take(3)]
    assert rows == [("quiet", 1, 0, False), ("quiet", 2, 1, False), ("marker", None, None, True)]


def test_an_error_response_on_the_stream(stream: _Stream) -> None:
    stream.client.async_stream_infer(MODEL, _inputs(grpcclient, [1, 2], [0, 0, 0]), request_id="e")
    stream.client.async_stream_infer(
        MODEL, _inputs(grpcclient, [9]), request_id="ok", enable_empty_final_response=True
    )
    messages = stream.take(3)
    result, error = messages[0]
    assert result is None
    assert "expected IN and DELAY shape to match, got [2] and [3]" in str(error)
    assert [_row(r) for r, _ in messages[1:]] == [("ok", 9, 0, False), ("ok", None, None, True)]


def test_unary_infer_is_refused(server: Any) -> None:
    _kind, grpc_url, http_url = server
    with pytest.raises(InferenceServerException) as grpc_error:
        grpcclient.InferenceServerClient(grpc_url).infer(MODEL, _inputs(grpcclient, [1]))
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in str(
        grpc_error.value
    )
    with pytest.raises(InferenceServerException) as http_error:
        httpclient.InferenceServerClient(http_url).infer(MODEL, _inputs(httpclient, [1]))
    assert "HTTP end point doesn't support models with decoupled transaction policy" in str(
        http_error.value
    )


def test_request_statistics(server: Any, stream: _Stream) -> None:
    client = grpcclient.InferenceServerClient(server[1])
    before = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    for i in range(3):
        stream.client.async_stream_infer(
            MODEL, _inputs(grpcclient, [i, i]), request_id=f"s{i}", enable_empty_final_response=True
        )
    stream.take(3 * 3)

    def count(model: dict[str, Any], key: str) -> int:
        return int(model["inference_stats"].get(key, {}).get("count", 0))

    # Triton counts a request, and either server an execution, once the execution returns, which
    # may be after its FINAL response reached the client: poll (bounded) until they are counted.
    deadline = time.monotonic() + WAIT_S
    while True:
        after = client.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
        executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
        if count(after, "success") - count(before, "success") >= 3 and executions >= 3:
            break
        assert time.monotonic() < deadline, f"3 requests never counted: {after}"
        time.sleep(0.01)
    assert count(after, "success") - count(before, "success") == 3
    assert int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)) == 3
    assert int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)) == 3
    if server[0] != PERFKIT:  # the python backend reports no response statistics
        assert not after.get("response_stats")
