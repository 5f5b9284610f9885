"""The load tests' model repository (shared by tests/load and tests/cli_run through `load_server`)."""

from __future__ import annotations

from pathlib import Path

from perfkit import zoo


def identity_config(
    name: str,
    *,
    dims: str = "16",
    max_batch_size: int = 8,
    delay_us: int = 0,
    stall_every: int = 0,
    stall_us: int = 0,
    datatype: str = "TYPE_FP32",
) -> str:
    return f"""name: "{name}"
backend: "perfkit_identity"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {datatype} dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT0" data_type: {datatype} dims: [ {dims} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_us" value: {{ string_value: "{delay_us}" }} }}
parameters {{ key: "stall_every_n" value: {{ string_value: "{stall_every}" }} }}
parameters {{ key: "stall_us" value: {{ string_value: "{stall_us}" }} }}
"""


def write_model(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)


def build_repo(repo: Path, cache_dir: Path) -> Path:
    """identity + add_sub (zoo, ONNX Runtime), `fast` (perfkit_identity), `varid` (a variable dim),
    `stall` (every 200th execution stalls 30 ms), `nobatch` (max_batch_size 0), `slow` (5 ms),
    `strid` (BYTES), `big` (800 KB tensors: HTTP/2 flow control and frame splitting)."""
    zoo.build("identity", repo, cache_dir=cache_dir)
    zoo.build("add_sub", repo, cache_dir=cache_dir)
    write_model(repo, "fast", identity_config("fast"))
    write_model(repo, "varid", identity_config("varid", dims="-1"))
    write_model(
        repo, "stall", identity_config("stall", delay_us=200, stall_every=200, stall_us=30000)
    )
    write_model(repo, "nobatch", identity_config("nobatch", max_batch_size=0))
    write_model(repo, "slow", identity_config("slow", delay_us=5000))
    write_model(repo, "strid", identity_config("strid", dims="4", datatype="TYPE_STRING"))
    write_model(repo, "big", identity_config("big", dims="200000", max_batch_size=2))
    return repo
