"""Model checkpoints as safetensors with a JSON header; loaded without unpickling.

The safetensors metadata key ``maskwatch`` holds ``ModelInfo.to_dict()`` plus
``arch`` (registry name), ``num_outputs`` and ``arch_args`` (builder options).
"""

from __future__ import annotations

import json
from pathlib import Path

from maskwatch.errors import ModelError, first_line
from maskwatch.files import write_atomic
from maskwatch.inference.modelfile import ModelInfo, check_arch

FORMAT_VERSION = 1
HEADER_KEY = "maskwatch"


def model_arch(model) -> dict:
    """The registry name, output count and builder options recorded by ``create_model``."""
    arch = getattr(model, "maskwatch_arch", None)
    if not arch:
        raise ModelError("model was not built by maskwatch.models.create_model")
    return arch


def save_state(path: str | Path, tensors: dict, header: dict) -> None:
    """Write tensors + a JSON header to a safetensors file atomically (tmp + rename)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {HEADER_KEY: json.dumps(header)}
    write_atomic(path, lambda tmp: save_file(clean, str(tmp), metadata=meta), "checkpoint",
                 ModelError)


def save_checkpoint(path: str | Path, model, info: ModelInfo) -> None:
    """Save ``model``'s weights and ``info`` (plus its architecture) to ``path``."""
    arch = model_arch(model)
    header = dict(info.to_dict())
    header.update(
        format=FORMAT_VERSION,
        arch=arch["name"],
        num_outputs=arch["num_classes"],
        arch_args=arch.get("args", {}),
    )
    save_state(path, model.state_dict(), header)


def _read(path: str | Path, with_tensors: bool) -> tuple[dict, dict]:
    """(tensors or {}, header) of a checkpoint; every problem is one ModelError line."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    tensors: dict = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if with_tensors:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError, OSError, ...
        raise ModelError(f"{path}: not a readable safetensors file ({first_line(exc, 160)})"
                         ) from None
    if HEADER_KEY not in meta:
        raise ModelError(f"{path}: not a maskwatch checkpoint (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError:
        raise ModelError(f"{path}: checkpoint header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: checkpoint header is not a JSON object")
    return tensors, header


def read_state(path: str | Path) -> tuple[dict, dict]:
    """Read (tensors, header) from a safetensors file written by ``save_state``."""
    return _read(path, with_tensors=True)


def read_header(path: str | Path) -> dict:
    """Only the JSON header of a checkpoint (no tensors are read)."""
    return _read(path, with_tensors=False)[1]


def build_from_header(header: dict, source: str = "checkpoint"):
    """An untrained model with the architecture a checkpoint header describes."""
    from maskwatch.models import create_model

    name, outputs, args = check_arch(header, source)  # before anything is allocated
    return create_model(name, outputs, **args)


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Load a checkpoint -> (model in eval mode on ``device``, ModelInfo)."""
    header = read_header(path)  # checked before the tensors are read
    if "optimizer" in header and "arch" not in header:  # last_state.safetensors
        raise ModelError(f"{path}: is the resume state of a training run, not a model; "
                         "give best.safetensors or last.safetensors from its folder")
    try:
        info = ModelInfo.from_dict(header)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    model = build_from_header(header, str(path))
    tensors, _ = read_state(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise ModelError(f"{path}: weights do not match {header['arch']} ({detail})") from None
    return model.to(device).eval(), info


def rewrite_info(src: str | Path, dst: str | Path, info: ModelInfo, force: bool = False) -> None:
    """Copy checkpoint ``src`` to ``dst`` with new metadata ``info`` (weights unchanged).

    Refuses to overwrite an existing ``dst`` unless ``force``.
    """
    dst = Path(dst)
    if dst.exists() and not force:
        raise ModelError(f"{dst}: exists; pass --overwrite to replace it")
    tensors, header = read_state(src)
    header.update(info.to_dict())
    save_state(dst, tensors, header)
