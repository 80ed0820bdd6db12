"""The ncnn target: ONNX -> ncnn ``model.param`` + ``model.bin`` with ``pnnx`` (the converter binary the ``pnnx``
wheel ships, run directly so that nothing imports torch). Imported only when ``--target ncnn`` is asked for.

pnnx names the net's blobs ``in0, in1, ...`` / ``out0, out1, ...`` in the graph's input/output order; they are
renamed back to the ONNX names, so the artifact serves the tensor names of its source (as the other targets do)
and the accuracy gate compares output by output. Each ``Input`` layer gets its per-sample shape (``0=w 1=h 11=d
2=c``) when the source fixes it, so the served model auto-completes its config from the param file. FP32 keeps
FP32 weights; FP16 stores the weights in FP16 (pnnx ``fp16=1``), widened to FP32 when ncnn loads them. ncnn INT8
needs ncnn2table/ncnn2int8, which no PyPI wheel ships, so it is refused.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import onnx

from kiln.builder.data import InputSpec, graph_inputs
from kiln.builder.options import Precision
from kiln.builder.profiles import ResolvedProfile
from kiln.builder.report import StageRecord
from kiln.config.schema import model_config_pb2
from kiln.errors import InvalidArgumentError, MissingDependencyError

PNNX_TIMEOUT_S = 600
_BLOB_NAME = re.compile(r"^\S{1,255}$")  # ncnn reads blob names with %255s


def pnnx_executable() -> Path:
    """The converter binary inside the installed ``pnnx`` package (found without importing it: it imports torch)."""
    spec = importlib.util.find_spec("pnnx")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        exe = Path(folder) / "pnnx"
        if exe.is_file():
            return exe
    raise MissingDependencyError("pnnx (the ONNX/TorchScript to ncnn converter)", "ncnn")


def check_tools(precision: Precision) -> None:
    """Fail before any work when ncnn or pnnx is missing, or for a precision the target cannot build."""
    from kiln.backends.ncnn import import_ncnn

    _check_precision(precision)
    import_ncnn()
    pnnx_executable()


def _check_precision(precision: Precision) -> None:
    if precision is Precision.INT8:
        raise InvalidArgumentError(
            "--target ncnn builds FP32 or FP16 (FP16-stored weights); ncnn INT8 needs ncnn2table/ncnn2int8, "
            "which the ncnn and pnnx wheels do not ship"
        )


def output_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph's outputs with their (possibly dynamic, -1) shapes, as FP32."""
    import numpy as np

    specs = []
    for vi in model.graph.output:
        dims = vi.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)
        specs.append(InputSpec(vi.name, np.dtype(np.float32), shape))
    return specs


