"""How close to FP32 *any* INT8 build of EfficientNet-Lite0 can get on bench/build_models.py's crops: the FP32
model with only its weights rounded to 8 bits (per output channel, symmetric, round to nearest: what every INT8
build does to them), activations left in float, so no calibration range, kernel or activation scheme is
involved. Group by group (stem, depthwise, pointwise 1x1, classifier), then all; and FP16 weights for scale.
Top-1 agreement with the unrounded model on the same 512 validation crops as build_models.py, split by FP32's
confidence. An INT8 artifact rounds its weights too, so its agreement is at most about what the rounding alone
gives (in practice lower: its activations add noise of their own).

Usage: .venv/bin/python bench/int8_bound.py          # ~1 min
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from build_models import CAL_SAMPLES, VAL_SAMPLES, efficientnet
from kiln.builder.optimize import OptimizationLevel, optimize
from kiln.builder.report import StageRecord

Rounding = Callable[[np.ndarray], np.ndarray]


def int8_weights(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=tuple(range(1, w.ndim)), keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return (np.round(w / scale) * scale).astype(np.float32)


def fp16_weights(w: np.ndarray) -> np.ndarray:
    return w.astype(np.float16).astype(np.float32)


def group_of(node: onnx.NodeProto, first_conv: str) -> str:
    if node.op_type == "Gemm":
        return "classifier (Gemm)"
    if node.name == first_conv:
        return "stem conv"
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    return "depthwise convs" if groups > 1 else "pointwise 1x1 convs"


def rounded(model: onnx.ModelProto, groups: set[str], rounding: Rounding) -> bytes:
    """``model`` with the weights of the layers in ``groups`` rounded by ``rounding``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {i.name: i for i in out.graph.initializer}
    layers = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in weights]
    first = layers[0].name
    for node in layers:
        if group_of(node, first) in groups:
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(rounding(w), node.input[1]))
    return out.SerializeToString()


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kiln-int8-bound-") as tmp:
        path, _, val, _ = efficientnet(Path(tmp))
        # the graph the INT8 build quantises: kiln build's own optimisation stage at the basic level
        # (onnxscript, then ONNX Runtime's basic fusions: BatchNorm folded into the convolutions)
        model = optimize(onnx.load(path), OptimizationLevel.BASIC, StageRecord("optimize"))
    x = val["input"]
    reference = run(model.SerializeToString(), x)
    confident = reference.max(axis=1) > 0.5
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    all_groups = {group_of(n, layers[0].name) for n in layers}
    counts = {g: sum(group_of(n, layers[0].name) == g for n in layers) for g in sorted(all_groups)}
    print(f"EfficientNet-Lite0, {len(x)} validation crops (after {CAL_SAMPLES} calibration crops, as "
          f"build_models.py: VAL_SAMPLES {VAL_SAMPLES['efficientnet']}); FP32 top prob > 0.5 on "
          f"{int(confident.sum())}\n")  # fmt: skip
    print(
        "| weights rounded | layers | top-1 agreement | where FP32 top prob > 0.5 | the rest | mean cosine |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    cases = [(f"INT8: {g}", {g}, int8_weights, counts[g]) for g in sorted(all_groups)]
    cases += [("INT8: all", all_groups, int8_weights, len(layers))]
    cases += [("FP16: all", all_groups, fp16_weights, len(layers))]
    for label, groups, rounding, count in cases:
        out = run(rounded(model, groups, rounding), x)
        agree = out.argmax(axis=1) == reference.argmax(axis=1)
        cosine = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
        print(f"| {label} | {count} | {agree.mean():.3f} | {agree[confident].mean():.3f} | "
              f"{agree[~confident].mean():.3f} | {cosine.mean():.5f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
