"""Building blocks shared by the model definitions (plain torch, ONNX-friendly)."""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm + optional activation; names 0, 1, 2 like torchvision."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class Classifiable(nn.Module):
    """Mixin: ``head_module()`` is the trainable head, ``get_classifier()`` its last Linear."""

    head_name = "classifier"

    def head_module(self) -> nn.Module:
        return self.get_submodule(self.head_name)

    def get_classifier(self) -> nn.Linear:
        linears = [m for m in self.head_module().modules() if isinstance(m, nn.Linear)]
        return linears[-1]

    def classifier_prefix(self) -> str:
        """State-dict prefix of the last Linear, e.g. ``classifier.1.``."""
        target = self.get_classifier()
        for name, module in self.named_modules():
            if module is target:
                return name + "."
        raise RuntimeError("classifier not found")


def init_weights(model: nn.Module, linear_std: float = 0.01) -> None:
    """torchvision-style initialisation: Kaiming convs, unit BN, small normal Linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
