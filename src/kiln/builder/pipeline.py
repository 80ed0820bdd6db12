"""``kiln build``: parse -> optimise -> precision -> profiles -> accuracy gate -> write, each stage reported."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from kiln.builder import parse
from kiln.builder.accuracy import AccuracyGateError, AccuracyReport, compare, gate
from kiln.builder.data import Dataset, graph_inputs, is_image_folder
from kiln.builder.datasets import load_datasets, with_recorded_preprocessing
from kiln.builder.devices import device_check
from kiln.builder.manifest import manifest as make_manifest
from kiln.builder.merge import (
    PREPROCESSING_KEY,
    ExistingModel,
    add_labels,
    copy_labels,
    merge_config,
    read_existing,
)
from kiln.builder.optimize import OptimizationLevel, optimize
from kiln.builder.options import BuildOptions, Device, Precision, Target
from kiln.builder.profiles import ResolvedProfile, resolve_profile
from kiln.builder.report import Reporter
from kiln.builder.speed import SpeedReport, measure_batches
from kiln.builder.write import (
    ConfigSpec,
    config_text,
    install,
    make_config,
    next_version,
    remove,
    staging_dir,
)
from kiln.config.schema import model_config_pb2
from kiln.errors import InvalidArgumentError
from kiln.perf.runners import GpuOptions, Runner, model_config, open_model


@dataclass
class Candidate:
    precision: Precision
    files: Path  # a folder holding model.onnx or model.xml (+ .bin)
    runner: Runner
    accuracy: AccuracyReport | None = None
    speed: SpeedReport | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.accuracy is not None and self.accuracy.passed


@dataclass
class BuildResult:
    model_dir: Path
    version_dir: Path
    artifact: Path
    precision: Precision
    manifest: dict[str, Any]
    accuracy: AccuracyReport
    config_text: str
    max_batch_size: int  # 0: the model has no batch dimension


def build(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Build ``options.source`` into ``options.output`` (REPO/NAME). Raises AccuracyGateError, with nothing
    written, when the artifact is outside the tolerance (unless ``accept_accuracy_drop``)."""
    reporter = reporter or Reporter(progress=options.progress)
    started = time.time()
    output = Path(options.output)
    if not output.name or output.name.startswith("."):
        raise InvalidArgumentError(f"-o {output}: expected REPO/NAME, the model folder to write")
    gpu = device_check(options)
    version = next_version(output, options.version)
    existing = read_existing(output)

    with reporter.stage("parse") as record:
        source = parse.load_source(options.source, options.example_shapes, record)
    inputs = graph_inputs(source)
    with reporter.stage("profiles") as record:
        max_batch = options.max_batch_size
        if max_batch is None and existing.config is not None and existing.config.max_batch_size > 0:
            max_batch = existing.config.max_batch_size  # the user's, unless --max-batch-size overrides it
        profile = resolve_profile(inputs, options.profile, max_batch, record)
    batch = 8 if profile.max_batch_size >= 8 else max(1, profile.max_batch_size)
    with reporter.stage("data") as record:
        options = with_recorded_preprocessing(options, existing, record)
        calibration, validation = load_datasets(options, inputs, profile, record)

    work = Path(tempfile.mkdtemp(prefix="kiln-build-"))
    try:
        with reporter.stage("optimise") as record:
            base = optimize(source, OptimizationLevel.BASIC, record) if options.optimize else source
        reference = open_model(
            "onnxruntime",
            source.SerializeToString(),
            model_config("onnxruntime", threads=options.threads),
            name="fp32 reference",
        )
        precisions = (
            [options.precision]
            if options.precision is not Precision.BEST
            else _best_candidates(calibration, options.target)
        )
        fused: list[onnx.ModelProto] = []  # the extended-level model, made once if an FP32 CPU build needs it
        candidates = []
        for precision in precisions:
            model = _model_for(precision, source, base, fused, options, reporter)
            candidate = _make_candidate(
                precision, model, calibration, profile, options, work, reporter, gpu, reference
            )
            _check_accuracy(candidate, reference, validation, batch, options, reporter)
            if options.benchmark or options.precision is Precision.BEST:
                with reporter.stage(f"speed {precision.value}") as record:
                    candidate.speed = measure_batches(candidate.runner, profile, reporter)
                    record.details.update(candidate.speed.summary())
            candidates.append(candidate)
        chosen = _choose(candidates, options, reporter)
        return _write(chosen, candidates, source, profile, options, version, started, reporter, existing)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _model_for(
    precision: Precision,
    source: onnx.ModelProto,
    base: onnx.ModelProto,
    fused: list[onnx.ModelProto],
    options: BuildOptions,
    reporter: Reporter,
) -> onnx.ModelProto:
    """FP32 for ONNX Runtime on CPU gets the extended-level fusions (contrib ops); everything else starts from
    the basic-level model (standard ops only: what the FP16 converter, the quantiser and OpenVINO take)."""
    cpu_fp32 = (
        precision is Precision.FP32 and options.target is Target.ONNXRUNTIME and options.device is Device.CPU
    )
    if not (cpu_fp32 and options.optimize):
        return base
    if not fused:
        with reporter.stage("fuse") as record:
            fused.append(optimize(source, OptimizationLevel.EXTENDED, record))
    return fused[0]


