"""Small ONNX models built with onnx.helper: the example repository's and the tests' (no downloads)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def add_sub(dims: list[int | str], elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's classic add_sub)."""
    ins = [helper.make_tensor_value_info(f"INPUT{i}", elem_type, dims) for i in (0, 1)]
    outs = [helper.make_tensor_value_info(f"OUTPUT{i}", elem_type, dims) for i in (0, 1)]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    return _model(helper.make_graph(nodes, "add_sub", ins, outs))


def identity(elem_type: int, dims: list[int | str], name: str = "identity") -> onnx.ModelProto:
    """OUTPUT0 = INPUT0, any datatype (strings included)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        name,
        [helper.make_tensor_value_info("INPUT0", elem_type, dims)],
        [helper.make_tensor_value_info("OUTPUT0", elem_type, dims)],
    )
    return _model(graph)


def image_classifier(
    num_classes: int = 10, channels: int = 3, size: int = 32, width: int = 16, seed: int = 0
) -> onnx.ModelProto:
    """A small CNN (conv-relu-conv-relu-pool-fc-softmax) with fixed random weights: input NCHW, output probs."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", (width, channels, 3, 3), 0.3),
        init("b1", (width,), 0.1),
        init("w2", (width, width, 3, 3), 0.1),
        init("b2", (width,), 0.1),
        init("fc_w", (width, num_classes), 0.5),
        init("fc_b", (num_classes,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "image_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", num_classes])],
        inits,
    )
    return _model(graph)


def sequence_controls(dyna: bool = False) -> onnx.ModelProto:
    """A stateless sequence model with control inputs, as Triton's quick-start ``simple_sequence`` (``dyna``:
    ``simple_dyna_sequence``). INPUT, START, READY (and END, CORRID UINT64) are ``[batch, 1]`` INT32;
    OUTPUT = READY * (INPUT + START) (``dyna``: + END * CORRID)."""
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 1]) for n in ("INPUT", "START", "READY")
    ]
    nodes = [helper.make_node("Add", ["INPUT", "START"], ["sum"])]
    total = "sum"
    if dyna:
        ints.append(helper.make_tensor_value_info("END", TensorProto.INT32, ["batch", 1]))
        ints.append(helper.make_tensor_value_info("CORRID", TensorProto.UINT64, ["batch", 1]))
        nodes += [
            helper.make_node("Cast", ["CORRID"], ["corrid"], to=TensorProto.INT32),
            helper.make_node("Mul", ["END", "corrid"], ["end_corrid"]),
            helper.make_node("Add", ["sum", "end_corrid"], ["total"]),
        ]
        total = "total"
    nodes.append(helper.make_node("Mul", ["READY", total], ["OUTPUT"]))
    out = helper.make_tensor_value_info("OUTPUT", TensorProto.INT32, ["batch", 1])
    return _model(
        helper.make_graph(nodes, "simple_dyna_sequence" if dyna else "simple_sequence", ints, [out])
    )


def accumulator() -> onnx.ModelProto:
    """A running sum kept in implicit state: OUTPUT = ACC_IN + INPUT and ACC_OUT = OUTPUT, all ``[batch, 1]``
    FP32; the sequence batcher feeds ACC_OUT back as the next request's ACC_IN."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in ("INPUT", "ACC_IN")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1]) for n in ("OUTPUT", "ACC_OUT")]
    nodes = [
        helper.make_node("Add", ["ACC_IN", "INPUT"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
    ]
    return _model(helper.make_graph(nodes, "accumulator", ins, outs))


def string_add_sub(dims: list[int | str]) -> onnx.ModelProto:
    """Triton's ``simple_string``: INPUT0/INPUT1 are numbers written as strings (BYTES); OUTPUT0/OUTPUT1 their
    sum and difference, as strings."""
    ins = [helper.make_tensor_value_info(f"INPUT{i}", TensorProto.STRING, dims) for i in (0, 1)]
    outs = [helper.make_tensor_value_info(f"OUTPUT{i}", TensorProto.STRING, dims) for i in (0, 1)]
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    return _model(helper.make_graph(nodes, "simple_string", ins, outs))
