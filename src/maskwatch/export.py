"""Export a trained checkpoint to ONNX, check it against torch, optionally quantise to int8."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import replace
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
        try:
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
        except (RuntimeError, ValueError) as exc:  # e.g. an opset torch cannot write
            out.unlink(missing_ok=True)
            raise MaskwatchError(f"cannot export to ONNX opset {opset}: "
                                 f"{' '.join(str(exc).split())}") from None
    info.save_json(out.with_suffix(".json"))
    return out


def torch_probabilities(model, info: ModelInfo, faces: list[np.ndarray]) -> np.ndarray:
    """Class probabilities from the torch model, with the same preprocessing as inference."""
    import torch

    x = prepare(faces, info.input_size, info.mean, info.std)
    with torch.inference_mode():
        return probabilities(model(torch.from_numpy(x)).numpy(), info.head)


class _Feed:
    """Feeds input batches to onnxruntime's static quantiser (its calibration reader)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name = input_name
        self.batches = batches
        self._it = iter(self.batches)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def _quantise_static(fp32: Path, out: Path, feed: _Feed, keep_float) -> None:
    """Static int8 of ``fp32`` into ``out`` (QDQ, per-channel int8 weights, uint8
    activations with MinMax ranges from ``feed``); the nodes named by ``keep_float(graph)``
    (the pre-processed graph) stay float."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the original instead
            shutil.copyfile(fp32, pre)
        quantize_static(str(pre), str(out), feed, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=keep_float(onnx.load(str(pre)).graph))


#: Convolutions at the network's input kept in float by :func:`quantise_int8`, with every
#: fully connected layer: on the bundled model, quantising them too moved enough
#: probabilities across its low without_mask threshold to lose 1 point of accuracy on
#: held-out scene faces (0.983 -> 0.973); kept in float, int8 scored as fp32 (0.982) at
#: the same speed.
FLOAT_STEM_CONVS = 2


def float_nodes(graph, stem_convs: int = FLOAT_STEM_CONVS) -> list[str]:
    """Names of the nodes :func:`quantise_int8` leaves in float: the first ``stem_convs``
    convolutions and the fully connected layers (Gemm, MatMul)."""
    convs = [n.name for n in graph.node if n.op_type == "Conv"][:stem_convs]
    return convs + [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]


def quantise_int8(fp32: Path, out: Path, info: ModelInfo, calibration: list[np.ndarray],
                  batch: int = 16) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on face crops; the
    stem and the head stay float (see :data:`FLOAT_STEM_CONVS`)."""
    if not calibration:
        raise MaskwatchError("int8 quantisation needs calibration images (--check-data)")
    batches = [prepare(calibration[i:i + batch], info.input_size, info.mean, info.std)
               for i in range(0, len(calibration), batch)]
    _quantise_static(fp32, out, _Feed("input", batches), float_nodes)
    precision = info.extra.get("precision") or ("int8 (static QDQ, per-channel weights; "
                                                 "stem and head in float)")
    replace(info, extra={**info.extra, "precision": precision}).save_json(
        out.with_suffix(".json"))
    return out


def accuracy(probs: np.ndarray, labels: list[str], info: ModelInfo) -> float:
    from maskwatch.inference.preprocess import decide

    if not labels:
        return float("nan")
    idx = decide(probs, info.classes, info.threshold)
    return float(np.mean([info.classes[i] == y for i, y in zip(idx, labels)]))


def quantise_centerface(out: Path, photos: list[np.ndarray], source: Path | None = None,
                        stem_convs: int = FLOAT_STEM_CONVS, float_heads: bool = True) -> Path:
    """Static int8 CenterFace (QDQ, per-channel weights, opset 13) calibrated on the inputs
    the detector itself feeds to the network for ``photos`` (RGB): both passes, at the
    default sizes. The first ``stem_convs`` convolutions and, with ``float_heads``, the
    output convolutions (heat map, scales, offsets, landmarks) stay float. Writes a graph
    that already takes any input size."""
    import onnx
    from onnx import version_converter

    from maskwatch.detection.faces import (
        CenterFaceDetector,
        centerface_path,
        load_dynamic_centerface,
    )

    if not photos:
        raise MaskwatchError("int8 CenterFace needs calibration photos")
    source = Path(source) if source else centerface_path("fp32")
    detector = CenterFaceDetector(model_path=source, threads=1)
    blobs: list[np.ndarray] = []
    run = detector.session.run

    def record(names, feed):
        blobs.append(next(iter(feed.values())).copy())
        return run(names, feed)

    detector.session.run = record
    for rgb in photos:
        detector.detect(rgb)

    def keep_float(graph) -> list[str]:  # the stem as for classifiers, and the heads
        keep = float_nodes(graph, stem_convs)
        if float_heads:
            outputs = {o.name for o in graph.output}
            feeds = {i for n in graph.node if set(n.output) & outputs for i in n.input}
            keep += [n.name for n in graph.node if n.op_type == "Conv"
                     and set(n.output) & (outputs | feeds)]
        return keep

    # per-channel DequantizeLinear needs opset 13 (the published graph is opset 9)
    model = onnx.load_from_string(load_dynamic_centerface(source))
    model = version_converter.convert_version(model, 13)
    for i, node in enumerate(model.graph.node):  # the published nodes have no names
        node.name = node.name or f"{node.op_type.lower()}_{i}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(fp32))
        _quantise_static(fp32, out, _Feed(detector.input_name, blobs), keep_float)
    return out