def _check_accuracy(
    candidate: Candidate,
    reference: Runner,
    validation: Dataset,
    batch: int,
    options: BuildOptions,
    reporter: Reporter,
) -> None:
    with reporter.stage(f"accuracy {candidate.precision.value}") as record:
        candidate.accuracy = compare(reference.run, candidate.runner.run, validation, batch, reporter)
        tolerance = options.tolerance_for(candidate.precision)
        failures = gate(candidate.accuracy, tolerance, options.min_validation_samples)
        record.failed = bool(failures)
        record.details["samples"] = candidate.accuracy.samples
        record.details["gate"] = "failed" if failures else "passed"
        reporter.note(candidate.accuracy.summary())
        for failure in failures:
            reporter.note(failure, style="red")
        images = is_image_folder(options.validation_data) or is_image_folder(options.calibration.data)
        if failures and images:
            pre = options.calibration.preprocessing
            reporter.note(
                f"the data are images: check that --preprocessing ({pre.value if pre else 'none given'}) is the "
                "scaling the model was trained with; a wrong one fails the gate like a bad quantisation",
                style="red",
            )


def _best_candidates(calibration: Dataset, target: Target) -> list[Precision]:
    if target is Target.NCNN:
        return [Precision.FP32, Precision.FP16]  # no INT8 for ncnn (see kiln.builder.ncnn)
    if len(calibration) == 0:
        raise InvalidArgumentError("--precision best tries INT8 too, which needs --calibration-data")
    return [Precision.FP32, Precision.FP16, Precision.INT8]


def _make_candidate(
    precision: Precision,
    model: onnx.ModelProto,
    calibration: Dataset,
    profile: ResolvedProfile,
    options: BuildOptions,
    work: Path,
    reporter: Reporter,
    gpu: GpuOptions | None,
    reference: Runner,
) -> Candidate:
    folder = work / precision.value
    folder.mkdir()
    batchable = profile.max_batch_size > 0
    with reporter.stage(f"precision {precision.value}") as record:
        if options.target is Target.OPENVINO:
            from kiln.builder.openvino import build_ir

            xml = build_ir(
                model, precision, calibration, options, batchable, folder, reporter, record, reference.run
            )
            ov_precision = _ov_precision(precision)
            config = model_config(
                "openvino",
                threads=options.threads,
                parameters={"inference_precision": ov_precision} if ov_precision else None,
            )
            runner = open_model("openvino", xml, config, name=f"openvino {precision.value}")
        elif options.target is Target.NCNN:
            from kiln.builder.ncnn import build_ncnn, candidate_config

            param = build_ncnn(model, precision, profile, folder, record)
            config = candidate_config(model, profile, options.threads)
            runner = open_model("ncnn", param, config, name=f"ncnn {precision.value}")
        else:
            from kiln.builder import precision as prec
            from kiln.builder.mixed import int8_onnxruntime

            if precision is Precision.FP16:
                model = prec.to_fp16(model, options.fp16_keep_io_types, options.calibration.keep_fp32, record)
            elif precision is Precision.INT8:
                model = int8_onnxruntime(
                    model, calibration, options, batchable, reference.run, reporter, record
                )
            path = folder / "model.onnx"
            onnx.save(model, str(path))
            config = model_config("onnxruntime", threads=options.threads, gpu=gpu)
            runner = open_model("onnxruntime", path, config, name=f"onnxruntime {precision.value}")
            record.details["nodes"] = len(model.graph.node)
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        record.details["size_mb"] = round(size / 1e6, 3)
    return Candidate(precision, folder, runner, details=dict(record.details))


