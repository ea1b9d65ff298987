"""A tiny ONNX classifier for tests: logits are the mean of each input channel times W
(plus an optional bias)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskwatch.inference.modelfile import IMAGENET_MEAN, IMAGENET_STD, ModelInfo


def write_tiny_onnx(path: Path, weights, size: int = 16, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, classes=("with_mask", "without_mask"), bias=None,
                    threshold: float = 0.5) -> Path:
    """Write ``path`` (ONNX) and its ``.json`` for ``classes`` (default with_mask,
    without_mask).

    ``weights`` is 3 x C: row c says how channel c's mean (after normalisation) feeds each
    class's logit; ``bias`` (C values) is added to the logits.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.asarray(weights, np.float32)
    if weights.shape != (3, len(classes)):
        raise ValueError(f"weights must be 3 x {len(classes)}, got {weights.shape}")
    inits = [numpy_helper.from_array(weights, "W")]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["scores" if bias is not None else "logits"]),
    ]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias, np.float32).reshape(-1), "B"))
        nodes.append(helper.make_node("Add", ["scores", "B"], ["logits"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(classes)])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    ModelInfo("tiny", list(classes), size, mean=list(mean), std=list(std),
              threshold=threshold).save_json(Path(path).with_suffix(".json"))
    return Path(path)