def build_ncnn(
    model: onnx.ModelProto,
    precision: Precision,
    profile: ResolvedProfile,
    out_dir: Path,
    record: StageRecord,
) -> Path:
    """Write ``out_dir/model.param`` + ``model.bin`` at ``precision``; return the .param path."""
    _check_precision(precision)
    inputs = graph_inputs(model)
    outputs = output_specs(model)
    _check_io(model, inputs, outputs)
    exe = pnnx_executable()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir.parent / f"{out_dir.name}.pnnx"
    scratch.mkdir()
    try:
        src = scratch / "source.onnx"
        onnx.save(model, str(src))
        shapes = [profile.opt_shapes[i.name] for i in inputs]
        max_shapes = [profile.profile.max.get(i.name) or profile.opt_shapes[i.name] for i in inputs]
        command = [
            str(exe),
            str(src),
            "inputshape=" + _shape_arg(shapes),
            "device=cpu",
            "optlevel=2",
            f"fp16={1 if precision is Precision.FP16 else 0}",
            *(f"{key}={scratch / name}" for key, name in _PNNX_OUTPUTS.items()),
        ]
        if profile.max_batch_size > 0:  # a second shape keeps the batch (and any profiled dims) dynamic
            command.append("inputshape2=" + _shape_arg([(2, *s[1:]) for s in max_shapes]))
        try:
            done = subprocess.run(
                command, cwd=scratch, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise InvalidArgumentError(f"pnnx did not finish within {PNNX_TIMEOUT_S}s") from None
        param, weights = scratch / "model.ncnn.param", scratch / "model.ncnn.bin"
        if done.returncode != 0 or not param.is_file() or not weights.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise InvalidArgumentError(
                f"pnnx could not convert the model to ncnn (exit {done.returncode}): {tail}"
            )
        text, layers = _rename(param.read_text(), inputs, outputs)
        target = out_dir / "model.param"
        target.write_text(text)
        shutil.move(str(weights), out_dir / "model.bin")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record.details["ncnn_layers"] = layers
    record.details["fp16_weights"] = precision is Precision.FP16
    record.details["pnnx"] = importlib.metadata.version("pnnx")
    record.details["ncnn"] = importlib.metadata.version("ncnn")
    return target


# ncnn Input layer params by per-sample rank: 0=w 1=h 11=d 2=c
_SHAPE_KEYS = {1: ("0",), 2: ("1", "0"), 3: ("2", "1", "0"), 4: ("2", "11", "1", "0")}
_PNNX_OUTPUTS = {
    "pnnxparam": "model.pnnx.param",
    "pnnxbin": "model.pnnx.bin",
    "pnnxpy": "model_pnnx.py",
    "pnnxonnx": "model.pnnx.onnx",
    "ncnnparam": "model.ncnn.param",
    "ncnnbin": "model.ncnn.bin",
    "ncnnpy": "model_ncnn.py",
}


def candidate_config(
    model: onnx.ModelProto, profile: ResolvedProfile, threads: int | None
) -> model_config_pb2.ModelConfig:
    """The config the candidate runs with: the source's inputs and outputs declared (so outputs are reshaped to
    the source's dims), the build's batch limit and threads."""
    from kiln.perf.runners import model_config

    config = model_config("ncnn", threads=threads)
    config.max_batch_size = profile.max_batch_size
    skip = 1 if profile.max_batch_size > 0 else 0
    for entries, specs in ((config.input, graph_inputs(model)), (config.output, output_specs(model))):
        for spec in specs:
            entries.add(name=spec.name, data_type=model_config_pb2.TYPE_FP32, dims=list(spec.shape[skip:]))
    return config


def _check_io(model: onnx.ModelProto, inputs: Sequence[InputSpec], outputs: Sequence[InputSpec]) -> None:
    import numpy as np

    for spec in inputs:
        if spec.dtype != np.float32:
            raise InvalidArgumentError(f"--target ncnn takes FP32 inputs only; '{spec.name}' is {spec.dtype}")
    for vi in model.graph.output:
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise InvalidArgumentError(f"--target ncnn gives FP32 outputs only; '{vi.name}' is not FP32")
    for spec in [*inputs, *outputs]:
        if not _BLOB_NAME.match(spec.name):
            raise InvalidArgumentError(
                f"'{spec.name}' cannot be an ncnn blob name (no spaces, at most 255 characters)"
            )
    for spec in [*inputs, *(o for o in outputs if o.shape)]:  # an output of unknown rank: the gate checks it
        if not spec.batched:
            raise InvalidArgumentError(
                f"--target ncnn needs a leading batch (sample) dimension on every input and output (ncnn runs one "
                f"sample at a time); '{spec.name}' has shape {list(spec.shape)}"
            )
        if not 2 <= len(spec.shape) <= 5:
            raise InvalidArgumentError(
                f"'{spec.name}' has rank {len(spec.shape)}; ncnn holds 1 to 4 dimensions besides the batch"
            )


def _shape_arg(shapes: Sequence[tuple[int, ...]]) -> str:
    return ",".join("[" + ",".join(str(d) for d in shape) + "]f32" for shape in shapes)


def _rename(text: str, inputs: Sequence[InputSpec], outputs: Sequence[InputSpec]) -> tuple[str, int]:
    """pnnx's ``inN``/``outN`` blobs back to the source's names (other blobs that would clash get a suffix), and
    each Input layer's fixed per-sample shape as its params. Returns the text and the layer count."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise InvalidArgumentError("pnnx wrote an ncnn param file Kiln cannot read")
    renames = {f"in{i}": s.name for i, s in enumerate(inputs)}
    renames.update({f"out{i}": s.name for i, s in enumerate(outputs)})
    shapes = {s.name: s.shape[1:] for s in inputs}
    layers = [line.split() for line in lines[2:] if line.strip()]
    blobs = {b for parts in layers for b in parts[4 : 4 + int(parts[2]) + int(parts[3])]}
    missing = sorted(set(renames) - blobs)
    if missing:
        raise InvalidArgumentError(
            f"pnnx's ncnn model lacks blobs {missing}: it does not keep the source's inputs/outputs one to one"
        )
    wanted = set(renames.values())
    for blob in blobs - set(renames):
        if blob in wanted:
            renames[blob] = f"{blob}_kiln"
    out = lines[:2]
    for parts in layers:
        n = 4 + int(parts[2]) + int(parts[3])
        parts[4:n] = [renames.get(b, b) for b in parts[4:n]]
        if parts[0] == "Input" and len(parts) == n:
            shape = shapes.get(parts[n - 1], ())
            if shape and all(d > 0 for d in shape):
                parts += [f"{k}={d}" for k, d in zip(_SHAPE_KEYS[len(shape)], shape, strict=True)]
        out.append(" ".join(parts))
    return "\n".join(out) + "\n", len(layers)
