"""Export a trained checkpoint to ONNX, check it against torch, optionally quantise to int8."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from maskwatch.errors import MaskwatchError
from maskwatch.inference.modelfile import ModelInfo
from maskwatch.inference.preprocess import prepare, probabilities


def export_onnx(model, info: ModelInfo, out: Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX (dynamic batch) and its metadata as ``out.with_suffix('.json')``."""
    import torch

    model = model.eval().cpu()
    dummy = torch.zeros(1, 3, info.input_size, info.input_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    info.save_json(out.with_suffix(".json"))
    return out


def torch_probabilities(model, info: ModelInfo, faces: list[np.ndarray]) -> np.ndarray:
    """Class probabilities from the torch model, with the same preprocessing as inference."""
    import torch

    x = prepare(faces, info.input_size, info.mean, info.std)
    with torch.inference_mode():
        return probabilities(model(torch.from_numpy(x)).numpy(), info.head)


class _Calibration:
    """Feeds preprocessed face batches to onnxruntime's static quantiser."""

    def __init__(self, info: ModelInfo, faces: list[np.ndarray], input_name: str, batch: int = 16):
        self.batches = [
            prepare(faces[i : i + batch], info.input_size, info.mean, info.std)
            for i in range(0, len(faces), batch)
        ]
        self.input_name = input_name
        self._it = iter(self.batches)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantise_int8(fp32: Path, out: Path, info: ModelInfo, calibration: list[np.ndarray]) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on face crops."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise MaskwatchError("int8 quantisation needs calibration images (--calibration-data)")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the original instead
            shutil.copyfile(fp32, pre)
        reader = _Calibration(info, calibration, "input")
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    info.save_json(out.with_suffix(".json"))
    return out


def accuracy(probs: np.ndarray, labels: list[str], info: ModelInfo) -> float:
    from maskwatch.inference.preprocess import decide

    if not labels:
        return float("nan")
    idx = decide(probs, info.classes, info.threshold)
    return float(np.mean([info.classes[i] == y for i, y in zip(idx, labels)]))
