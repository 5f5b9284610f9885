"""The zoo's TorchScript networks (imports torch: only `perfkit.zoo._torch` imports this, when a
TorchScript model is built).

- `ResNet50`: ResNet-50 v1.5 in the layout of the ONNX zoo `resnet50` (torchvision's, BatchNorm
  folded into each conv's weight and bias), loaded with that graph's own seeded weights, so both
  compute the same logits.
- `FcModel`: INT64 tokens [batch, seq] -> an embedding -> two linear heads, [batch, seq, 4] and
  [batch, seq, 8] (the seed's `fc_model_pt`).

No `from __future__ import annotations` here: TorchScript reads these annotations as types.
"""

import io

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

# ResNet-50 v1.5 stages: (bottleneck width, block count, stride of the first block).
_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
_EXPANSION = 4


class Bottleneck(nn.Module):
    """v1.5 bottleneck: the stride sits on the 3x3 conv; each conv has a bias (BN folded)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * _EXPANSION
        self.conv1 = nn.Conv2d(cin, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1)
        self.conv3 = nn.Conv2d(width, cout, 1)
        self.downsample: nn.Module = (
            nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        y = self.conv3(y)
        return torch.relu(y + self.downsample(x))


class ResNet50(nn.Module):
    """FP32 NCHW [batch, 3, 224, 224] -> [batch, num_classes] logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin = 64
        stages: list[nn.Sequential] = []
        for width, blocks, stride in _STAGES:
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(cin, width, stride if block == 0 else 1))
                cin = width * _EXPANSION
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(torch.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(torch.mean(x, dim=(2, 3)), 1)
        logits: Tensor = self.fc(x)
        return logits


class FcModel(nn.Module):
    """Tokens (any INT64, taken modulo the vocabulary) -> ReLU(embedding) -> heads of 4 and 8."""

    def __init__(self, vocab: int = 1024, dim: int = 32) -> None:
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(vocab, dim)
        self.head4 = nn.Linear(dim, 4)
        self.head8 = nn.Linear(dim, 8)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.embedding(torch.remainder(tokens, self.vocab)))
        return self.head4(h), self.head8(h)


def resnet50(weights: dict[str, npt.NDArray[np.float32]]) -> ResNet50:
    """A ResNet50 holding the ONNX zoo graph's weights (name -> array; Gemm's fc.weight is
    [in, out], a Linear's [out, in])."""
    model = ResNet50()
    state = {name: torch.from_numpy(np.array(array)) for name, array in weights.items()}
    state["fc.weight"] = state["fc.weight"].t().contiguous()
    model.load_state_dict(state, strict=True)
    return model.eval()


def fc_model(seed: int) -> FcModel:
    """An FcModel with torch's default initialization under a fixed seed (the global RNG is kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FcModel().eval()


def torchscript(model: nn.Module) -> bytes:
    """The scripted module as torch.jit.save writes it (the same module gives the same bytes)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()
