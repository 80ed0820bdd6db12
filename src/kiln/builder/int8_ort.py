"""INT8 for the ONNX Runtime target: ``onnxruntime.quantization.quantize_static`` (QDQ), calibrated once.

The calibration ranges are computed on the first call and kept in ORT's calibration cache, so the mixed-
precision search can re-quantise the model with other nodes kept in float without calibrating again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx

from kiln.builder.cpu import default_reduce_range, int8_dot
from kiln.builder.data import Dataset, Sample
from kiln.builder.options import CalibrationMethod, CalibrationOptions
from kiln.builder.precision import default_method, extreme_range_nodes, is_transformer, matching_nodes
from kiln.builder.report import Reporter, StageRecord
from kiln.errors import InvalidArgumentError

CALIBRATION_BATCH = 8
# Never quantised unless asked for by --quantize-op-types: a Softmax output in 8 bits has 256 levels, so close
# probabilities become equal and the top class of an unsure prediction turns into a tie (ONNX Runtime would
# otherwise quantise it, with the fixed range 0..1).
FLOAT_OP_TYPES = frozenset({"Softmax"})


class OrtQuantizer:
    """Static QDQ quantisation of one model with one calibration; ``quantize(keep)`` leaves ``keep`` in float."""

    def __init__(
        self,
        model: onnx.ModelProto,
        calibration: Dataset,
        options: CalibrationOptions,
        batchable: bool,
        reporter: Reporter,
        record: StageRecord,
    ) -> None:
        if len(calibration) == 0:
            raise InvalidArgumentError("INT8 needs calibration samples: give --calibration-data")
        self.model = model
        self.calibration = calibration
        self.options = options
        self.reporter = reporter
        self.method = options.method or default_method(model)
        self.transformer = is_transformer(model)
        user_kept = matching_nodes(model, options.keep_fp32) if options.keep_fp32 else []
        self.extreme = extreme_range_nodes(model, calibration.take(2))
        self.base_excluded = sorted(set(user_kept) | set(self.extreme))
        self.op_types = self._op_types(record)
        self.dot = int8_dot()
        reduce = options.reduce_range
        self.reduce_range = default_reduce_range(self.dot) if reduce is None else reduce
        # ORT's histogram calibrators stack per-batch outputs, so every batch must have the same size: full
        # batches only (a remainder smaller than a batch is left out), or batches of one for small sets.
        self.batch = CALIBRATION_BATCH if batchable and len(calibration) >= CALIBRATION_BATCH else 1
        self.calibrated_samples = (len(calibration) // self.batch) * self.batch
        self._tmp = tempfile.TemporaryDirectory(prefix="kiln-int8-")
        self._cache = Path(self._tmp.name) / "calibration.json"
        self.calls = 0
        record.details["method"] = self.method.value
        record.details["op_types"] = (
            "MatMul,Gemm (transformer)"
            if self.transformer and not options.op_types
            else (
                ",".join(self.op_types) if options.op_types else "all but " + ",".join(sorted(FLOAT_OP_TYPES))
            )
        )
        record.details["calibration_samples"] = self.calibrated_samples
        record.details["per_channel"] = options.per_channel
        record.details["reduce_range"] = self.reduce_range
        record.details["cpu_int8_dot"] = self.dot.value
        if self.extreme:
            record.details["auto_kept_fp32"] = self.extreme

    def _op_types(self, record: StageRecord) -> list[str]:
        if self.options.op_types:
            return list(self.options.op_types)
        if self.transformer:
            # Transformers: INT8 MatMul/Gemm (the work), float elsewhere: their LayerNorm/residual activations
            # have outliers that one 8-bit scale per tensor cannot hold.
            return ["MatMul", "Gemm"]
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        skipped = set(FLOAT_OP_TYPES)
        if self.extreme:
            # ORT calibrates every tensor of the op types it quantizes, excluded nodes included: leave those op
            # types out altogether (the mask Add/Where of a transformer-like graph, say).
            extreme = set(self.extreme)
            extreme_types = {n.op_type for n in self.model.graph.node if n.name in extreme}
            skipped |= extreme_types
            record.details["unquantised_op_types"] = sorted(extreme_types)
        return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - skipped)

    def _reader(self):  # type: ignore[no-untyped-def]
        from onnxruntime.quantization import CalibrationDataReader

        batches = self.calibration.batches(self.batch, full_only=True)
        tracked = self.reporter.track(batches, len(self.calibration) // self.batch, "calibrating")

        class Reader(CalibrationDataReader):
            def __init__(self, items: Iterator[Sample]) -> None:
                self._items = items

            def get_next(self) -> Sample | None:
                return next(self._items, None)

        return Reader(tracked)

    def quantize(self, keep: Sequence[str] = ()) -> onnx.ModelProto:
        """The QDQ model with ``keep`` (node names) and the always-excluded nodes left in float."""
        from onnxruntime.quantization import CalibrationMethod as OrtMethod
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        method = {
            CalibrationMethod.ENTROPY: OrtMethod.Entropy,
            CalibrationMethod.MINMAX: OrtMethod.MinMax,
            CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
        }[self.method]
        extra = {
            "CalibPercentile": self.options.percentile,
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "CalibTensorRangeSymmetric": False,
        }
        excluded = sorted(set(self.base_excluded) | set(keep))
        out = Path(self._tmp.name) / f"int8-{self.calls}.onnx"
        self.calls += 1
        model = onnx.ModelProto()
        model.CopyFrom(
            self.model
        )  # quantize_static moves the weights of a ModelProto it gets to external data
        try:
            with quiet():
                quantize_static(
                    model,
                    str(out),
                    None if self._cache.is_file() else self._reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=self.options.per_channel,
                    reduce_range=self.reduce_range,
                    # U8 activations x S8 weights: the VNNI/AVX-512 integer kernels' native form on x86
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded or None,
                    op_types_to_quantize=self.op_types,
                    calibrate_method=method,
                    calibration_providers=["CPUExecutionProvider"],
                    extra_options=extra,
                    calibration_cache_path=self._cache,
                )
        except InvalidArgumentError:
            raise
        except Exception as e:
            raise InvalidArgumentError(f"INT8 quantisation failed: {type(e).__name__}: {e}") from None
        quantized = onnx.load(str(out))
        out.unlink(missing_ok=True)
        return quantized

    def layers(self, quantized: onnx.ModelProto) -> list[str]:
        """The nodes of ``quantized`` that run in INT8 and are of the op types quantised (the search's layers)."""
        types = set(self.op_types)
        kinds = {n.name: n.op_type for n in quantized.graph.node}
        return [n for n in quantized_nodes(quantized) if kinds[n] in types]

    def close(self) -> None:
        self._tmp.cleanup()


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of a QDQ model that consume a DequantizeLinear output (the ones running in INT8)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear"}
    return [
        n.name for n in model.graph.node if n.op_type not in skip and n.name and dq_outputs & set(n.input)
    ]


def describe(model: onnx.ModelProto, record: StageRecord, kept: int) -> None:
    ops = [n.op_type for n in model.graph.node]
    record.details["quantize_nodes"] = ops.count("QuantizeLinear")
    record.details["dequantize_nodes"] = ops.count("DequantizeLinear")
    record.details["kept_fp32_nodes"] = kept
    record.details["int8_weights"] = sum(
        1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime.quantization prints progress and logs advice on the root logger; our stages report it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
