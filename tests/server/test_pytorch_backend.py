"""The pytorch backend (platform pytorch_libtorch) on CPU with real torch: TorchScript modules
served by perfkit_server, called through tritonclient HTTP and gRPC, outputs checked against the
same module run here; Triton's naming rules, datatypes, variable dims, dynamic batching; bad
configs fail their own model's load with a message saying what is wrong, and the others serve."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from perfkit_server.backends.base import InstanceSpec
from perfkit_server.backends.pytorch import PyTorchBackend
from tritonclient.utils import InferenceServerException

from perfkit import zoo
from perfkit.model_repo.config import load_config
from tests.fixtures.server import ServerHandle, start_server
from tests.server.helpers import stats

torch = pytest.importorskip("torch")

from tests.server import torch_modules as tm  # noqa: E402  (defines torch modules)

DTYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
NP = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def _tensors(kind: str, specs: list[tuple[str, str, list[int]]]) -> str:
    body = ", ".join(
        f'{{ name: "{n}" data_type: TYPE_{t} dims: [ {", ".join(map(str, d))} ] }}'
        for n, t, d in specs
    )
    return f"{kind} [ {body} ]\n"


def write_model(
    repo: Path,
    name: str,
    module: Any | None,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    *,
    max_batch_size: int = 0,
    extra: str = "",
) -> Path:
    """<repo>/<name>/config.pbtxt and 1/model.pt (the module scripted; None: no file)."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    text = f'name: "{name}"\nplatform: "pytorch_libtorch"\nmax_batch_size: {max_batch_size}\n'
    if inputs:
        text += _tensors("input", inputs)
    if outputs:
        text += _tensors("output", outputs)
    (model_dir / "config.pbtxt").write_text(text + textwrap.dedent(extra))
    if module is not None:
        torch.jit.script(module).save(str(model_dir / "1" / "model.pt"))
    return model_dir


