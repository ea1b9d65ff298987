"""MobileNetV2 and MobileNetV3 with torchvision's module layout and state-dict names."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from maskwatch.models import TORCHVISION_URL, register_model
from maskwatch.models.layers import Classifiable, ConvBNAct, init_weights, make_divisible

# --- MobileNetV2 -------------------------------------------------------------------------


class InvertedResidualV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = round(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


V2_SETTING = [  # expand t, channels c, repeats n, stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(Classifiable):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNAct(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in V2_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNAct(cin, self.last_channel, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


@register_model(
    "mobilenet_v2", 224, weights_url=TORCHVISION_URL + "mobilenet_v2-b0353104.pth",
    description="MobileNetV2 (torchvision layout), 3.5 M parameters",
)
def mobilenet_v2(num_classes: int = 1000, dropout: float = 0.2, width_mult: float = 1.0):
    return MobileNetV2(num_classes, width_mult, dropout)


# --- MobileNetV3 -------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


_BN3 = {"bn_eps": 0.001, "bn_momentum": 0.01}


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, kernel: int, exp: int, cout: int, se: bool, act: str, stride: int):
        super().__init__()
        act_layer = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvBNAct(cin, exp, 1, act=act_layer, **_BN3))
        layers.append(ConvBNAct(exp, exp, kernel, stride, groups=exp, act=act_layer, **_BN3))
        if se:
            layers.append(SqueezeExcitation(exp, make_divisible(exp // 4, 8)))
        layers.append(ConvBNAct(exp, cout, 1, act=None, **_BN3))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


V3_SMALL = [  # in, kernel, expanded, out, SE, activation, stride
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]
V3_LARGE = [
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]


class MobileNetV3(Classifiable):
    def __init__(self, setting, last_channel: int, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [ConvBNAct(3, setting[0][0], 3, 2, act=nn.Hardswish, **_BN3)]
        for cfg in setting:
            features.append(InvertedResidualV3(*cfg))
        last_in = setting[-1][3]
        features.append(ConvBNAct(last_in, 6 * last_in, 1, act=nn.Hardswish, **_BN3))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self)

    def head_module(self) -> nn.Module:
        # Only the final Linear is task-specific; the 1024/1280 layer is pre-trained.
        return self.classifier[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model(
    "mobilenet_v3_small", 224, weights_url=TORCHVISION_URL + "mobilenet_v3_small-047dcff4.pth",
    description="MobileNetV3-Small (torchvision layout), 2.5 M parameters",
)
def mobilenet_v3_small(num_classes: int = 1000, dropout: float = 0.2):
    return MobileNetV3(V3_SMALL, 1024, num_classes, dropout)


@register_model(
    "mobilenet_v3_large", 224, weights_url=TORCHVISION_URL + "mobilenet_v3_large-8738ca79.pth",
    description="MobileNetV3-Large (torchvision layout), 5.5 M parameters",
)
def mobilenet_v3_large(num_classes: int = 1000, dropout: float = 0.2):
    return MobileNetV3(V3_LARGE, 1280, num_classes, dropout)
