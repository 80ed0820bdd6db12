"""The OpenVINO target: ONNX -> OpenVINO IR (``openvino.convert_model``), FP16 weight compression on save, INT8
with NNCF post-training quantisation. Imported only when ``--target openvino`` is asked for."""

from __future__ import annotations

from pathlib import Path

import onnx

from kiln.builder.data import Dataset
from kiln.builder.options import CalibrationMethod, CalibrationOptions, Precision
from kiln.builder.report import Reporter, StageRecord
from kiln.errors import InvalidArgumentError, MissingDependencyError


def import_openvino():  # type: ignore[no-untyped-def]
    """The openvino module, or a clear error naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("OpenVINO", "openvino") from None
    return openvino


def _nncf():  # type: ignore[no-untyped-def]
    try:
        import nncf
    except ImportError:
        raise MissingDependencyError("NNCF (INT8 for the OpenVINO target)", "openvino") from None
    return nncf


def build_ir(
    model: onnx.ModelProto,
    precision: Precision,
    calibration: Dataset,
    options: CalibrationOptions,
    batchable: bool,
    out_dir: Path,
    reporter: Reporter,
    record: StageRecord,
) -> Path:
    """Write ``out_dir/model.xml`` + ``model.bin`` at ``precision``; return the .xml path."""
    ov = import_openvino()
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "source.onnx"
    onnx.save(model, str(src))
    try:
        ov_model = ov.convert_model(str(src))
    except Exception as e:
        raise InvalidArgumentError(f"OpenVINO could not convert the model: {e}") from None
    finally:
        src.unlink(missing_ok=True)
    if precision is Precision.INT8:
        ov_model = _quantize(ov_model, model, calibration, options, batchable, reporter, record)
    xml = out_dir / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=precision is Precision.FP16)
    ops = [op.get_type_name() for op in ov_model.get_ordered_ops()]
    record.details["ir_ops"] = len(ops)
    record.details["fake_quantize"] = ops.count("FakeQuantize")
    record.details["compress_to_fp16"] = precision is Precision.FP16
    record.details["openvino"] = ov.__version__.split("-")[0]
    return xml


def _quantize(  # type: ignore[no-untyped-def]
    ov_model,
    source: onnx.ModelProto,
    calibration: Dataset,
    options: CalibrationOptions,
    batchable: bool,
    reporter: Reporter,
    record: StageRecord,
):
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if len(calibration) == 0:
        raise InvalidArgumentError("INT8 needs calibration samples: give --calibration-data")
    if options.method is CalibrationMethod.ENTROPY:
        raise InvalidArgumentError(
            "--calibration-method entropy is not available for the OpenVINO target (NNCF has no KL-entropy "
            "range estimator); use minmax or percentile, or leave it out for NNCF's default"
        )
    advanced = AdvancedQuantizationParameters()
    if options.method is CalibrationMethod.MINMAX:
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    elif options.method is CalibrationMethod.PERCENTILE:
        advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
    names = {op.get_friendly_name() for op in ov_model.get_ops()}
    missing = [n for n in options.keep_fp32 if n not in names]
    if missing:
        raise InvalidArgumentError(f"--keep-fp32 {missing}: no such operation in the OpenVINO model")
    items = list(calibration.batches(1))
    dataset = nncf.Dataset(items)
    ignored = nncf.IgnoredScope(names=list(options.keep_fp32)) if options.keep_fp32 else None
    reporter.note(f"NNCF post-training quantisation on {len(items)} samples")
    from kiln.builder.precision import is_transformer

    transformer = is_transformer(source)
    try:
        quantized = nncf.quantize(
            ov_model,
            dataset,
            subset_size=len(items),
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            ignored_scope=ignored,
            advanced_parameters=advanced,
        )
    except Exception as e:
        raise InvalidArgumentError(f"NNCF quantisation failed: {type(e).__name__}: {e}") from None
    record.details["method"] = options.method.value if options.method else "nncf-default"
    record.details["calibration_samples"] = len(items)
    record.details["model_type"] = "transformer" if transformer else "default"
    return quantized
