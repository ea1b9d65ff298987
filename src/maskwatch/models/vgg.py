"""VGG-16 with torchvision's state-dict names (features.N, classifier.0/3/6)."""

from __future__ import annotations

import torch
from torch import nn

from maskwatch.models import TORCHVISION_URL, register_model
from maskwatch.models.layers import Classifiable

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(Classifiable):
    def __init__(self, cfg, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def head_module(self) -> nn.Module:
        return self.classifier[6]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@register_model(
    "vgg16", 224, weights_url=TORCHVISION_URL + "vgg16-397923af.pth",
    description="VGG-16 (torchvision layout), 138 M parameters; slow on a CPU",
)
def vgg16(num_classes: int = 1000, dropout: float = 0.5):
    return VGG(CFG_D, num_classes, dropout)
