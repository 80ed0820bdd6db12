"""Stage 3, precision for the ONNX Runtime target: FP16 through ONNX Runtime's float16 converter, INT8 through
``onnxruntime.quantization.quantize_static`` (QDQ) with a calibration data reader. No home-made quantiser."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from kiln.builder.data import Dataset, Sample
from kiln.builder.options import CalibrationMethod, CalibrationOptions
from kiln.builder.report import Reporter, StageRecord
from kiln.errors import InvalidArgumentError

CALIBRATION_BATCH = 8


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


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a Dataset, batched, with a progress bar."""

    def __init__(self, batches: list[Sample], reporter: Reporter) -> None:
        self._iter: Iterator[Sample] = reporter.track(iter(batches), len(batches), "calibrating")

    def get_next(self) -> Sample | None:
        return next(self._iter, None)


def to_int8(
    model: onnx.ModelProto,
    calibration: Dataset,
    options: CalibrationOptions,
    batchable: bool,
    reporter: Reporter,
    record: StageRecord,
) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization import CalibrationMethod as OrtMethod

    if len(calibration) == 0:
        raise InvalidArgumentError("INT8 needs calibration samples: give --calibration-data")
    method = {
        CalibrationMethod.ENTROPY: OrtMethod.Entropy,
        CalibrationMethod.MINMAX: OrtMethod.MinMax,
        CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
    }[options.method or default_method(model)]
    excluded = matching_nodes(model, options.keep_fp32) if options.keep_fp32 else []
    extreme = extreme_range_nodes(model, calibration.samples[:2])
    excluded = sorted(set(excluded) | set(extreme))
    transformer = is_transformer(model)
    op_types: list[str] | None = list(options.op_types) or None
    if op_types is None and transformer:
        # Transformers: INT8 MatMul/Gemm (the work), float elsewhere: their LayerNorm/residual activations have
        # outliers that one 8-bit scale per tensor cannot hold (cosine 0.85 -> 0.94 on all-MiniLM-L6-v2).
        op_types = ["MatMul", "Gemm"]
    if extreme and op_types is None:
        # ORT calibrates every tensor of the op types it quantizes, excluded nodes included: leave those op
        # types out altogether (for a transformer: the mask Add/Where and Softmax; MatMul stays INT8).
        from onnxruntime.quantization.registry import QDQRegistry

        extreme_types = {n.op_type for n in model.graph.node if n.name in set(extreme)}
        op_types = sorted(t for t in QDQRegistry if t not in extreme_types)
        record.details["unquantised_op_types"] = sorted(extreme_types)
    # ORT's histogram calibrators stack per-batch outputs, so every batch must have the same size: full
    # batches only (a remainder smaller than a batch is left out), or batches of one for small sets.
    size = CALIBRATION_BATCH if batchable and len(calibration) >= CALIBRATION_BATCH else 1
    batches = [b for b in calibration.batches(size) if len(next(iter(b.values()))) == size]

    class Reader(_Reader, CalibrationDataReader):
        pass

    extra = {
        "CalibPercentile": options.percentile,
        "ActivationSymmetric": False,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": False,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        try:
            with _quiet():
                quantize_static(
                    model,
                    str(out),
                    Reader(batches, reporter),
                    quant_format=QuantFormat.QDQ,
                    per_channel=options.per_channel,
                    # U8 activations x S8 weights: the VNNI/AVX-512 integer kernels' native form on x86
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded or None,
                    op_types_to_quantize=op_types,
                    calibrate_method=method,
                    calibration_providers=["CPUExecutionProvider"],
                    extra_options=extra,
                )
        except InvalidArgumentError:
            raise
        except Exception as e:
            raise InvalidArgumentError(f"INT8 quantisation failed: {type(e).__name__}: {e}") from None
        quantized = onnx.load(str(out))
    ops = [n.op_type for n in quantized.graph.node]
    record.details["method"] = (options.method or default_method(model)).value
    record.details["op_types"] = (
        "MatMul,Gemm (transformer)"
        if transformer and not options.op_types
        else (",".join(op_types) if op_types else "all")
    )
    record.details["calibration_samples"] = len(batches) * size
    record.details["per_channel"] = options.per_channel
    record.details["quantize_nodes"] = ops.count("QuantizeLinear")
    record.details["dequantize_nodes"] = ops.count("DequantizeLinear")
    record.details["kept_fp32_nodes"] = len(excluded)
    if extreme:
        record.details["auto_kept_fp32"] = extreme
    record.details["int8_weights"] = sum(
        1 for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    )
    return quantized


EXTREME = 1e30


def is_transformer(model: onnx.ModelProto) -> bool:
    """Attention present: a Softmax and a MatMul of two computed tensors (no weight operand)."""
    inits = {t.name for t in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    dynamic_matmul = any(n.op_type == "MatMul" and not inits & set(n.input) for n in model.graph.node)
    return "Softmax" in ops and dynamic_matmul


def default_method(model: onnx.ModelProto) -> CalibrationMethod:
    """Entropy for CNNs (TensorRT's default); percentile for transformers, whose activations have outliers."""
    return CalibrationMethod.PERCENTILE if is_transformer(model) else CalibrationMethod.ENTROPY


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization prints progress and logs advice on the root logger; our stages report it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type) for t in model.graph.initializer)


def _itemsize(data_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
