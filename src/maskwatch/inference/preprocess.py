"""Preprocessing and decision rule shared by training, evaluation and inference."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from maskwatch.labels import WITHOUT_MASK

#: Crops shrunk by this factor or more are averaged (INTER_AREA); milder shrinking and
#: enlarging interpolate (INTER_LINEAR), which at under 1.5x loses no input pixel and runs
#: about 5x faster than OpenCV's area average at a fractional factor (112 -> 96 px).
AREA_FROM = 1.5


def resize_face(rgb: np.ndarray, size: int) -> np.ndarray:
    """Squash-resize a face crop to ``size`` x ``size`` (see :data:`AREA_FROM`)."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(rgb)
    shrink = max(h, w) / size
    interp = cv2.INTER_AREA if shrink >= AREA_FROM else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def to_input(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NxSxSx3 RGB -> normalised float32 Nx3xSxS.

    The bytes are moved to channel-first order before the float conversion, and the
    scaling is one multiply and one subtract in place: about 10x faster than normalising
    first and transposing the floats."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32)
    x *= 1.0 / (255.0 * std)
    x -= mean / std
    return x


def prepare(faces: Sequence[np.ndarray], size: int, mean, std) -> np.ndarray:
    """Face crops of any size -> one normalised float32 batch."""
    if not len(faces):
        return np.zeros((0, 3, size, size), np.float32)
    batch = np.stack([resize_face(f, size) for f in faces])
    return to_input(batch, mean, std)


def probabilities(logits: np.ndarray, head: str = "softmax") -> np.ndarray:
    """Model outputs -> NxC class probabilities (a sigmoid head gives [1-p, p])."""
    logits = np.asarray(logits, dtype=np.float64)
    if head == "sigmoid":
        p = 1.0 / (1.0 + np.exp(-logits.reshape(-1)))
        return np.stack([1.0 - p, p], axis=1)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decide(probs: np.ndarray, classes: Sequence[str], threshold: float = 0.5) -> np.ndarray:
    """Class index per row: without_mask when its probability reaches ``threshold``,
    else the most likely of the other classes."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"expected N x {len(classes)} probabilities, got {probs.shape}")
    if WITHOUT_MASK not in classes:
        return probs.argmax(axis=1)
    pos = list(classes).index(WITHOUT_MASK)
    others = probs.copy()
    others[:, pos] = -1.0
    choice = others.argmax(axis=1)
    choice[probs[:, pos] >= threshold] = pos
    return choice
