"""kiln build through every stage on small models: structure of the artifacts, the accuracy gate, the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from build_models import conv_net, mlp, save, transformer_block, write_samples
from kiln.builder import (
    AccuracyGateError,
    BuildOptions,
    CalibrationMethod,
    CalibrationOptions,
    Precision,
    ShapeProfile,
    Tolerance,
    build,
)
from kiln.config import load_config
from kiln.errors import InvalidArgumentError, KilnError


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("build")
    save(conv_net(), root, "conv.onnx")
    save(mlp(), root, "mlp.onnx")
    save(transformer_block(), root, "block.onnx")
    write_samples(root / "conv_cal", "x", (3, 16, 16), 50)
    write_samples(root / "mlp_cal", "features", (32,), 80, seed=1)
    write_samples(root / "block_cal", "hidden", (6, 32), 40, seed=2)
    return root


def _options(work: Path, model: str, out: str, **kw: object) -> BuildOptions:
    cal = kw.pop("calibration", None) or CalibrationOptions(data=work / f"{model}_cal")
    return BuildOptions(
        source=work / f"{model}.onnx",
        output=work / "repo" / out,
        calibration=cal,  # type: ignore[arg-type]
        benchmark=bool(kw.pop("benchmark", False)),
        progress=False,
        min_validation_samples=int(kw.pop("min_validation_samples", 2)),  # type: ignore[call-overload]
        **kw,  # type: ignore[arg-type]
    )


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_fp32_build_fuses_and_writes_repository_layout(work: Path) -> None:
    result = build(_options(work, "conv", "conv_fp32", benchmark=True))
    model_dir = work / "repo" / "conv_fp32"
    assert result.version_dir == model_dir / "1"
    assert (model_dir / "1" / "model.onnx").is_file()
    ops = _ops(model_dir / "1" / "model.onnx")
    assert "BatchNormalization" not in ops  # Conv+BN folded
    assert len(ops) < len(conv_net().graph.node)
    config = load_config(model_dir / "config.pbtxt")
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["x"] and list(config.input[0].dims) == [3, 16, 16]
    assert list(config.output[0].dims) == [10]
    assert config.HasField("dynamic_batching")
    assert all(1 < b <= 8 for b in config.dynamic_batching.preferred_batch_size)
    manifest = json.loads((model_dir / "1" / "build.json").read_text())
    source_hash = hashlib.sha256((work / "conv.onnx").read_bytes()).hexdigest()
    assert manifest["source"]["sha256"] == source_hash
    assert (
        manifest["artifact"]["sha256"]
        == hashlib.sha256((model_dir / "1" / "model.onnx").read_bytes()).hexdigest()
    )
    assert manifest["tools"]["onnxruntime"] == ort.__version__
    assert manifest["options"]["precision"] == "fp32"
    assert [s["name"] for s in manifest["stages"]][:5] == ["parse", "profiles", "data", "optimise", "fuse"]
    assert manifest["accuracy"]["failures"] == []
    assert manifest["accuracy"]["outputs"][0]["mean_cosine"] > 0.99999
    assert {b["batch"] for b in manifest["speed"]["batches"]} == {1, 2, 4, 8}
    # a second build goes to the next version, and the first stays
    build(_options(work, "conv", "conv_fp32"))
    assert (model_dir / "2" / "model.onnx").is_file() and (model_dir / "1" / "model.onnx").is_file()


def test_fp16_keeps_fp32_io_and_stores_fp16_weights(work: Path) -> None:
    result = build(_options(work, "conv", "conv_fp16", precision=Precision.FP16))
    model = onnx.load(str(result.artifact))
    inits = [t for t in model.graph.initializer if len(t.dims) > 1]
    assert inits and all(t.data_type == onnx.TensorProto.FLOAT16 for t in inits)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "Cast" in _ops(result.artifact)
    assert result.accuracy.outputs[0].mean_cosine > 0.999


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_int8_is_qdq_with_int8_weights(work: Path, method: CalibrationMethod) -> None:
    result = build(
        _options(
            work, "conv", f"conv_int8_{method.value}", precision=Precision.INT8,
            calibration=CalibrationOptions(data=work / "conv_cal", method=method),
        )
    )  # fmt: skip
    ops = _ops(result.artifact)
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    model = onnx.load(str(result.artifact))
    assert sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8) >= 3
    stage = next(s for s in result.manifest["stages"] if s["name"] == "precision int8")
    assert stage["details"]["method"] == method.value
    assert stage["details"]["calibration_samples"] == 40  # 50 samples, 20 % held out for validation
    assert result.accuracy.samples == 10
    assert result.accuracy.outputs[0].mean_cosine > 0.99


def test_keep_fp32_leaves_a_node_unquantised(work: Path) -> None:
    cal = CalibrationOptions(data=work / "conv_cal", method=CalibrationMethod.MINMAX, keep_fp32=("fc",))
    result = build(_options(work, "conv", "conv_keep", precision=Precision.INT8, calibration=cal))
    model = onnx.load(str(result.artifact))
    inits = {t.name: t for t in model.graph.initializer}
    fc = next(n for n in model.graph.node if n.name == "fc")
    assert fc.op_type == "Gemm"
    assert inits[fc.input[1]].data_type == onnx.TensorProto.FLOAT  # its weights stay FP32, not DQ(int8)
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)  # the convs still are INT8
    with pytest.raises(InvalidArgumentError, match="matches no node"):
        cal = CalibrationOptions(data=work / "conv_cal", keep_fp32=("no_such_node",))
        build(_options(work, "conv", "conv_keep_bad", precision=Precision.INT8, calibration=cal))


def test_gate_failure_writes_nothing(work: Path) -> None:
    tight = Tolerance(min_cosine=0.99999999, max_abs_error=1e-7)
    options = _options(work, "conv", "conv_tight", precision=Precision.INT8, tolerance=tight)
    with pytest.raises(AccuracyGateError, match="failed the accuracy gate"):
        build(options)
    assert not (work / "repo" / "conv_tight").exists()
    assert not [p for p in (work / "repo").iterdir() if p.name.startswith(".")]  # no staging left behind
    # accepted anyway: written, with the failures recorded
    result = build(
        _options(
            work, "conv", "conv_tight", precision=Precision.INT8, tolerance=tight, accept_accuracy_drop=True
        )
    )
    assert result.manifest["accuracy"]["failures"]


def test_labels_give_task_accuracy_and_gate_it(work: Path) -> None:
    rng = np.random.default_rng(5)
    val = work / "labelled"
    val.mkdir()
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(work / "conv.onnx"), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(1)
    labels[:10] = (labels[:10] + 1) % 10  # the FP32 model gets 75 % right
    np.savez(val / "val.npz", x=x, labels=labels)
    result = build(_options(work, "conv", "conv_labels", precision=Precision.INT8, validation_data=val))
    assert result.accuracy.reference_accuracy == pytest.approx(75.0)
    assert abs(result.accuracy.accuracy - 75.0) <= 5.0  # type: ignore[operator]
    assert result.accuracy.samples == 40
    strict = Tolerance(max_accuracy_drop=-1.0)  # demands INT8 beat FP32 by a point: must fail
    with pytest.raises(AccuracyGateError, match="below the FP32 reference"):
        build(
            _options(
                work, "conv", "conv_labels2", precision=Precision.INT8, validation_data=val, tolerance=strict
            )
        )


def test_image_calibration_folder_with_labels(work: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    folder = work / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(12):
        pil.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    (folder / "labels.txt").write_text(" ".join(str(i % 10) for i in range(12)))
    from kiln.builder import Preprocessing
    from kiln.builder.data import graph_inputs, load_dataset

    inputs = graph_inputs(onnx.load(str(work / "conv.onnx")))
    data = load_dataset(folder, inputs, Preprocessing.INCEPTION)
    assert len(data) == 12 and data.labels is not None and list(data.labels[:3]) == [0, 1, 2]
    x = data.take(1)[0]["x"]
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32  # resized to the input, NCHW
    assert -1.0 <= x.min() and x.max() <= 1.0  # INCEPTION scaling
    cal = CalibrationOptions(data=folder, preprocessing=Preprocessing.INCEPTION)
    result = build(_options(work, "conv", "conv_images", precision=Precision.INT8, calibration=cal,
                            accept_accuracy_drop=True))  # fmt: skip
    assert (
        result.accuracy.samples == 2 and result.accuracy.reference_accuracy is not None
    )  # hold-out + labels


def test_mlp_int8(work: Path) -> None:
    result = build(_options(work, "mlp", "mlp_int8", precision=Precision.INT8))
    assert "QuantizeLinear" in _ops(result.artifact)
    assert result.accuracy.outputs[0].top1_agreement is not None
    assert result.accuracy.outputs[0].top1_agreement >= 0.9


def test_transformer_block_fusions_profiles_and_int8(work: Path) -> None:
    profile = ShapeProfile(
        min={"hidden": (1, 1, 32)}, opt={"hidden": (1, 6, 32)}, max={"hidden": (4, 16, 32)}
    )
    fp32 = build(_options(work, "block", "block_fp32", profile=profile))
    fuse = next(s for s in fp32.manifest["stages"] if s["name"] == "fuse")
    assert fuse["details"]["added_ops"], "ONNX Runtime's extended level fused nothing"
    assert "Erf" not in _ops(fp32.artifact)  # the written-out GELU became one fused op
    config = load_config(fp32.model_dir / "config.pbtxt")
    assert config.max_batch_size == 4
    assert list(config.input[0].dims) == [-1, 32]
    assert config.parameters["profile_max_shapes"].string_value == "hidden:4x16x32"
    int8 = build(_options(work, "block", "block_int8", precision=Precision.INT8, profile=profile))
    assert "QuantizeLinear" in _ops(int8.artifact)
    stage = next(s for s in int8.manifest["stages"] if s["name"] == "precision int8")
    assert stage["details"]["op_types"] == "MatMul,Gemm (transformer)"  # the transformer preset
    assert stage["details"]["method"] == "percentile"
    quantized_inputs = {
        n.input[0] for n in onnx.load(str(int8.artifact)).graph.node if n.op_type == "LayerNormalization"
    }
    producers = {o: n.op_type for n in onnx.load(str(int8.artifact)).graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in quantized_inputs)  # LayerNorm stays float
    assert int8.accuracy.outputs[0].mean_cosine > 0.99


def test_best_keeps_the_fastest_passing_candidate(work: Path) -> None:
    result = build(_options(work, "mlp", "mlp_best", precision=Precision.BEST))
    candidates = result.manifest["candidates"]
    assert [c["precision"] for c in candidates] == ["fp32", "fp16", "int8"]
    chosen = next(c for c in candidates if c["chosen"])
    assert chosen["passed"] and chosen["precision"] == result.precision.value
    passing = [c for c in candidates if c["passed"]]
    best = max(max(b["throughput"] for b in c["speed"]["batches"]) for c in passing)
    assert max(b["throughput"] for b in chosen["speed"]["batches"]) == best


def test_extreme_mask_values_stay_fp32(work: Path) -> None:
    """An attention-style mask of finfo.min added to scores: no 8-bit scale fits it, ORT's histogram calibrators
    fail on it; kiln keeps those nodes in FP32 on its own and the build passes."""
    h = onnx.helper
    big = np.finfo(np.float32).min
    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32) * 0.25
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["scores"], name="proj"),
        h.make_node("Sub", ["one", "mask"], ["inv"], name="invert"),
        h.make_node("Mul", ["inv", "big"], ["bias"], name="to_bias"),
        h.make_node("Add", ["scores", "bias"], ["masked"], name="apply_mask"),
        h.make_node("Softmax", ["masked"], ["probs"], axis=-1, name="softmax"),
        h.make_node("Transpose", ["x"], ["x_t"], perm=[0, 2, 1], name="transpose"),
        h.make_node("MatMul", ["probs", "x_t"], ["mixed"], name="mix"),
    ]
    graph = h.make_graph(
        nodes, "masked",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16, 16]),
         h.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, ["batch", 16, 16])],
        [h.make_tensor_value_info("mixed", onnx.TensorProto.FLOAT, ["batch", 16, 16])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.array(1, np.float32), "one"),
         onnx.numpy_helper.from_array(np.array(big, np.float32), "big")],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(work / "masked.onnx"))
    rng = np.random.default_rng(1)
    (work / "masked_cal").mkdir()
    mask = (rng.random((40, 16, 16)) > 0.3).astype(np.float32)
    np.savez(
        work / "masked_cal" / "cal.npz", x=rng.standard_normal((40, 16, 16)).astype(np.float32), mask=mask
    )
    cal = CalibrationOptions(data=work / "masked_cal", method=CalibrationMethod.ENTROPY)
    result = build(_options(work, "masked", "masked_int8", precision=Precision.INT8, calibration=cal))
    stage = next(s for s in result.manifest["stages"] if s["name"] == "precision int8")
    assert {"to_bias", "apply_mask"} <= set(stage["details"]["auto_kept_fp32"])
    assert "QuantizeLinear" in _ops(result.artifact)
    assert result.accuracy.passed


def test_gpu_without_gpu_is_a_clear_error(work: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU build of onnxruntime is installed")
    from kiln.builder import Device

    with pytest.raises(KilnError, match="no CUDAExecutionProvider"):
        build(_options(work, "conv", "conv_gpu", device=Device.GPU))
    assert not (work / "repo" / "conv_gpu").exists()


def test_clear_errors(work: Path) -> None:
    bad = work / "model.tflite"
    bad.write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="unsupported model format"):
        build(BuildOptions(source=bad, output=work / "repo" / "x", progress=False))
    garbage = work / "garbage.onnx"
    garbage.write_bytes(b"not onnx at all")
    with pytest.raises(InvalidArgumentError, match="not a readable ONNX model"):
        build(BuildOptions(source=garbage, output=work / "repo" / "x", progress=False))
    with pytest.raises(InvalidArgumentError, match="needs --calibration-data"):
        build(BuildOptions(source=work / "conv.onnx", output=work / "repo" / "x", precision=Precision.INT8,
                           progress=False))  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="dynamic dimensions"):
        build(BuildOptions(source=work / "block.onnx", output=work / "repo" / "x", progress=False))
    with pytest.raises(InvalidArgumentError, match="not an input of the model"):
        build(_options(work, "conv", "x", profile=ShapeProfile.fixed({"nope": (1, 3, 16, 16)})))
    with pytest.raises(InvalidArgumentError, match="fixes it to 16"):
        build(_options(work, "conv", "x", profile=ShapeProfile.fixed({"x": (1, 3, 17, 16)})))
    unknown_op = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("NoSuchOp", ["a"], ["b"], domain="kiln.test")],
            "g",
            [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("kiln.test", 1)],
    )
    onnx.save(unknown_op, str(work / "unknown_op.onnx"))
    with pytest.raises(KilnError, match="NoSuchOp"):
        build(BuildOptions(source=work / "unknown_op.onnx", output=work / "repo" / "x", progress=False))
    assert not (work / "repo" / "x").exists()
