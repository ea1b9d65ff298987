"""Resume state of a training run: model and optimiser tensors and RNG states in one
safetensors file, the rest of the loop's state in its JSON header (never pickled)."""

from __future__ import annotations

from pathlib import Path

import torch

from maskwatch.errors import ModelError
from maskwatch.models import checkpoint as ckpt


def save_training_state(path: Path, model, optimizer, state: dict) -> None:
    """Everything to resume: model, optimiser tensors, RNG states; the rest as JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict = {}
    for pid, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    header = dict(state)
    header["optimizer"] = {"param_groups": opt["param_groups"], "scalars": scalars}
    ckpt.save_state(path, tensors, header)


def load_training_state(path: Path, model, optimizer) -> dict:
    """Restore what :func:`save_training_state` wrote; returns the JSON state. A file that
    is not this run's state (a model checkpoint, another architecture) is one ModelError."""
    tensors, header = ckpt.read_state(path)
    try:
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(model_sd, strict=True)
        opt_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = value
        for pid, values in header["optimizer"]["scalars"].items():
            opt_state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict(
            {"state": opt_state, "param_groups": header["optimizer"]["param_groups"]}
        )
        int(header["epoch"]), list(header["history"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        detail = " ".join(line.strip() for line in lines[:2])[:200]
        raise ModelError(f"{path}: not the training state of this run ({detail})") from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    return header
