"""INT8 with mixed precision, for both targets: quantise everything, measure on calibration samples against
the FP32 reference, and when the gate's criteria fail, keep the most sensitive layers in float (the search in
sensitivity.py). The gate proper then runs on the validation data, which the search never sees."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from kiln.builder.accuracy import Accumulator, AccuracyReport, gate
from kiln.builder.data import Dataset, Sample
from kiln.builder.int8_ort import OrtQuantizer, describe
from kiln.builder.options import BuildOptions, CalibrationMethod, Precision, Tolerance
from kiln.builder.report import Reporter, StageRecord
from kiln.builder.sensitivity import RANK_SAMPLES, LayerSensitivity, SearchResult, rank_layers, search

SEARCH_BATCH = 8
MAX_KEPT_FRACTION = 0.5  # past half of the layers in float, INT8 is no longer worth it

RunFn = Callable[[Sample], dict[str, np.ndarray]]


class SearchData:
    """The search's samples (a bounded prefix of the calibration set) with the FP32 outputs computed once."""

    def __init__(self, reference: RunFn, calibration: Dataset, count: int, tolerance: Tolerance) -> None:
        self.batches = list(calibration.subset(0, count).batches(SEARCH_BATCH))
        self.references = [reference(b) for b in self.batches]
        # the drop in task accuracy needs labels and enough samples: the gate on validation data checks it
        self.tolerance = dataclasses.replace(tolerance, max_accuracy_drop=None)

    def evaluate(self, run: RunFn) -> AccuracyReport:
        acc = Accumulator()
        for feeds, ref in zip(self.batches, self.references, strict=True):
            acc.add(ref, run(feeds))
        report = acc.report()
        gate(report, self.tolerance)
        return report


def memoized_evaluator(
    full: Any, quantize: Callable[[list[str]], Any], data: SearchData, runner: Callable[[Any], RunFn]
) -> tuple[Callable[[list[str]], AccuracyReport], dict[tuple[str, ...], Any]]:
    """The search's judge, for either target: the model quantised with ``keep`` in float (``full`` for none),
    each mix quantised and evaluated on the search samples once; and the mixes made so far, by kept layers."""
    models: dict[tuple[str, ...], Any] = {(): full}
    reports: dict[tuple[str, ...], AccuracyReport] = {}

    def evaluate(keep: list[str]) -> AccuracyReport:
        key = tuple(keep)
        if key not in reports:
            if key not in models:
                models[key] = quantize(keep)
            reports[key] = data.evaluate(runner(models[key]))
        return reports[key]

    return evaluate, models


def record_search(record: StageRecord, result: SearchResult | None, note: str = "") -> None:
    if result is None:
        record.details["mixed_precision"] = note
        return
    record.details["kept_in_float"] = len(result.kept)
    record.details["search_s"] = round(result.seconds, 1)
    record.details["search"] = result.to_dict()
    if result.kept:
        record.details["float_layers"] = [
            f"{k.name} ({k.op_type}, noise {k.noise:.3g}, SQNR {k.sqnr_db:.1f} dB)" for k in result.kept
        ]


def run_search(
    ranking: Sequence[LayerSensitivity],
    evaluate: Callable[[list[str]], AccuracyReport],
    options: BuildOptions,
    reporter: Reporter,
) -> SearchResult:
    reporter.note(
        "most sensitive: "
        + ", ".join(f"{s.name} ({s.sqnr_db:.1f} dB)" for s in ranking[:5])
        + f" ... of {len(ranking)} quantised layers"
    )
    limit = max(1, int(len(ranking) * MAX_KEPT_FRACTION))
    return search(ranking, evaluate, reporter, max_kept=limit, budget_s=options.calibration.search_budget_s)


def int8_onnxruntime(
    model: onnx.ModelProto,
    calibration: Dataset,
    options: BuildOptions,
    batchable: bool,
    reference: RunFn,
    reporter: Reporter,
    record: StageRecord,
) -> onnx.ModelProto:
    quantizer = OrtQuantizer(model, calibration, options.calibration, batchable, reporter, record)
    try:
        full = quantizer.quantize()
        chosen, kept = full, 0
        if options.calibration.mixed_precision:
            chosen, kept = _ort_search(
                model, full, quantizer, calibration, options, reference, reporter, record
            )
        else:
            record_search(record, None, "off")
        describe(chosen, record, len(quantizer.base_excluded) + kept)
        return chosen
    finally:
        quantizer.close()


def _ort_search(
    model: onnx.ModelProto,
    full: onnx.ModelProto,
    quantizer: OrtQuantizer,
    calibration: Dataset,
    options: BuildOptions,
    reference: RunFn,
    reporter: Reporter,
    record: StageRecord,
) -> tuple[onnx.ModelProto, int]:
    tolerance = options.tolerance_for(Precision.INT8)
    data = SearchData(reference, calibration, options.calibration.search_samples, tolerance)
    evaluate, models = memoized_evaluator(full, quantizer.quantize, data, _ort_runner)
    if evaluate([]).passed:
        record_search(record, None, "not needed (all-INT8 passes on the search samples)")
        return full, 0
    reporter.note("all-INT8 fails on the search samples: ranking layer sensitivity")
    ranking = rank_layers(model, full, quantizer.layers(full), calibration.take(RANK_SAMPLES))
    result = run_search(ranking, evaluate, options, reporter)
    record_search(record, result)
    # none passed: the most faithful mix tried, for the gate to report on
    return models[tuple(k.name for k in result.kept)], len(result.kept)


def _ort_runner(model: onnx.ModelProto) -> RunFn:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Sample) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def proxy_ranking(
    model: onnx.ModelProto, calibration: Dataset, options: BuildOptions, batchable: bool, reporter: Reporter
) -> list[LayerSensitivity]:
    """Layer sensitivity measured on an ONNX Runtime QDQ model (min-max ranges: quick) for targets whose
    quantiser cannot show its intermediate tensors (OpenVINO): the layers are the same ONNX nodes, measured in
    float QDQ arithmetic (ONNX Runtime's integer kernels are not the target's)."""
    calib = dataclasses.replace(options.calibration, method=CalibrationMethod.MINMAX, reduce_range=False)
    quantizer = OrtQuantizer(model, calibration, calib, batchable, reporter, StageRecord("proxy"))
    try:
        full = quantizer.quantize()
        return rank_layers(model, full, quantizer.layers(full), calibration.take(RANK_SAMPLES), kernels=False)
    finally:
        quantizer.close()
