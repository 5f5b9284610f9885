"""Equivalent identity models for the two servers under contract: same config.pbtxt, two backends.

Both servers get a config.pbtxt that differs only in `backend`: "python" (a `1/model.py` for real
Triton's python backend) or "perfkit_identity" (perfkit_server's built-in copy backend). Each
config carries both delay parameters (`delay_s` for the python model, `execute_delay_us` for
perfkit_identity) so the two sleep the same time per execution. Like perfkit_identity, the python
model refuses to initialize on a config without inputs and outputs, so the two backends accept
and refuse the same configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PERFKIT = "perfkit_server"
TRITON = "triton"

SIZE = 16


@dataclass(frozen=True)
class IdentitySpec:
    """The config.pbtxt fields the contract cares about."""

    name: str
    max_batch_size: int = 8
    instance_count: int = 1
    queue_delay_us: int | None = None  # None: no dynamic_batching block
    delay_us: int = 0


MODEL_PY = '''"""perfkit contract identity for Triton's python backend: INPUT0 -> OUTPUT0."""
import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not config.get("input") or not config.get("output"):
            # As perfkit_identity: an identity needs inputs and outputs.
            raise pb_utils.TritonModelException("the identity model needs inputs and outputs")
        value = config.get("parameters", {}).get("delay_s", {}).get("string_value", "")
        self.delay_s = float(value) if value else 0.0

    def execute(self, requests):
        if self.delay_s:
            time.sleep(self.delay_s)
        responses = []
        for request in requests:
            x0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", x0)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''


def config_text(spec: IdentitySpec, backend: str) -> str:
    """The config.pbtxt of `spec` for `backend` ("python" or "perfkit_identity")."""
    lines = [
        f'name: "{spec.name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {spec.max_batch_size}",
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]',
        f'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {SIZE} ] }} ]',
        f"instance_group [ {{ count: {spec.instance_count} kind: KIND_CPU }} ]",
    ]
    if spec.queue_delay_us is not None:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {spec.queue_delay_us} }}")
    if spec.delay_us:
        lines += [
            f'parameters {{ key: "delay_s" value {{ string_value: "{spec.delay_us / 1e6:g}" }} }}',
            f'parameters {{ key: "execute_delay_us" value {{ string_value: "{spec.delay_us}" }} }}',
        ]
    return "\n".join(lines) + "\n"


def backend_for(kind: str) -> str:
    return "python" if kind == TRITON else "perfkit_identity"


def write_model(repo: Path, spec: IdentitySpec, kind: str) -> Path:
    """Write `spec` into `repo` for server `kind` (PERFKIT or TRITON); returns the model dir."""
    model_dir = repo / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    if kind == TRITON:
        (model_dir / "1" / "model.py").write_text(MODEL_PY)
    (model_dir / "config.pbtxt").write_text(config_text(spec, backend_for(kind)))
    return model_dir


def write_repo(repo: Path, specs: list[IdentitySpec], kind: str) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        write_model(repo, spec, kind)
    return repo
