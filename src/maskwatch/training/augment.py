"""Batch-vectorised augmentation of uint8 face batches in plain torch.

One affine warp per sample does the random resized crop, small rotation and horizontal
flip; brightness, contrast, saturation, per-channel colour gains and a light blur
follow. All randomness comes from the ``torch.Generator`` passed in (drawn on the CPU,
so results are identical on CPU and CUDA for a given seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5  # probability of a horizontal flip
    rotate: float = 10.0  # max rotation, degrees
    scale: tuple[float, float] = (0.75, 1.0)  # area fraction kept by the random crop
    ratio: tuple[float, float] = (0.85, 1.18)  # aspect ratio range of the crop
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    colour: float = 0.05  # per-channel gain jitter
    blur: float = 0.2  # probability of a 3x3 Gaussian blur
    lowres: float = 0.0  # probability of a down-and-up resize (faces far from the camera)
    lowres_size: tuple[int, int] = (12, 40)  # side, in pixels, the face is shrunk to

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "none": None,
    "light": AugmentConfig(rotate=5.0, scale=(0.9, 1.0), brightness=0.15, contrast=0.15,
                           saturation=0.1, colour=0.02, blur=0.1),
    "standard": AugmentConfig(),
    "strong": AugmentConfig(rotate=15.0, scale=(0.6, 1.0), ratio=(0.75, 1.33), brightness=0.4,
                            contrast=0.4, saturation=0.4, colour=0.1, blur=0.3),
    # strong + low resolution: for faces cropped from scene photos and video
    "scene": AugmentConfig(rotate=15.0, scale=(0.6, 1.0), ratio=(0.75, 1.33), brightness=0.4,
                           contrast=0.4, saturation=0.4, colour=0.1, blur=0.2, lowres=0.5),
}


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NxHxWx3 -> float NCHW in 0..1."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, as ``maskwatch.inference.preprocess.to_input`` does."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def geometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Random resized crop + rotation + horizontal flip as one bilinear warp."""
    n = x.shape[0]
    area = _uniform(n, cfg.scale[0], cfg.scale[1], g)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), g)
    r = torch.exp(log_r)
    sx = torch.sqrt(area * r).clamp(max=1.0)
    sy = torch.sqrt(area / r).clamp(max=1.0)
    tx = (2 * torch.rand(n, generator=g) - 1) * (1 - sx)
    ty = (2 * torch.rand(n, generator=g) - 1) * (1 - sy)
    ang = _uniform(n, -cfg.rotate, cfg.rotate, g) * (math.pi / 180.0)
    flip = torch.where(torch.rand(n, generator=g) < cfg.flip, -1.0, 1.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [
            torch.stack([sx * cos * flip, -sy * sin, tx], 1),
            torch.stack([sx * sin * flip, sy * cos, ty], 1),
        ],
        1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def photometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and per-channel colour gains, per sample."""
    n, dev = x.shape[0], x.device

    def factor(amount: float, shape=(n, 1, 1, 1)) -> torch.Tensor:
        return _uniform(math.prod(shape), 1 - amount, 1 + amount, g).view(shape).to(dev)

    weights = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
    x = x * factor(cfg.brightness)
    gray_mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - gray_mean) * factor(cfg.contrast) + gray_mean
    gray = (x * weights).sum(1, keepdim=True)
    x = (x - gray) * factor(cfg.saturation) + gray
    x = x * factor(cfg.colour, (n, 3, 1, 1))
    return x.clamp_(0.0, 1.0)


def blur(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Replace a random fraction ``p`` of the batch by a 3x3 Gaussian-blurred copy."""
    pick = (torch.rand(x.shape[0], generator=g) < p).to(x.device).view(-1, 1, 1, 1)
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :]).expand(3, 1, 3, 3).contiguous()
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    return torch.where(pick, blurred, x)


def low_resolution(x: torch.Tensor, p: float, sizes: tuple[int, int],
                   g: torch.Generator) -> torch.Tensor:
    """Shrink a random fraction ``p`` of the batch to a random side in ``sizes`` and
    enlarge it back, as a small, distant face looks once resized to the model's input."""
    n, _, h, w = x.shape
    pick = torch.rand(n, generator=g) < p
    side = torch.randint(sizes[0], sizes[1] + 1, (n,), generator=g)
    out = x.clone()
    for s in side[pick].unique().tolist():
        idx = torch.nonzero(pick & (side == s)).flatten().to(x.device)
        small = F.interpolate(x[idx], size=(min(s, h), min(s, w)), mode="area")
        out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def augment_batch(
    batch: torch.Tensor, cfg: AugmentConfig | None, g: torch.Generator
) -> torch.Tensor:
    """uint8 NxHxWx3 -> augmented float NCHW in 0..1 (no augmentation if cfg is None)."""
    x = to_float(batch)
    if cfg is None or x.shape[0] == 0:
        return x
    x = geometric(x, cfg, g)
    x = photometric(x, cfg, g)
    if cfg.blur > 0:
        x = blur(x, cfg.blur, g)
    if cfg.lowres > 0:
        x = low_resolution(x, cfg.lowres, cfg.lowres_size, g)
    return x.clamp_(0.0, 1.0)