def _choose(candidates: list[Candidate], options: BuildOptions, reporter: Reporter) -> Candidate:
    if options.precision is Precision.BEST:
        passing = [c for c in candidates if c.passed]
        if not passing:
            if not options.accept_accuracy_drop:
                raise AccuracyGateError(
                    "no precision passed the accuracy gate; nothing was written: "
                    + " | ".join(
                        f"{c.precision.value}: {'; '.join(c.accuracy.failures)}"
                        for c in candidates
                        if c.accuracy
                    )
                )
            passing = candidates
            reporter.warn(
                "no precision passed the accuracy gate; writing the fastest (--accept-accuracy-drop)"
            )
        return max(passing, key=lambda c: c.speed.best_throughput if c.speed else 0.0)
    (candidate,) = candidates
    if not candidate.passed and not options.accept_accuracy_drop:
        assert candidate.accuracy is not None
        raise AccuracyGateError(
            f"{candidate.precision.value} artifact failed the accuracy gate; nothing was written: "
            + "; ".join(candidate.accuracy.failures)
            + " (loosen --tolerance or pass --accept-accuracy-drop)"
        )
    if not candidate.passed:
        assert candidate.accuracy is not None
        reporter.warn(
            f"writing the {candidate.precision.value} artifact although it failed the accuracy gate "
            f"(--accept-accuracy-drop): {'; '.join(candidate.accuracy.failures)}; recorded in build.json"
        )
    return candidate


def _write(
    chosen: Candidate,
    candidates: list[Candidate],
    source: onnx.ModelProto,
    profile: ResolvedProfile,
    options: BuildOptions,
    version: int,
    started: float,
    reporter: Reporter,
    existing: ExistingModel,
) -> BuildResult:
    output = Path(options.output)
    assert chosen.accuracy is not None
    with reporter.stage("write") as record:
        config = make_config(_config_spec(chosen, profile, options))
        pre = options.calibration.preprocessing
        if pre is not None and (
            is_image_folder(options.calibration.data) or is_image_folder(options.validation_data)
        ):
            config.parameters[PREPROCESSING_KEY].string_value = pre.value  # recorded for the next build
        config, changes = merge_config(config, existing.config)
        labels = add_labels(config, options.labels, output, changes) if options.labels else None
        staged = staging_dir(output)
        try:
            version_dir = staged / str(version)
            shutil.copytree(chosen.files, version_dir)
            if options.target is Target.OPENVINO:
                _warm_cache(version_dir, output, config)
            artifact = version_dir / _ARTIFACTS.get(options.target, "model.onnx")
            manifest = make_manifest(
                chosen, candidates, source, artifact, options, version, started, reporter, changes
            )
            if labels is not None:
                output.mkdir(parents=True, exist_ok=True)
                copy_labels(options.labels, labels)  # type: ignore[arg-type]
            target = install(
                version_dir, output, version, config, manifest, merged=existing.config is not None
            )
        finally:
            remove(staged)
        record.details["path"] = str(target)
        record.details["precision"] = chosen.precision.value
        if existing.config is not None:
            record.details["config"] = (
                f"merged into the existing config.pbtxt, {len(changes)} field change(s)"
            )
            for change in changes:
                reporter.note(f"config.pbtxt: {change}")
    return BuildResult(
        output,
        target,
        target / artifact.name,
        chosen.precision,
        manifest,
        chosen.accuracy,
        config_text(config),
        config.max_batch_size,
    )


def _config_spec(chosen: Candidate, profile: ResolvedProfile, options: BuildOptions) -> ConfigSpec:
    speed = chosen.speed
    return ConfigSpec(
        name=Path(options.output).name,
        target=options.target,
        device=options.device,
        precision=chosen.precision,
        inputs=chosen.runner.inputs,
        outputs=chosen.runner.outputs,
        max_batch_size=profile.max_batch_size,
        preferred_batch_sizes=speed.preferred_batch_sizes if speed else (),
        max_queue_delay_us=speed.queue_delay_us if speed else 500,
        threads=options.threads,
        inference_precision=_ov_precision(chosen.precision) if options.target is Target.OPENVINO else None,
        profile_min=options.profile.min or None,
        profile_opt=options.profile.opt or None,
        profile_max=options.profile.max or None,
    )


_ARTIFACTS = {Target.OPENVINO: "model.xml", Target.NCNN: "model.param"}


def _ov_precision(precision: Precision) -> str | None:
    return "f32" if precision is Precision.FP32 else None


def _warm_cache(version_dir: Path, model_dir: Path, config: model_config_pb2.ModelConfig) -> None:
    """Compile once, with the generated config (so the compile properties are the server's), into the model's
    cache folder so the server's first load reuses the compiled blob."""
    from kiln.builder.write import OV_CACHE_DIR

    warm = model_config_pb2.ModelConfig()
    warm.CopyFrom(config)
    warm.parameters["cache_dir"].string_value = str((model_dir / OV_CACHE_DIR).absolute())
    open_model("openvino", version_dir / "model.xml", warm).close()
