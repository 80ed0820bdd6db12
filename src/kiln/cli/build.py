"""``kiln build``: parse flags into :class:`kiln.builder.BuildOptions` and call :func:`kiln.builder.build`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="compile a model into an optimised, quantised, accuracy-checked artifact in a model repository",
        description="Parse and check MODEL, optimise its graph, lower its precision (FP16, or INT8 with "
        "calibration), check the accuracy against the FP32 reference, and write REPO/NAME/<version>/ with a "
        "generated config.pbtxt and build.json. Fails (exit 1, nothing written) when the accuracy gate fails.",
    )
    p.add_argument("model", type=Path, help="an .onnx file, or with the torch extra a TorchScript/.pt2 file")
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="REPO/NAME", help="model folder to write"
    )
    p.add_argument("--precision", choices=["fp32", "fp16", "int8", "best"], default="fp32")
    p.add_argument("--target", choices=["onnxruntime", "openvino", "ncnn"], default="onnxruntime")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="gpu: CUDA/TensorRT providers")
    cal = p.add_argument_group("calibration (INT8)")
    cal.add_argument(
        "--calibration-data", type=Path, metavar="DIR", help="folder of .npy/.npz files or images"
    )
    cal.add_argument("--calibration-method", choices=["entropy", "minmax", "percentile"])
    cal.add_argument(
        "--preprocessing",
        choices=["none", "unit", "inception", "vgg", "imagenet"],
        help="how images are scaled (unit: x/255, inception: x/127.5-1, vgg: BGR minus means, imagenet: "
        "mean/std); required for image folders unless recorded for the model folder",
    )
    cal.add_argument("--calibration-samples", type=int, default=256, help="at most this many (default 256)")
    cal.add_argument("--percentile", type=float, default=99.999, help="for --calibration-method percentile")
    cal.add_argument(
        "--per-tensor", action="store_true", help="per-tensor weight scales (default per-channel)"
    )
    cal.add_argument(
        "--reduce-range",
        choices=["auto", "on", "off"],
        default="auto",
        help="ONNX Runtime INT8: 7-bit weights (auto: on when the CPU lacks VNNI, whose U8S8 kernels saturate)",
    )
    cal.add_argument("--keep-fp32", nargs="+", default=[], metavar="NODE", help="node names or op types")
    cal.add_argument(
        "--quantize-op-types",
        nargs="+",
        default=[],
        metavar="OP",
        help="op types to quantise (default: all but Softmax; MatMul and Gemm for transformers)",
    )
    cal.add_argument(
        "--no-mixed-precision",
        action="store_true",
        help="INT8: don't keep the most sensitive layers in float when all-INT8 fails the gate",
    )
    cal.add_argument(
        "--search-budget", type=float, default=600.0, metavar="S", help="mixed-precision search bound (s)"
    )
    acc = p.add_argument_group("accuracy gate")
    acc.add_argument(
        "--validation-data", type=Path, metavar="DIR", help="default: a hold-out of the calibration data"
    )
    acc.add_argument(
        "--validation-labels", type=Path, metavar="FILE", help="one class per validation sample (.npy, .txt)"
    )
    acc.add_argument(
        "--validation-samples", type=int, default=128, help="random samples when no data is given"
    )
    acc.add_argument(
        "--min-validation-samples",
        type=int,
        default=100,
        metavar="N",
        help="the gate refuses to pass on fewer samples (default 100; 0 allows any)",
    )
    acc.add_argument(
        "--tolerance",
        default="",
        metavar="K=V,...",
        help="cosine=, rel=, abs=, top1=, accuracy_drop= (points); over the precision's defaults",
    )
    acc.add_argument(
        "--accept-accuracy-drop", action="store_true", help="write the artifact even if it fails"
    )
    shp = p.add_argument_group("shapes")
    shp.add_argument("--shapes", default="", metavar="NAME:DxD,...", help="fixed shapes (all three profiles)")
    shp.add_argument("--min-shapes", default="", metavar="NAME:DxD,...")
    shp.add_argument("--opt-shapes", default="", metavar="NAME:DxD,...")
    shp.add_argument("--max-shapes", default="", metavar="NAME:DxD,...")
    shp.add_argument("--max-batch-size", type=int, help="default: the max profile's batch, else 8")
    out = p.add_argument_group("output")
    out.add_argument("--threads", type=int, help="intra-op threads written to config.pbtxt")
    out.add_argument("--version", type=int, help="version folder to write (default: the next free one)")
    out.add_argument(
        "--labels", type=Path, metavar="FILE", help="class names, one a line: copied in, sets label_filename"
    )
    out.add_argument("--no-optimize", action="store_true", help="skip graph optimisation")
    out.add_argument("--fp16-io", action="store_true", help="FP16 inputs/outputs too (default: keep FP32)")
    out.add_argument(
        "--no-benchmark", action="store_true", help="don't time batch sizes for dynamic_batching"
    )
    out.add_argument("--no-progress", action="store_true")
    cmp = p.add_argument_group("compare (after the build)")
    cmp.add_argument(
        "--compare",
        action="store_true",
        help="time the source and the artifact side by side (as kiln bench --compare); recorded in build.json",
    )
    cmp.add_argument("--compare-batch", type=int, help="default: the largest preferred batch size, else 8")
    cmp.add_argument("--compare-duration", type=float, default=4.0, help="seconds of timed runs each (4)")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> Any:
    from kiln.builder import (
        BuildOptions,
        CalibrationMethod,
        CalibrationOptions,
        Device,
        Precision,
        Preprocessing,
        ShapeProfile,
        Target,
        Tolerance,
        parse_shape_spec,
    )

    precision = Precision(args.precision)
    if args.shapes:
        fixed = parse_shape_spec(args.shapes)
        profile = ShapeProfile(
            {**fixed, **parse_shape_spec(args.min_shapes)},
            {**fixed, **parse_shape_spec(args.opt_shapes)},
            {**fixed, **parse_shape_spec(args.max_shapes)},
        )
    else:
        profile = ShapeProfile(
            parse_shape_spec(args.min_shapes),
            parse_shape_spec(args.opt_shapes),
            parse_shape_spec(args.max_shapes),
        )
    tolerance = None
    if args.tolerance:
        base = Tolerance.default_for(precision if precision is not Precision.BEST else Precision.INT8)
        tolerance = Tolerance.parse(args.tolerance, base)
    return BuildOptions(
        source=args.model,
        output=args.output,
        precision=precision,
        target=Target(args.target),
        device=Device(args.device),
        calibration=CalibrationOptions(
            data=args.calibration_data,
            method=CalibrationMethod(args.calibration_method) if args.calibration_method else None,
            preprocessing=Preprocessing(args.preprocessing) if args.preprocessing else None,
            max_samples=args.calibration_samples,
            per_channel=not args.per_tensor,
            reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range],
            percentile=args.percentile,
            keep_fp32=tuple(args.keep_fp32),
            op_types=tuple(args.quantize_op_types),
            mixed_precision=not args.no_mixed_precision,
            search_budget_s=args.search_budget,
        ),
        validation_data=args.validation_data,
        validation_labels=args.validation_labels,
        validation_samples=args.validation_samples,
        min_validation_samples=args.min_validation_samples,
        tolerance=tolerance,
        accept_accuracy_drop=args.accept_accuracy_drop,
        profile=profile,
        example_shapes=parse_shape_spec(args.shapes),
        fp16_keep_io_types=not args.fp16_io,
        optimize=not args.no_optimize,
        max_batch_size=args.max_batch_size,
        threads=args.threads,
        version=args.version,
        labels=args.labels,
        benchmark=not args.no_benchmark,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from kiln.builder import build
    from kiln.errors import KilnError

    console = Console(stderr=True, highlight=False)
    try:
        result = build(options_from_args(args))
    except KilnError as e:
        console.print(f"[red]kiln build failed:[/red] {escape(e.message)}", soft_wrap=True)
        return 1
    console.print(
        f"[green]built[/green] {result.artifact} ({result.precision.value}); config {result.model_dir}/config.pbtxt, "
        f"manifest {result.version_dir}/build.json",
        soft_wrap=True,
    )
    if args.compare:
        from kiln.builder import parse_shape_spec
        from kiln.builder.compare import compare_with_source
        from kiln.perf.report import print_results

        try:
            results = compare_with_source(
                result,
                args.model,
                args.compare_batch,
                args.compare_duration,
                shapes=parse_shape_spec(args.shapes),
            )
        except KilnError as e:
            console.print(f"[red]kiln build --compare failed:[/red] {escape(e.message)}", soft_wrap=True)
            return 1
        print_results(results)
    return 0
