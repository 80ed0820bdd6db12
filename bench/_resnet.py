"""A ResNet-18 image classifier built with onnx.helper: the real topology, random weights, no downloads.

conv1 7x7/2 (64) - maxpool 3x3/2 - 4 stages of 2 basic blocks (64, 128, 256, 512; the first block of stages
2-4 strides by 2 and has a 1x1/2 projection shortcut) - global average pool - fully connected 512 -> 1000.
Batch normalisation is folded into each convolution's bias, as an inference export (and ORT) does; that
leaves the convolution work, and the parameter count (11.69 M), of torchvision's resnet18.
Input `input` FP32 [batch, 3, 224, 224], output `logits` FP32 [batch, 1000], batch dimension dynamic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT = "input"
OUTPUT = "logits"
IMAGE_SHAPE = (3, 224, 224)
CLASSES = 1000


def build_resnet18(seed: int = 0):  # -> onnx.ModelProto
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        w, b, y = name("w"), name("b"), name("conv")
        std = np.sqrt(2.0 / (cin * k * k))  # He initialisation keeps activations finite through 18 layers
        inits.append(
            numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32), w)
        )
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), b))
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [y], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4
            )
        )
        if not relu:
            return y
        r = name("relu")
        nodes.append(helper.make_node("Relu", [y], [r]))
        return r

    def basic_block(x: str, cin: int, cout: int, stride: int) -> str:
        y = conv(x, cin, cout, 3, stride, relu=True)
        y = conv(y, cout, cout, 3, 1, relu=False)
        shortcut = conv(x, cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else x
        s, r = name("add"), name("relu")
        nodes.append(helper.make_node("Add", [y, shortcut], [s]))
        nodes.append(helper.make_node("Relu", [s], [r]))
        return r

    x = conv(INPUT, 3, 64, 7, 2, relu=True)
    pooled = name("maxpool")
    nodes.append(
        helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    )
    x, cin = pooled, 64
    for i, cout in enumerate((64, 128, 256, 512)):
        x = basic_block(x, cin, cout, 1 if i == 0 else 2)
        x = basic_block(x, cout, cout, 1)
        cin = cout
    gap, flat = name("gap"), name("flatten")
    nodes.append(helper.make_node("GlobalAveragePool", [x], [gap]))
    nodes.append(helper.make_node("Flatten", [gap], [flat], axis=1))
    fc_w, fc_b = name("fc_w"), name("fc_b")
    inits.append(
        numpy_helper.from_array((rng.standard_normal((CLASSES, 512)) / np.sqrt(512)).astype(np.float32), fc_w)
    )
    inits.append(numpy_helper.from_array(np.zeros(CLASSES, np.float32), fc_b))
    nodes.append(helper.make_node("Gemm", [flat, fc_w, fc_b], [OUTPUT], transB=1))

    graph = helper.make_graph(
        nodes,
        "resnet18",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def parameter_count(model) -> int:  # model: onnx.ModelProto
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def write_resnet18(path: Path, seed: int = 0) -> int:
    """Save the model to `path`; returns its parameter count."""
    import onnx

    model = build_resnet18(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return parameter_count(model)


def resnet_config(name: str, max_batch_size: int, dynamic_batching: str | None, instances: int = 1) -> str:
    """A Kiln/Triton config.pbtxt; `dynamic_batching` is the block's body, or None for no batcher."""
    batching = f"dynamic_batching {{ {dynamic_batching} }}\n" if dynamic_batching is not None else ""
    return f"""\
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }} ]
output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {CLASSES} ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{batching}"""
