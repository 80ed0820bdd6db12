"""Stage 2, graph optimisation: onnxscript's optimiser (constant folding, dead-node elimination, function
inlining), then ONNX Runtime's offline graph optimisation (Conv+BN/Add/Mul fusion, MatMul+Add, and at the
extended level Conv+activation, GELU, LayerNorm and attention fusions). No hand-written passes."""

from __future__ import annotations

import collections
import enum
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from kiln.builder.parse import model_stats
from kiln.builder.report import StageRecord
from kiln.errors import InvalidArgumentError


class OptimizationLevel(enum.Enum):
    BASIC = "basic"  # standard ONNX ops only: safe input for quantisation, FP16 conversion and OpenVINO
    EXTENDED = "extended"  # adds ONNX Runtime contrib fusions: for artifacts ONNX Runtime (CPU) will run


_ORT_LEVELS = {
    OptimizationLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    OptimizationLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def optimize(model: onnx.ModelProto, level: OptimizationLevel, record: StageRecord) -> onnx.ModelProto:
    before_ops = collections.Counter(n.op_type for n in model.graph.node)
    before = model_stats(model)
    model = _onnxscript(model)
    record.details["after_onnxscript_nodes"] = len(model.graph.node)
    model = _ort_offline(model, level)
    after = model_stats(model)
    after_ops = collections.Counter(n.op_type for n in model.graph.node)
    record.details["level"] = level.value
    record.details["nodes"] = f"{before['nodes']} -> {after['nodes']}"
    record.details["size_mb"] = f"{before['size_mb']} -> {after['size_mb']}"
    record.details["removed_ops"] = dict(before_ops - after_ops)
    record.details["added_ops"] = dict(after_ops - before_ops)
    return model


def _onnxscript(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript.optimizer

    try:
        optimized = onnxscript.optimizer.optimize(model)
    except Exception as e:
        raise InvalidArgumentError(f"the onnxscript optimiser failed on this model: {e}") from None
    assert isinstance(optimized, onnx.ModelProto)
    return optimized


def _ort_offline(model: onnx.ModelProto, level: OptimizationLevel) -> onnx.ModelProto:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _ORT_LEVELS[level]
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InvalidArgumentError(f"ONNX Runtime graph optimisation failed: {e}") from None
        return onnx.load(str(out))
