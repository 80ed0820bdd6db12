"""Stage 3, precision: FP16 through ONNX Runtime's float16 converter, and the model facts INT8 needs on either
target (transformer or not, the default calibration, tensors no 8-bit scale fits). INT8 itself: int8_ort.py
(ONNX Runtime QDQ), openvino.py (NNCF), the mixed-precision search in sensitivity.py."""

from __future__ import annotations

import numpy as np
import onnx

from kiln.builder.data import Sample
from kiln.builder.options import CalibrationMethod
from kiln.builder.report import StageRecord
from kiln.errors import InvalidArgumentError


def matching_nodes(model: onnx.ModelProto, patterns: tuple[str, ...]) -> list[str]:
    """Node names matching ``patterns`` (a node name or an op type each); unknown patterns are an error."""
    names = []
    for pattern in patterns:
        found = [n.name for n in model.graph.node if pattern in (n.name, n.op_type)]
        if not found:
            raise InvalidArgumentError(
                f"--keep-fp32 '{pattern}' matches no node name or op type of the optimised model "
                f"(node names: {', '.join(n.name for n in model.graph.node[:12])}...)"
            )
        names.extend(found)
    return sorted(set(names))


def to_fp16(
    model: onnx.ModelProto, keep_io_types: bool, keep_fp32: tuple[str, ...], record: StageRecord
) -> onnx.ModelProto:
    from onnxruntime.transformers import float16

    blocked = matching_nodes(model, keep_fp32) if keep_fp32 else []
    try:
        converted = float16.convert_float_to_float16(
            model, keep_io_types=keep_io_types, node_block_list=blocked or None, disable_shape_infer=False
        )
    except Exception as e:
        raise InvalidArgumentError(f"FP16 conversion failed: {e}") from None
    fp16_inits = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    record.details["fp16_initializers"] = fp16_inits
    record.details["kept_fp32_nodes"] = len(blocked)
    record.details["io_types"] = "fp32" if keep_io_types else "fp16"
    return converted


EXTREME = 1e30


def is_transformer(model: onnx.ModelProto) -> bool:
    """Attention present: a Softmax and a MatMul of two computed tensors (no weight operand)."""
    inits = {t.name for t in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    dynamic_matmul = any(n.op_type == "MatMul" and not inits & set(n.input) for n in model.graph.node)
    return "Softmax" in ops and dynamic_matmul


def default_method(model: onnx.ModelProto) -> CalibrationMethod:
    """Min-max for CNNs; percentile for transformers, whose activations have outliers. (ONNX Runtime's entropy
    calibrator, TensorRT's default, histograms into 128 bins and searches 128 quantised bins: its threshold is
    always the whole range, i.e. min-max, computed more slowly; measured identical on three models.)"""
    return CalibrationMethod.PERCENTILE if is_transformer(model) else CalibrationMethod.MINMAX


def extreme_range_nodes(model: onnx.ModelProto, samples: list[Sample]) -> list[str]:
    """Nodes that produce or consume float tensors with values beyond +-1e30 or non-finite ones (attention
    masks built from ``finfo.min``, say): no 8-bit scale fits them and ORT's histogram calibrators fail on
    them, so they stay in FP32. Found by running the FP32 model on a couple of calibration samples."""
    import onnxruntime as ort

    if not samples:
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    typed = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    names = []
    for node in probe.graph.node:
        for out in node.output:
            vi = typed.get(out)
            if (
                out
                and out not in outputs
                and vi is not None
                and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            ):
                probe.graph.output.append(vi)
                names.append(out)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    bad: set[str] = set()
    for sample in samples:
        for name, value in zip(names, session.run(names, sample), strict=True):
            arr = np.asarray(value)
            if arr.size and (not np.isfinite(arr).all() or float(np.abs(arr).max()) > EXTREME):
                bad.add(name)
    return sorted(n.name for n in model.graph.node if n.name and (bad & set(n.output) or bad & set(n.input)))


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type) for t in model.graph.initializer)


def _itemsize(data_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
