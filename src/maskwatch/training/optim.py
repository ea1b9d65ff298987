"""Optimiser and learning-rate schedule: Adam/AdamW without weight decay on biases and
norms, linear warm-up then cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def create_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=args.lr)


@dataclass
class Schedule:
    """Steps per epoch, total and warm-up steps, and the peak learning rate."""

    steps_per_epoch: int
    total: int
    warmup: int
    base_lr: float


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` then cosine decay to 1% of it."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