V4 = [4]
PAIR_OUT = [("OUT__0", "FP32", V4), ("OUT__1", "FP32", V4)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pt-repo")
    zoo.build("fc_model_pt", root)
    batching = (
        "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000 }"
    )
    # forward(a, b): by forward() argument names (listed in another order than forward's).
    write_model(root, "by_arg", tm.AddSub(), [("b", "FP32", V4), ("a", "FP32", V4)],
                [("OUT__1", "FP32", V4), ("OUT__0", "FP32", V4)], max_batch_size=8)  # fmt: skip
    # <name>__<index>: INPUT__1 is b, whatever the order in the config.
    write_model(root, "by_index", tm.AddSub(), [("INPUT__1", "FP32", V4), ("INPUT__0", "FP32", V4)],
                PAIR_OUT, max_batch_size=8)  # fmt: skip
    write_model(root, "batched", tm.AddSub(), [("INPUT__0", "FP32", V4), ("INPUT__1", "FP32", V4)],
                PAIR_OUT, max_batch_size=8, extra=batching)  # fmt: skip
    # Neither: the config's order, for inputs and for outputs.
    write_model(root, "by_order", tm.AddSub(), [("X", "FP32", V4), ("Y", "FP32", V4)],
                [("first", "FP32", V4), ("second", "FP32", V4)])  # fmt: skip
    write_model(root, "dict_in", tm.DictIn(), [("a", "FP32", V4), ("b", "FP32", V4)],
                [("OUT__0", "FP32", V4)], max_batch_size=8)  # fmt: skip
    write_model(root, "dtypes", tm.AllTypes(),
                [(f"IN_{t}__{i}", t, [3]) for i, t in enumerate(DTYPES)],
                [(f"OUT_{t}__{i}", t, [3]) for i, t in enumerate(DTYPES)])  # fmt: skip
    write_model(root, "wrong_dtype", tm.AsDouble(), [("INPUT__0", "FP32", V4)],
                [("OUTPUT__0", "FP32", V4)])  # fmt: skip
    write_model(root, "knobs", tm.AddSub(), [("a", "FP32", V4), ("b", "FP32", V4)], PAIR_OUT,
                max_batch_size=8, extra="""
                instance_group [ { count: 2 kind: KIND_CPU } ]
                parameters { key: "INFERENCE_MODE" value { string_value: "false" } }
                parameters { key: "DISABLE_OPTIMIZED_EXECUTION" value { string_value: "TRUE" } }
                parameters { key: "ENABLE_WEIGHT_SHARING" value { string_value: "on" } }
                parameters { key: "ENABLE_JIT_PROFILING" value { string_value: "1" } }
                parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }
                parameters { key: "SOMETHING_TRITON_IGNORES" value { string_value: "x" } }
                """)  # fmt: skip
    # Bad configs: each fails its own load.
    write_model(root, "no_file", None, [("a", "FP32", V4), ("b", "FP32", V4)], PAIR_OUT)
    write_model(root, "out_of_range", tm.AddSub(), [("a", "FP32", V4), ("b", "FP32", V4)],
                [("OUT__0", "FP32", V4), ("OUT__2", "FP32", V4)])  # fmt: skip
    write_model(root, "in_out_of_range", tm.AddSub(),
                [("INPUT__0", "FP32", V4), ("INPUT__5", "FP32", V4)], PAIR_OUT)  # fmt: skip
    write_model(root, "three_inputs", tm.AddSub(),
                [("a", "FP32", V4), ("b", "FP32", V4), ("c", "FP32", V4)], PAIR_OUT)  # fmt: skip
    write_model(root, "no_outputs", tm.AddSub(), [("a", "FP32", V4), ("b", "FP32", V4)], [])
    write_model(root, "strings", tm.AddSub(), [("a", "STRING", [1]), ("b", "FP32", V4)], PAIR_OUT)
    write_model(root, "uint32", tm.AddSub(), [("a", "UINT32", V4), ("b", "FP32", V4)], PAIR_OUT)
    write_model(root, "bad_flag", tm.AddSub(), [("a", "FP32", V4), ("b", "FP32", V4)], PAIR_OUT,
                extra='parameters { key: "INFERENCE_MODE" value { string_value: "maybe" } }')  # fmt: skip
    write_model(root, "on_gpu", tm.AddSub(), [("a", "FP32", V4), ("b", "FP32", V4)], PAIR_OUT,
                extra="instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]")  # fmt: skip
    garbage = write_model(root, "not_torchscript", None, [("a", "FP32", V4), ("b", "FP32", V4)],
                          PAIR_OUT)  # fmt: skip
    (garbage / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    with start_server(repo, log_path=log, timeout=120) as handle:
        yield handle


def _module(repo: Path, name: str) -> Any:
    return torch.jit.load(str(repo / name / "1" / "model.pt"))


def _input(client: Any, name: str, array: np.ndarray[Any, Any], datatype: str) -> Any:
    inp = client.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


@pytest.mark.parametrize("client_module", [httpclient, grpcclient], ids=["http", "grpc"])
@pytest.mark.parametrize("shape", [(1, 16), (5, 3)])
def test_fc_model_pt_matches_torch(server, repo, client_module, shape) -> None:
    url = server.http_url if client_module is httpclient else server.grpc_url
    client = client_module.InferenceServerClient(url)
    tokens = np.random.default_rng(sum(shape)).integers(-(2**40), 2**40, shape, dtype=np.int64)
    result = client.infer("fc_model_pt", [_input(client_module, "input__0", tokens, "INT64")])
    want4, want8 = _module(repo, "fc_model_pt")(torch.from_numpy(tokens))
    np.testing.assert_allclose(result.as_numpy("output__0"), want4.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("output__1"), want8.detach().numpy(), rtol=1e-6)
    assert result.as_numpy("output__0").shape == (*shape, 4)
    assert result.as_numpy("output__1").dtype == np.float32


def _pair(rows: int = 2) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(rows)
    return (
        rng.standard_normal((rows, 4)).astype(np.float32),
        rng.standard_normal((rows, 4)).astype(np.float32),
    )


@pytest.mark.parametrize(
    ("model", "names", "outputs", "batched"),
    [
        ("by_arg", ("a", "b"), ("OUT__0", "OUT__1"), True),
        ("by_index", ("INPUT__0", "INPUT__1"), ("OUT__0", "OUT__1"), True),
        ("by_order", ("X", "Y"), ("first", "second"), False),
    ],
)
def test_naming_conventions(server, model, names, outputs, batched) -> None:
    a, b = _pair()
    if not batched:
        a, b = a[0], b[0]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.infer(
        model, [_input(grpcclient, n, x, "FP32") for n, x in zip(names, (a, b), strict=True)]
    )
    np.testing.assert_allclose(result.as_numpy(outputs[0]), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy(outputs[1]), a - b, rtol=1e-6)


def test_dict_input(server) -> None:
    a, b = _pair(3)
    client = httpclient.InferenceServerClient(server.http_url)
    result = client.infer(
        "dict_in", [_input(httpclient, "a", a, "FP32"), _input(httpclient, "b", b, "FP32")]
    )
    np.testing.assert_allclose(result.as_numpy("OUT__0"), 2 * a + b, rtol=1e-6)


@pytest.mark.parametrize("client_module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_every_datatype_round_trips(server, repo, client_module) -> None:
    url = server.http_url if client_module is httpclient else server.grpc_url
    client = client_module.InferenceServerClient(url)
    arrays = {t: (np.arange(3) % 2 == 0 if t == "BOOL" else np.arange(3) + 1).astype(NP[t])
              for t in DTYPES}  # fmt: skip
    result = client.infer(
        "dtypes",
        [_input(client_module, f"IN_{t}__{i}", arrays[t], t) for i, t in enumerate(DTYPES)],
    )
    expected = _module(repo, "dtypes")(*(torch.from_numpy(arrays[t]) for t in DTYPES))
    for i, t in enumerate(DTYPES):
        got = result.as_numpy(f"OUT_{t}__{i}")
        assert got.dtype == NP[t], t
        np.testing.assert_array_equal(got, expected[i].numpy())


async def test_dynamic_batching_with_variable_dims(server, repo) -> None:
    client = grpcaio.InferenceServerClient(server.grpc_url)
    module = _module(repo, "batched")
    try:
        before = stats(server.http_url, "batched")["execution_count"]
        # Four batch-1 requests of one shape form one batch (preferred size 4).
        a, b = _pair(1)
        pairs = [(a + i, b) for i in range(4)]
        results = await asyncio.gather(*(
            client.infer("batched", [_input(grpcaio, "INPUT__0", a, "FP32"),
                                      _input(grpcaio, "INPUT__1", b, "FP32")])
            for a, b in pairs))  # fmt: skip
        for (a, b), result in zip(pairs, results, strict=True):
            want = module(torch.from_numpy(a), torch.from_numpy(b))
            np.testing.assert_allclose(result.as_numpy("OUT__0"), want[0].numpy(), rtol=1e-6)
            np.testing.assert_allclose(result.as_numpy("OUT__1"), want[1].numpy(), rtol=1e-6)
        assert stats(server.http_url, "batched")["execution_count"] == before + 1
    finally:
        await client.close()

    # fc_model_pt: requests of different sequence lengths at once, each answered in its shape.
    client = grpcaio.InferenceServerClient(server.grpc_url)
    fc = _module(repo, "fc_model_pt")
    try:
        tokens = [np.arange(n, dtype=np.int64).reshape(1, n) for n in (3, 5, 3, 8)]
        results = await asyncio.gather(*(
            client.infer("fc_model_pt", [_input(grpcaio, "input__0", t, "INT64")]) for t in tokens))  # fmt: skip
        for t, result in zip(tokens, results, strict=True):
            np.testing.assert_allclose(
                result.as_numpy("output__1"), fc(torch.from_numpy(t))[1].detach().numpy(), rtol=1e-6
            )
    finally:
        await client.close()


def test_parameters_are_honoured_and_unknown_ones_ignored(server) -> None:
    a, b = _pair(2)
    client = httpclient.InferenceServerClient(server.http_url)
    for _ in range(3):  # both instances, the JIT's profiling runs included
        result = client.infer("knobs", [_input(httpclient, "a", a, "FP32"),
                                        _input(httpclient, "b", b, "FP32")])  # fmt: skip
        np.testing.assert_allclose(result.as_numpy("OUT__1"), a - b, rtol=1e-6)

    assert "INTRA_OP_THREAD_COUNT=1 set for this server's process" in server.log()


def _spec(model_dir: Path, instances: int = 1, index: int = 0) -> Any:
    config = load_config(model_dir / "config.pbtxt")
    return InstanceSpec(config.name, 1, model_dir / "1", config, index, instances, "KIND_CPU", 0)


def test_weight_sharing_and_inference_mode_in_process(tmp_path: Path) -> None:
    ins = [("a", "FP32", V4), ("b", "FP32", V4)]
    shared = write_model(tmp_path, "shared", tm.AddSub(), ins, PAIR_OUT, extra="""
        parameters { key: "ENABLE_WEIGHT_SHARING" value { string_value: "true" } }""")  # fmt: skip
    first, second = (PyTorchBackend(_spec(shared, 2, i)) for i in range(2))
    plain = write_model(tmp_path, "plain", tm.AddSub(), ins, PAIR_OUT, extra="""
        parameters { key: "INFERENCE_MODE" value { string_value: "off" } }""")  # fmt: skip
    third, fourth = (PyTorchBackend(_spec(plain, 2, i)) for i in range(2))
    try:
        assert first._module is second._module
        assert third._module is not fourth._module
        a, b = _pair(2)
        assert first._forward({"a": a, "b": b})[0].is_inference()
        assert not third._forward({"a": a, "b": b})[0].is_inference()
        # A read-only request buffer is never handed to the model to write into.
        a.setflags(write=False)
        out = first.infer({"a": a, "b": b})
        np.testing.assert_allclose(out["OUT__0"], a + b, rtol=1e-6)
        assert first.may_block is False
    finally:
        for backend in (first, second, third, fourth):
            backend.close()


def test_the_backend_itself_refuses_kind_gpu_without_a_cuda_device(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    model_dir = write_model(tmp_path, "g", tm.AddSub(), [("a", "FP32", V4), ("b", "FP32", V4)],
                            PAIR_OUT)  # fmt: skip
    spec = _spec(model_dir)
    gpu = InstanceSpec(spec.model_name, 1, spec.version_dir, spec.config, 0, 1, "KIND_GPU", 0)
    with pytest.raises(ValueError, match=r"model 'g': instance kind KIND_GPU .* no CUDA GPU"):
        PyTorchBackend(gpu)


def test_an_output_of_another_datatype_fails_the_request(server) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((4,), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("wrong_dtype", [_input(httpclient, "INPUT__0", x, "FP32")])
    assert (
        "configuration expects datatype TYPE_FP32 for output 'OUTPUT__0', model provides TYPE_FP64"
        in str(info.value)
    )


BAD = {
    "no_file": "unable to find",
    "out_of_range": "output 'OUT__2': maps to element 2 of what forward() returns, but it returns 2",
    "in_out_of_range": "input 'INPUT__5': index 5 by the <name>__<index> convention",
    "three_inputs": "the configuration lists 3 input(s) ['a', 'b', 'c'], the model's forward() takes 2",
    "no_outputs": "output",
    "strings": "TYPE_STRING (BYTES) tensors are not supported",
    "uint32": "unsupported datatype TYPE_UINT32",
    "bad_flag": "parameters['INFERENCE_MODE'].string_value must be true or false",
    "on_gpu": "GPU",
    "not_torchscript": "as TorchScript",
}


@pytest.mark.parametrize("model", sorted(BAD))
def test_a_bad_model_fails_its_own_load(server, model) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index[model]["state"] == "UNAVAILABLE"
    assert BAD[model] in index[model]["reason"]
    assert not client.is_model_ready(model)
    # The good ones serve.
    assert client.is_model_ready("fc_model_pt")
    assert client.is_model_ready("by_arg")


def test_without_torch_a_pytorch_model_fails_and_the_others_serve(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    zoo.build("fc_model_pt", repo)
    zoo.build("identity", repo)
    # A FAKE torch that is not installed: `import torch` raises ImportError in the server.
    fake = tmp_path / "fake-no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'torch' (FAKE)\")\n")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    )
    with start_server(repo, env=env) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_model_ready("identity")
        index = {e["name"]: e for e in client.get_model_repository_index()}
        reason = index["fc_model_pt"]["reason"]
        assert "model 'fc_model_pt'" in reason
        assert "pip install 'perfkit[torch]'" in reason
