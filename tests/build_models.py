"""Small models for the build and bench tests, made with onnx.helper (no downloads): a conv net with batch
norm, an MLP, and a transformer encoder block with a dynamic sequence length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class _Init:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[onnx.TensorProto] = []

    def __call__(self, name: str, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> str:
        value = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        self.tensors.append(numpy_helper.from_array(value, name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.tensors.append(numpy_helper.from_array(value, name))
        return name


def conv_net(width: int = 16, size: int = 16, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """conv-BN-relu x2, global pool, gemm -> logits. Input ``x`` [batch, 3, size, size]."""
    w = _Init(seed)
    nodes = []
    prev, ch = "x", 3
    for i in (1, 2):
        nodes += [
            helper.make_node("Conv", [prev, w(f"w{i}", (width, ch, 3, 3), (2 / (9 * ch)) ** 0.5)], [f"c{i}"],
                             pads=[1, 1, 1, 1], name=f"conv{i}"),
            helper.make_node(
                "BatchNormalization",
                [f"c{i}", w(f"g{i}", (width,), 0.1, 1.0), w(f"b{i}", (width,), 0.1),
                 w(f"m{i}", (width,), 0.1), w.const(f"v{i}", np.full(width, 1.5, np.float32))],
                [f"n{i}"], name=f"bn{i}",
            ),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}"),
        ]  # fmt: skip
        prev, ch = f"r{i}", width
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", w("fc_w", (width, classes), 0.5), w("fc_b", (classes,), 0.1)],
                         ["logits"], name="fc"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        w.tensors,
    )
    return _model(graph)


def mlp(features: int = 32, hidden: int = 64, classes: int = 8, seed: int = 1) -> onnx.ModelProto:
    """MatMul+Add+Relu, MatMul+Add -> Softmax. Input ``features`` [batch, features]."""
    w = _Init(seed)
    nodes = [
        helper.make_node("MatMul", ["features", w("w1", (features, hidden), (2 / features) ** 0.5)], ["h1"]),
        helper.make_node("Add", ["h1", w("b1", (hidden,), 0.1)], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", w("w2", (hidden, classes), (1 / hidden) ** 0.5)], ["h2"]),
        helper.make_node("Add", ["h2", w("b2", (classes,), 0.1)], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        w.tensors,
    )
    return _model(graph)


def transformer_block(d: int = 32, heads: int = 4, ff: int = 64, seed: int = 2) -> onnx.ModelProto:
    """Pre-LN encoder block: LayerNorm, multi-head self-attention, residual, LayerNorm, GELU FFN, residual.
    Input ``hidden`` [batch, seq, d] with a dynamic ``seq``."""
    w = _Init(seed)
    hd = d // heads
    n = helper.make_node
    heads_shape = w.const("heads_shape", np.array([0, 0, heads, hd], np.int64))
    merge_shape = w.const("merge_shape", np.array([0, 0, d], np.int64))
    nodes = [
        n(
            "LayerNormalization",
            ["hidden", w("ln1_g", (d,), 0.1, 1.0), w("ln1_b", (d,), 0.1)],
            ["ln1"],
            axis=-1,
        ),
    ]
    for p in ("q", "k", "v"):
        nodes += [
            n("MatMul", ["ln1", w(f"w{p}", (d, d), d**-0.5)], [f"{p}_mm"]),
            n("Add", [f"{p}_mm", w(f"b{p}", (d,), 0.02)], [f"{p}_lin"]),
            n("Reshape", [f"{p}_lin", heads_shape], [f"{p}_heads"]),
            n("Transpose", [f"{p}_heads"], [f"{p}_t"], perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]),
        ]
    nodes += [
        n("MatMul", ["q_t", "k_t"], ["scores_raw"]),
        n("Div", ["scores_raw", w.const("scale", np.array(hd**0.5, np.float32))], ["scores"]),
        n("Softmax", ["scores"], ["attn"], axis=-1),
        n("MatMul", ["attn", "v_t"], ["ctx_heads"]),
        n("Transpose", ["ctx_heads"], ["ctx_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx_t", merge_shape], ["ctx"]),
        n("MatMul", ["ctx", w("wo", (d, d), d**-0.5)], ["o_mm"]),
        n("Add", ["o_mm", w("bo", (d,), 0.02)], ["o"]),
        n("Add", ["hidden", "o"], ["res1"]),
        n(
            "LayerNormalization",
            ["res1", w("ln2_g", (d,), 0.1, 1.0), w("ln2_b", (d,), 0.1)],
            ["ln2"],
            axis=-1,
        ),
        n("MatMul", ["ln2", w("w_ff1", (d, ff), d**-0.5)], ["ff1_mm"]),
        n("Add", ["ff1_mm", w("b_ff1", (ff,), 0.02)], ["ff1"]),
        # GELU written out (erf form), as exporters emit it at opset 17: ONNX Runtime fuses it
        n("Div", ["ff1", w.const("sqrt2", np.array(2**0.5, np.float32))], ["g_div"]),
        n("Erf", ["g_div"], ["g_erf"]),
        n("Add", ["g_erf", w.const("one", np.array(1.0, np.float32))], ["g_add"]),
        n("Mul", ["ff1", "g_add"], ["g_mul"]),
        n("Mul", ["g_mul", w.const("half", np.array(0.5, np.float32))], ["gelu"]),
        n("MatMul", ["gelu", w("w_ff2", (ff, d), ff**-0.5)], ["ff2_mm"]),
        n("Add", ["ff2_mm", w("b_ff2", (d,), 0.02)], ["ff2"]),
        n("Add", ["res1", "ff2"], ["encoded"]),
    ]
    graph = helper.make_graph(
        nodes,
        "transformer_block",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", d])],
        [helper.make_tensor_value_info("encoded", TensorProto.FLOAT, ["batch", "seq", d])],
        w.tensors,
    )
    return _model(graph)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(model, str(path))
    return path


def write_samples(folder: Path, name: str, shape: tuple[int, ...], count: int, seed: int = 0) -> Path:
    """``count`` samples of ``shape`` (no batch axis) in one stacked .npy, standard-normal."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(folder / f"{name}.npy", rng.standard_normal((count, *shape)).astype(np.float32))
    return folder
