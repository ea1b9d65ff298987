"""A tiny ONNX classifier for tests: logits are the mean of each input channel times W."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskwatch.inference.modelfile import IMAGENET_MEAN, IMAGENET_STD, ModelInfo


def write_tiny_onnx(path: Path, weights, size: int = 16, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> Path:
    """Write ``path`` (ONNX) and its ``.json``: classes with_mask, without_mask.

    ``weights`` is 3 x 2: row c says how channel c's mean (after normalisation) feeds the
    with_mask and without_mask logits.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.asarray(weights, np.float32), "W")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    ModelInfo("tiny", ["with_mask", "without_mask"], size, mean=list(mean),
              std=list(std)).save_json(Path(path).with_suffix(".json"))
    return Path(path)
