"""Contract: the system shared-memory extension as tritonclient sees it (status shapes, an input
and an output in regions, Triton's errors), the same from perfkit_server and a real tritonserver.

The tritonserver here predates --allow-client-shm (it lets clients register regions without it);
perfkit_server, like Triton since 2026-04, needs the flag: PERFKIT_ARGS.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.contract._client import PROTOCOLS
from tests.contract._models import SIZE, IdentitySpec
from tests.contract._server import Server

MODEL = "shm_identity"
SPECS = [IdentitySpec(MODEL, max_batch_size=8)]
PERFKIT_ARGS = ("--allow-client-shm=true",)
NBYTES = 2 * SIZE * 4  # a [2, SIZE] FP32 tensor
PAGE = 4096  # a region's offset in its object: Triton maps it with mmap, which needs a page offset

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def region(server: Server) -> Iterator[tuple[str, str, Any]]:
    """A POSIX shm object of a page and a tensor; unregistered (everywhere) and destroyed after."""
    name = f"pk_contract_{uuid.uuid4().hex[:10]}"
    handle = shm.create_shared_memory_region(name, f"/{name}", PAGE + NBYTES)
    try:
        yield name, f"/{name}", handle
    finally:
        server.client("http").unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_status_shapes(server: Server, region: tuple[str, str, Any], protocol: str) -> None:
    name, key, _ = region
    client = server.client(protocol)
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory(name, key, NBYTES, offset=NBYTES)
    assert (
        f"failed to register shared memory region '{name}': unable to process address space"
        in exc.value.message()
    )
    client.register_system_shared_memory(name, key, NBYTES, offset=PAGE)
    if protocol == "http":
        assert client.get_system_shared_memory_status(name) == [
            {"name": name, "key": key, "offset": PAGE, "byte_size": NBYTES}
        ]
    else:
        assert client.get_system_shared_memory_status(name, as_json=True) == {
            "regions": {
                name: {"name": name, "key": key, "offset": str(PAGE), "byte_size": str(NBYTES)}
            }
        }
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory(name, key, NBYTES)
    assert f"shared memory region '{name}' already in manager" in exc.value.message()
    client.unregister_system_shared_memory(name)
    with pytest.raises(InferenceServerException) as exc:
        client.get_system_shared_memory_status(name)
    assert f"Unable to find system shared memory region: '{name}'" in exc.value.message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_input_and_output_in_shm(
    server: Server, region: tuple[str, str, Any], protocol: str
) -> None:
    name, key, handle = region
    mod = httpclient if protocol == "http" else grpcclient
    client = server.client(protocol)
    x = np.arange(2 * SIZE, dtype=np.float32).reshape(2, SIZE)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory(name, key, 2 * NBYTES)
    i = mod.InferInput("INPUT0", [2, SIZE], "FP32")
    i.set_shared_memory(name, NBYTES)
    out = mod.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory(name, NBYTES, offset=NBYTES)
    result = client.infer(MODEL, [i], outputs=[out])
    meta = result.get_output("OUTPUT0")
    if protocol == "http":
        assert meta == {"name": "OUTPUT0", "datatype": "FP32", "shape": [2, SIZE]}
    else:
        assert (meta.datatype, list(meta.shape)) == ("FP32", [2, SIZE])
    got = shm.get_contents_as_numpy(handle, np.float32, [2, SIZE], offset=NBYTES)
    np.testing.assert_array_equal(got, x)

    cases = [
        (
            "pk_contract_unknown",
            NBYTES,
            0,
            "Unable to find shared memory region: 'pk_contract_unknown'",
        ),
        (name, NBYTES - 4, 0, f"input byte size mismatch for input 'INPUT0' for model '{MODEL}'"),
        (name, NBYTES, 2 * NBYTES, f"Invalid offset for shared memory region: '{name}'"),
        (
            name,
            NBYTES,
            NBYTES + 4,
            f"Invalid offset + byte size for shared memory region: '{name}'",
        ),
    ]
    for region_name, size, offset, message in cases:
        bad = mod.InferInput("INPUT0", [2, SIZE], "FP32")
        bad.set_shared_memory(region_name, size, offset=offset)
        with pytest.raises(InferenceServerException) as exc:
            client.infer(MODEL, [bad])
        assert message in exc.value.message()
