"""The face classifier used by classify, detect and serve.

ONNX models run on onnxruntime (no torch needed); ``.safetensors`` checkpoints from
``maskwatch train`` run on torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from maskwatch.errors import MaskwatchError, ModelError, first_line
from maskwatch.inference.modelfile import ModelInfo
from maskwatch.inference.preprocess import decide, prepare, probabilities

BUNDLED_MODEL_NAME = "mask_classifier.onnx"


def bundled_model_path() -> Path:
    """Path of the ONNX model shipped inside the package."""
    return Path(str(resources.files("maskwatch") / "assets" / BUNDLED_MODEL_NAME))


def peek_model_info(model: str | Path | None) -> ModelInfo | None:
    """An ONNX model's metadata (input size, normalisation...) read from its ``.json``
    without loading the model; None when it cannot be had so cheaply (a checkpoint, a
    missing or bad file: loading the model reports those)."""
    path = Path(model) if model else bundled_model_path()
    if path.suffix.lower() != ".onnx":
        return None
    try:
        return ModelInfo.load_json(path.with_suffix(".json"))
    except (ModelError, OSError, ValueError):
        return None


@dataclass
class Prediction:
    label: str
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "scores": self.scores}


def onnx_session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session with ``threads`` intra-op threads (0: all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    # Spinning threads burn the CPU that video decoding and face detection need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"{path}: not a valid ONNX model ({first_line(exc)})") from None


def check_classifier_graph(session, info: ModelInfo, path: str | Path) -> None:
    """One ModelError when an ONNX graph cannot be the classifier its metadata describes
    (e.g. a face detector): one N x 3 x S x S input, an N x C (or N x 1) first output.
    Symbolic dimensions pass."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    size = info.input_size
    want_in = [None, 3, size, size]
    out_shape = list(outputs[0].shape) if outputs else []
    fits = (len(shape) == 4 and all(not isinstance(d, int) or w is None or d == w
                                    for d, w in zip(shape, want_in))
            and len(out_shape) == 2
            and (not isinstance(out_shape[1], int) or out_shape[1] in (len(info.classes), 1)))
    if not fits:
        got = ", ".join(str(i.shape) for i in inputs)
        raise ModelError(
            f"{path}: not a face classifier for its metadata ({len(info.classes)} classes, "
            f"{size}x{size} input): the graph takes {got} and gives "
            f"{', '.join(str(o.shape) for o in outputs)}")


class _OnnxBackend:
    def __init__(self, path: Path, threads: int):
        meta = path.with_suffix(".json")
        self.info = ModelInfo.load_json(meta)
        self.session = onnx_session(path, threads)
        check_classifier_graph(self.session, self.info, path)
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def logits(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run(None, {self.input_name: x})[0]
        except Exception as exc:  # onnxruntime's own types: a graph that cannot take faces
            raise ModelError(f"{self.path}: the model cannot score faces "
                             f"({first_line(exc)})") from None


class _TorchBackend:
    def __init__(self, path: Path, threads: int):
        try:
            import torch
        except ImportError:
            raise ModelError(
                f"{path}: a .safetensors checkpoint needs torch: pip install 'maskwatch[train]'"
            ) from None
        from maskwatch.models.checkpoint import load_checkpoint

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model, self.info = load_checkpoint(path, device="cpu")

    def logits(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).numpy()


class Classifier:
    """Scores face crops: ``predict_proba`` gives probabilities, ``classify`` labels."""

    def __init__(self, model: str | Path | None = None, threads: int = 0, batch_size: int = 32,
                 threshold: float | None = None):
        """``threshold`` overrides the model's without_mask decision threshold."""
        path = Path(model) if model else bundled_model_path()
        if not path.is_file():
            if model is None:
                raise ModelError(
                    f"the bundled model is missing ({path}); reinstall maskwatch or pass --model"
                )
            raise ModelError(f"{path}: is a folder; give a model file (.onnx with its .json, "
                             "or .safetensors)" if path.is_dir() else
                             f"{path}: model file not found")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            self._backend = _OnnxBackend(path, threads)
        elif suffix == ".safetensors":
            self._backend = _TorchBackend(path, threads)
        else:
            raise ModelError(f"{path}: unknown model format (expected .onnx or .safetensors)")
        self.path = path
        self.info: ModelInfo = self._backend.info
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ModelError(f"threshold must be in [0, 1], got {threshold}")
            self.info = replace(self.info, threshold=float(threshold))
        self.classes: list[str] = list(self.info.classes)
        if int(batch_size) < 1:
            raise MaskwatchError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)

    @property
    def threshold(self) -> float:
        return float(self.info.threshold)

    def predict_proba(self, faces) -> np.ndarray:
        """Face crops (RGB uint8 arrays, any size) -> N x C probabilities."""
        faces = list(faces)
        out = np.zeros((len(faces), len(self.classes)), dtype=np.float64)
        info = self.info
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start : start + self.batch_size]
            out[start : start + len(chunk)] = self.batch_proba(
                prepare(chunk, info.input_size, info.mean, info.std))
        return out

    def batch_proba(self, x: np.ndarray) -> np.ndarray:
        """N x C probabilities of a batch that :func:`prepare` made with this model's
        input size and normalisation (run ``batch_size`` faces at a time)."""
        out = np.zeros((len(x), len(self.classes)), dtype=np.float64)
        for start in range(0, len(x), self.batch_size):
            part = x[start : start + self.batch_size]
            out[start : start + len(part)] = probabilities(self._backend.logits(part),
                                                           self.info.head)
        if not np.isfinite(out).all():  # a diverged model would call every face with_mask
            raise ModelError(f"{self.path}: the model gives non-finite probabilities (NaN or "
                             "infinity): its weights are broken (a training run that diverged?)")
        return out

    def predictions(self, probs: np.ndarray) -> list[Prediction]:
        """Apply the decision rule to probabilities from ``predict_proba``."""
        idx = decide(probs, self.classes, self.threshold)
        return [
            Prediction(
                label=self.classes[i],
                score=round(float(p[i]), 4),
                scores={c: round(float(v), 4) for c, v in zip(self.classes, p)},
            )
            for i, p in zip(idx, probs)
        ]

    def classify(self, faces) -> list[Prediction]:
        """Face crops -> a Prediction (label, score, per-class scores) each."""
        return self.predictions(self.predict_proba(faces))
