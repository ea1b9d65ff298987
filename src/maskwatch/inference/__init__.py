"""Inference without torch: model metadata, preprocessing and the ONNX classifier."""

from maskwatch.inference.modelfile import ModelInfo

__all__ = ["ModelInfo"]
