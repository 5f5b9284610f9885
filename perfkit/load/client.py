"""Wire encoding of the inference requests a level sends, once per level, with tritonclient's public API.

The hot path in `perfkit.load.transports` (HTTP/1.1, h2) only writes the bytes built here: an
HTTP/1.1 request with Triton's binary tensor extension (`InferenceServerClient.generate_request_body`)
or a serialized `ModelInferRequest` (built from tritonclient's generated `service_pb2`: tritonclient
has no public call that encodes a gRPC request without sending it). Control-plane calls live in
`perfkit.control`; `control_client` binds one to a `TargetSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt

from perfkit.control import ControlClient, np_to_triton
from perfkit.errors import ConfigError
from perfkit.load.spec import RequestParameter, TargetSpec

Array = npt.NDArray[Any]


def control_client(target: TargetSpec) -> ControlClient:
    """The control-plane client for `target`'s server and model."""
    host, port = target.host_port
    return ControlClient(
        f"{host}:{port}",
        target.protocol,
        model=target.model,
        model_version=target.model_version,
        connect_timeout_s=target.connect_timeout_s,
        tls=target.secure,
        headers=target.headers,
    )


def _check_parameters(params: Sequence[RequestParameter]) -> None:
    """Triton reserves some request parameter names (sequence_id, priority, triton_*, ...)."""
    from tritonclient.utils import (
        TRITON_RESERVED_REQUEST_PARAMS,
        TRITON_RESERVED_REQUEST_PARAMS_PREFIX,
    )

    for name, _ in params:
        if name in TRITON_RESERVED_REQUEST_PARAMS or name.startswith(
            TRITON_RESERVED_REQUEST_PARAMS_PREFIX
        ):
            raise ConfigError(
                f"--request-parameter {name}: a parameter Triton reserves (the names "
                f"{', '.join(TRITON_RESERVED_REQUEST_PARAMS)} and {TRITON_RESERVED_REQUEST_PARAMS_PREFIX}*); "
                "choose another name."
            )


def _model_path(target: TargetSpec) -> str:
    path = f"/v2/models/{target.model}"
    return path + f"/versions/{target.model_version}" if target.model_version else path


def http_body(
    target: TargetSpec,
    inputs: Mapping[str, Array],
    output_names: Sequence[str],
    *,
    shm: Mapping[str, tuple[str, int]] | None = None,
    out_shm: Mapping[str, tuple[str, int]] | None = None,
    sequence: tuple[int, bool, bool] | None = None,
) -> tuple[bytes, int | None]:
    """An HTTP inference request's body and its JSON header's length (None: all JSON): tensors in
    Triton's binary tensor extension, or in the JSON body with `target.input_tensor_format` /
    `output_tensor_format` "json"; `target.request_parameters` in the body's "parameters", and
    `sequence` (id, start, end) as sequence_id / sequence_start / sequence_end.

    `shm` / `out_shm`: inputs / outputs in shared memory, name -> (region, byte size).
    """
    import tritonclient.http as th

    _check_parameters(target.request_parameters)
    binary_in = target.input_tensor_format == "binary"
    binary_out = target.output_tensor_format == "binary"
    ins = []
    for name, arr in inputs.items():
        i = th.InferInput(name, list(arr.shape), np_to_triton(arr.dtype))
        if shm and name in shm:
            i.set_shared_memory(shm[name][0], shm[name][1])
        else:
            i.set_data_from_numpy(arr, binary_data=binary_in)
        ins.append(i)
    outs = []
    for n in output_names:
        o = th.InferRequestedOutput(n, binary_data=binary_out)
        if out_shm and n in out_shm:
            o.set_shared_memory(out_shm[n][0], out_shm[n][1])
        outs.append(o)
    seq_id, seq_start, seq_end = sequence or (0, False, False)
    body, json_size = th.InferenceServerClient.generate_request_body(
        ins,
        outputs=outs,
        parameters=dict(target.request_parameters) or None,
        sequence_id=seq_id,
        sequence_start=seq_start,
        sequence_end=seq_end,
    )
    if isinstance(body, str):
        body = body.encode()
    return bytes(body), json_size


def http_head(target: TargetSpec, json_size: int | None, body_size: int) -> bytes:
    """The HTTP/1.1 request line and headers of an inference request (`http_body`'s)."""
    host, port = target.host_port
    head = [
        f"POST {_model_path(target)}/infer HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: keep-alive",
    ]
    if json_size is not None:
        head.append("Content-Type: application/octet-stream")
        head.append(f"Inference-Header-Content-Length: {json_size}")
    else:
        head.append("Content-Type: application/json")
    head.append(f"Content-Length: {body_size}")
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def http_request_bytes(
    target: TargetSpec,
    inputs: Mapping[str, Array],
    output_names: Sequence[str],
    *,
    shm: Mapping[str, tuple[str, int]] | None = None,
    out_shm: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """One complete HTTP/1.1 request (headers + body), see `http_body`."""
    body, json_size = http_body(target, inputs, output_names, shm=shm, out_shm=out_shm)
    return http_head(target, json_size, len(body)) + body


def grpc_request_bytes(
    target: TargetSpec,
    inputs: Mapping[str, Array],
    *,
    shm: Mapping[str, tuple[str, int]] | None = None,
    out_shm: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """A serialized ModelInferRequest (raw_input_contents; all outputs returned raw, or, with
    `out_shm`, those outputs requested into their shared-memory regions), with
    `target.request_parameters` as its InferParameters.

    The same message tritonclient's `InferInput.set_data_from_numpy` / `set_shared_memory` and
    `infer` build: BYTES tensors serialized with `serialize_byte_tensor`, others as raw bytes.
    """
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    _check_parameters(target.request_parameters)
    req = service_pb2.ModelInferRequest(model_name=target.model, model_version=target.model_version)
    for pname, value in target.request_parameters:  # InferParameter, typed as tritonclient does
        if isinstance(value, bool):
            req.parameters[pname].bool_param = value
        elif isinstance(value, int):
            req.parameters[pname].int64_param = value
        else:
            req.parameters[pname].string_param = value
    for name, arr in inputs.items():
        datatype = np_to_triton(arr.dtype)
        tensor = req.inputs.add(name=name, datatype=datatype, shape=arr.shape)
        if shm and name in shm:
            region, byte_size = shm[name]
            tensor.parameters["shared_memory_region"].string_param = region
            tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
        elif datatype == "BYTES":
            serialized = serialize_byte_tensor(arr)
            req.raw_input_contents.append(serialized.item() if serialized.size > 0 else b"")
        else:
            req.raw_input_contents.append(arr.tobytes())
    for name, (region, byte_size) in (out_shm or {}).items():
        out = req.outputs.add(name=name)
        out.parameters["shared_memory_region"].string_param = region
        out.parameters["shared_memory_byte_size"].int64_param = byte_size
    return bytes(req.SerializeToString())
