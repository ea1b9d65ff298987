"""A small, timm-like model registry.

``create_model(name, num_classes, pretrained=None)`` builds a plain-torch network; the
torchvision re-implementations keep torchvision's state-dict names so its published
ImageNet weights load. Every entry declares its default input size and normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from maskwatch.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URL = "https://download.pytorch.org/models/"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a model and what input it expects."""

    name: str
    builder: Callable
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_url: str | None = None
    description: str = ""
    min_size: int = 32


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    input_size: int,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    weights_url: str | None = None,
    description: str = "",
    min_size: int = 32,
):
    """Decorator that adds a builder ``fn(num_classes, **arch_args) -> nn.Module``."""

    def wrap(fn):
        _REGISTRY[name] = ModelSpec(
            name, fn, input_size, tuple(mean), tuple(std), weights_url, description, min_size
        )
        return fn

    return wrap


def _load_builtin() -> None:
    # Importing the modules fills the registry.
    from maskwatch.models import (  # noqa: F401
        efficientnet,
        inception,
        mobilenet,
        resnet,
        seed,
        vgg,
    )


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name`` (ModelError if unknown)."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, pretrained: str | None = None, **arch_args):
    """Build model ``name`` with a ``num_classes`` head.

    ``pretrained``: a local weights file, an http(s) URL, or ``"imagenet"`` (torchvision's
    published weights). Every tensor but the classifier head must match.
    ``arch_args``: builder options such as ``dropout`` or ``input_size`` (seed nets).
    """
    spec = model_spec(name)
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    try:
        model = spec.builder(num_classes=num_classes, **arch_args)
    except TypeError as exc:
        raise ModelError(f"{name}: bad architecture arguments {arch_args} ({exc})") from None
    model.maskwatch_arch = {"name": name, "num_classes": num_classes, "args": dict(arch_args)}
    if pretrained:
        from maskwatch.models.weights import load_pretrained

        load_pretrained(model, name, pretrained)
    return model


def freeze_backbone(model) -> list[str]:
    """Freeze every parameter outside the classifier head; returns the trainable names.

    Batch-norm layers of a frozen backbone should run in eval mode while training; see
    ``maskwatch.training.train.set_train_mode``.
    """
    head = model.head_module()
    head_ids = {id(p) for p in head.parameters()}
    trainable = []
    for pname, p in model.named_parameters():
        p.requires_grad_(id(p) in head_ids)
        if id(p) in head_ids:
            trainable.append(pname)
    return trainable


__all__ = [
    "ModelSpec",
    "create_model",
    "freeze_backbone",
    "list_models",
    "model_spec",
    "register_model",
]
