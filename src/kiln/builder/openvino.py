"""The OpenVINO target: ONNX -> OpenVINO IR (``openvino.convert_model``), FP16 weight compression on save, INT8
with NNCF post-training quantisation. Imported only when ``--target openvino`` is asked for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from kiln.builder.data import Dataset, Sample
from kiln.builder.mixed import RunFn, SearchData, memoized_evaluator, proxy_ranking, record_search, run_search
from kiln.builder.options import BuildOptions, CalibrationMethod, CalibrationOptions, Precision
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
    options: BuildOptions,
    batchable: bool,
    out_dir: Path,
    reporter: Reporter,
    record: StageRecord,
    reference: RunFn | None = None,
) -> Path:
    """Write ``out_dir/model.xml`` + ``model.bin`` at ``precision``; return the .xml path. ``reference`` (the
    FP32 model) enables the mixed-precision search for INT8."""
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
        quantizer = _NncfQuantizer(ov_model, model, calibration, options.calibration, reporter, record)
        ov_model = quantizer.quantize([])
        if options.calibration.mixed_precision and reference is not None:
            ov_model = _search(
                ov_model, quantizer, model, calibration, options, batchable, reference, reporter, record
            )
        else:
            record_search(record, None, "off")
    xml = out_dir / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=precision is Precision.FP16)
    ops = [op.get_type_name() for op in ov_model.get_ordered_ops()]
    record.details["ir_ops"] = len(ops)
    record.details["fake_quantize"] = ops.count("FakeQuantize")
    record.details["compress_to_fp16"] = precision is Precision.FP16
    record.details["openvino"] = ov.__version__.split("-")[0]
    return xml


def _search(  # type: ignore[no-untyped-def]
    full,
    quantizer: _NncfQuantizer,
    model: onnx.ModelProto,
    calibration: Dataset,
    options: BuildOptions,
    batchable: bool,
    reference: RunFn,
    reporter: Reporter,
    record: StageRecord,
):
    tolerance = options.tolerance_for(Precision.INT8)
    data = SearchData(reference, calibration, options.calibration.search_samples, tolerance)
    evaluate, models = memoized_evaluator(full, quantizer.quantize, data, _ov_runner)
    if evaluate([]).passed:
        record_search(record, None, "not needed (all-INT8 passes on the search samples)")
        return full
    reporter.note("all-INT8 fails on the search samples: ranking layer sensitivity (ONNX Runtime QDQ proxy)")
    ranking = proxy_ranking(model, calibration, options, batchable, reporter)
    result = run_search(ranking, evaluate, options, reporter)
    record_search(record, result)
    return models[tuple(k.name for k in result.kept)]  # if none passed, the most faithful mix tried


def _ov_runner(ov_model) -> RunFn:  # type: ignore[no-untyped-def]
    ov = import_openvino()
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feeds: Sample) -> dict[str, np.ndarray]:
        result = compiled(dict(feeds))
        return {n: np.asarray(result[o]) for n, o in zip(names, compiled.outputs, strict=True)}

    return run


class _NncfQuantizer:
    """NNCF post-training quantisation of one OpenVINO model; ``quantize(keep)`` leaves ONNX nodes ``keep``
    (mapped to the OpenVINO operations they became) in float through NNCF's ignored scope."""

    def __init__(  # type: ignore[no-untyped-def]
        self,
        ov_model,
        source: onnx.ModelProto,
        calibration: Dataset,
        options: CalibrationOptions,
        reporter: Reporter,
        record: StageRecord,
    ) -> None:
        from kiln.builder.precision import is_transformer

        if len(calibration) == 0:
            raise InvalidArgumentError("INT8 needs calibration samples: give --calibration-data")
        if options.method is CalibrationMethod.ENTROPY:
            raise InvalidArgumentError(
                "--calibration-method entropy is not available for the OpenVINO target (NNCF has no KL-entropy "
                "range estimator); use minmax or percentile, or leave it out for NNCF's default"
            )
        self.ov_model = ov_model
        self.calibration = calibration
        self.options = options
        self.reporter = reporter
        self.names = {op.get_friendly_name() for op in ov_model.get_ops()}
        missing = [n for n in options.keep_fp32 if n not in self.names]
        if missing:
            raise InvalidArgumentError(f"--keep-fp32 {missing}: no such operation in the OpenVINO model")
        self.transformer = is_transformer(source)
        record.details["method"] = options.method.value if options.method else "nncf-default"
        record.details["calibration_samples"] = len(calibration)
        record.details["model_type"] = "transformer" if self.transformer else "default"

    def ov_names(self, onnx_nodes: list[str]) -> list[str]:
        """OpenVINO operations of ONNX nodes: a Conv/Gemm with bias becomes ``NAME/WithoutBiases`` + ``NAME``."""
        found = []
        for name in onnx_nodes:
            found += [n for n in (name, f"{name}/WithoutBiases") if n in self.names]
        return found

    def quantize(self, keep: list[str]):  # type: ignore[no-untyped-def]
        nncf = _nncf()
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced = AdvancedQuantizationParameters()
        if self.options.method is CalibrationMethod.MINMAX:
            advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
        elif self.options.method is CalibrationMethod.PERCENTILE:
            advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
        ignored_names = [*self.options.keep_fp32, *self.ov_names(keep)]
        ignored = nncf.IgnoredScope(names=ignored_names, validate=False) if ignored_names else None
        dataset = nncf.Dataset(_Batches(self.calibration))
        try:
            return nncf.quantize(
                self.ov_model,
                dataset,
                subset_size=len(self.calibration),
                model_type=nncf.ModelType.TRANSFORMER if self.transformer else None,
                ignored_scope=ignored,
                advanced_parameters=advanced,
            )
        except Exception as e:
            raise InvalidArgumentError(f"NNCF quantisation failed: {type(e).__name__}: {e}") from None


class _Batches:
    """The calibration samples one by one, re-iterable (NNCF iterates more than once), read on demand."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
