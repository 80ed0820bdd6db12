"""Stage 1, parse and check: load the source (ONNX, or TorchScript / exported program through the torch
extra), run the ONNX checker and shape inference, and make sure ONNX Runtime has a kernel for every op."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from kiln.builder.report import StageRecord
from kiln.errors import InvalidArgumentError, MissingDependencyError

TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".torchscript")
MIN_OPSET = 7


def model_stats(model: onnx.ModelProto) -> dict[str, int | float]:
    return {
        "nodes": len(model.graph.node),
        "initializers": len(model.graph.initializer),
        "size_mb": round(model.ByteSize() / 1e6, 3),
    }


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(counts.most_common())


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def load_source(
    source: Path, example_shapes: dict[str, tuple[int, ...]], record: StageRecord
) -> onnx.ModelProto:
    source = Path(source)
    if not source.is_file():
        raise InvalidArgumentError(f"model file {source} does not exist")
    if source.suffix in TORCH_SUFFIXES:
        model = export_torch(source, example_shapes, record)
    elif source.suffix == ".onnx":
        try:
            model = onnx.load(str(source))
        except Exception as e:
            raise InvalidArgumentError(f"{source} is not a readable ONNX model: {e}") from None
    else:
        raise InvalidArgumentError(
            f"{source.name}: unsupported model format '{source.suffix}'; kiln build takes .onnx, or with the "
            f"torch extra {', '.join(TORCH_SUFFIXES)} (TorchScript or torch.export programs)"
        )
    return check(model, record)


def check(model: onnx.ModelProto, record: StageRecord) -> onnx.ModelProto:
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise InvalidArgumentError(
            f"the model uses ONNX opset {opset}; kiln build needs opset >= {MIN_OPSET}"
        )
    if opset > onnx.defs.onnx_opset_version():
        raise InvalidArgumentError(
            f"the model uses ONNX opset {opset}, newer than this onnx {onnx.__version__} knows "
            f"({onnx.defs.onnx_opset_version()})"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise InvalidArgumentError(f"the ONNX checker rejected the model: {e}") from None
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as e:
        raise InvalidArgumentError(f"ONNX shape inference failed: {e}") from None
    _check_runtime_kernels(model)
    record.details.update(model_stats(model))
    record.details["opset"] = opset
    inits = {i.name for i in model.graph.initializer}
    record.details["inputs"] = sum(1 for i in model.graph.input if i.name not in inits)
    record.details["outputs"] = len(model.graph.output)
    record.details["ops"] = op_histogram(model)
    return model


def _check_runtime_kernels(model: onnx.ModelProto) -> None:
    """Load the model in ONNX Runtime without optimisation: unsupported ops/opsets fail here, named."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        text = str(e)
        if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
            raise InvalidArgumentError(
                f"ONNX Runtime has no kernel for an operator of this model: {text}"
            ) from None
        raise InvalidArgumentError(f"ONNX Runtime cannot load the model: {text}") from None


def export_torch(
    source: Path, example_shapes: dict[str, tuple[int, ...]], record: StageRecord
) -> onnx.ModelProto:
    """TorchScript (.pt/.pth/.torchscript) or ``torch.export`` (.pt2) -> ONNX, with a dynamic batch axis."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "PyTorch (needed to build from a TorchScript/exported-program file)", "torch"
        ) from None
    if not example_shapes:
        raise InvalidArgumentError(
            "a PyTorch source needs its example input shapes: --shapes input:1x3x224x224 (in forward() order)"
        )
    names = list(example_shapes)
    args = tuple(torch.randn(*shape) for shape in example_shapes.values())
    if source.suffix == ".pt2":
        program = torch.export.load(str(source))
        module: object = program
        dynamo = True
    else:
        try:
            module = torch.jit.load(str(source), map_location="cpu")
        except Exception as e:
            raise InvalidArgumentError(
                f"{source.name} is not a TorchScript file ({e}); save an nn.Module with torch.jit.save, "
                "or a torch.export program as .pt2"
            ) from None
        dynamo = False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        kwargs: dict[str, object] = {"input_names": names, "dynamo": dynamo, "opset_version": 17}
        if not dynamo:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in names}
        try:
            torch.onnx.export(module, args, str(out), **kwargs)
        except Exception as e:
            raise InvalidArgumentError(f"exporting {source.name} to ONNX failed: {e}") from None
        model = onnx.load(str(out))
    record.details["exported_from"] = "torch.export" if dynamo else "torchscript"
    record.details["torch"] = torch.__version__
    return model
