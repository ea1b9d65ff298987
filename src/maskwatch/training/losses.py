"""The training loss (softmax or sigmoid head, class-weighted) and its predictions."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Criterion(nn.Module):
    """Cross-entropy (softmax head) or BCE on one logit (sigmoid head), class-weighted."""

    def __init__(self, head: str, class_weights: torch.Tensor | None, smoothing: float = 0.0):
        super().__init__()
        self.head = head
        if head == "sigmoid":
            pos = None
            if class_weights is not None:
                pos = (class_weights[1] / class_weights[0]).reshape(1)
            self.loss = nn.BCEWithLogitsLoss(pos_weight=pos)
        else:
            self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.head == "sigmoid":
            return self.loss(logits.reshape(-1), target.float())
        return self.loss(logits, target)


def create_criterion(args, train_labels: np.ndarray, num_classes: int, device) -> Criterion:
    weights = None
    if args.balance == "weights":
        counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
        w = len(train_labels) / (num_classes * np.maximum(counts, 1))
        weights = torch.tensor(w, dtype=torch.float32, device=device)
    return Criterion(args.loss, weights, args.label_smoothing).to(device)


def predicted(logits: torch.Tensor, head: str) -> torch.Tensor:
    if head == "sigmoid":
        return (logits.reshape(-1) > 0).long()
    return logits.argmax(1)
