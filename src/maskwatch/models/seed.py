"""The two small CNNs of the original face-mask projects ("seed" models).

Both flatten their last feature map, so the input size is an architecture argument
(stored in checkpoints) rather than free at run time.
"""

from __future__ import annotations

import torch
from torch import nn

from maskwatch.errors import ModelError
from maskwatch.models import register_model
from maskwatch.models.layers import Classifiable, ConvBNAct, init_weights

SEED_MEAN = (0.5, 0.5, 0.5)
SEED_STD = (0.5, 0.5, 0.5)


class SeedCNN(Classifiable):
    """conv3x3+BN+ReLU+maxpool stages, then Flatten -> Linear -> ReLU -> Dropout -> Linear."""

    def __init__(
        self,
        widths: tuple[int, ...],
        hidden: int,
        num_classes: int,
        input_size: int,
        dropout: float = 0.5,
        extra_pool: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [ConvBNAct(cin, w, 3), nn.MaxPool2d(2)]
            cin = w
        if extra_pool:
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        down = 2 ** (len(widths) + int(extra_pool))
        if input_size % down or input_size < down:
            raise ModelError(f"input size {input_size} must be a multiple of {down}")
        side = input_size // down
        self.input_size = input_size
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(cin * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(
    "seed_cnn224", 224, SEED_MEAN, SEED_STD,
    description="3 conv layers (32/32/64) + 256-unit dense head, 224 px", min_size=8,
)
def seed_cnn224(num_classes: int = 2, input_size: int = 224, dropout: float = 0.5) -> SeedCNN:
    return SeedCNN((32, 32, 64), 256, num_classes, input_size, dropout)


@register_model(
    "seed_cnn128", 128, SEED_MEAN, SEED_STD,
    description="2 conv layers (32/64) + 128-unit dense head, 128 px", min_size=8,
)
def seed_cnn128(num_classes: int = 2, input_size: int = 128, dropout: float = 0.5) -> SeedCNN:
    return SeedCNN((32, 64), 128, num_classes, input_size, dropout, extra_pool=True)
