"""The zoo's TorchScript models (platform `pytorch_libtorch`): builders that import torch only when
called, so the zoo lists and builds its ONNX models without torch.

`resnet50_pt` is the ONNX `resnet50` as a TorchScript module with the same weights (the same
logits); `fc_model_pt` is the seed's example, served with `FC_MODEL_PT_CONFIG` verbatim.
"""

from __future__ import annotations

from types import ModuleType

from perfkit.errors import ConfigError
from perfkit.zoo import _graphs

INSTALL_HINT = "pip install 'perfkit[torch]'"
FC_MODEL_SEED = 20240611

# The seed's config.pbtxt, written as is.
FC_MODEL_PT_CONFIG = """\
name: "fc_model_pt"
platform: "pytorch_libtorch"
max_batch_size : 64
input [ { name: "input__0" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ -1, -1, 4 ] },
         { name: "output__1" data_type: TYPE_FP32 dims: [ -1, -1, 8 ] } ]
"""


def _nets(model: str) -> ModuleType:
    try:
        from perfkit.zoo import _torch_nets
    except ImportError as exc:
        raise ConfigError(
            f"zoo model {model!r} is a TorchScript model and needs torch ({exc}); install it with: "
            f"{INSTALL_HINT}"
        ) from None
    return _torch_nets


def resnet50_pt() -> bytes:
    """ResNet-50 v1.5 with the ONNX zoo resnet50's weights, scripted; ~100 MB."""
    from onnx import numpy_helper

    nets = _nets("resnet50_pt")
    graph = _graphs.resnet50()
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    del graph
    data: bytes = nets.torchscript(nets.resnet50(weights))
    return data


def fc_model_pt() -> bytes:
    """Embedding + two linear heads over INT64 tokens, seeded, scripted."""
    nets = _nets("fc_model_pt")
    data: bytes = nets.torchscript(nets.fc_model(FC_MODEL_SEED))
    return data
