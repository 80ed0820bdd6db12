"""Mixed precision by sensitivity: a layer made deliberately sensitive (its input has one huge-outlier channel,
so one 8-bit scale per tensor wipes out the others) is found and kept in float, and only it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from kiln.builder import BuildOptions, CalibrationOptions, Precision, Target, Tolerance, build
from kiln.builder.accuracy import AccuracyReport
from kiln.builder.report import Reporter
from kiln.builder.sensitivity import LayerSensitivity, search

HAS_OPENVINO = (
    importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
)


def outlier_mlp(width: int = 16, classes: int = 10) -> onnx.ModelProto:
    """x -> mm1 -> scale (channel 0 x 1000) -> mm2 (row 0 / 1000, so FP32 is well-behaved) -> relu -> mm3."""
    h, rng = onnx.helper, np.random.default_rng(0)
    w1 = rng.standard_normal((width, width)).astype(np.float32) / 4
    scale = np.ones(width, np.float32)
    scale[0] = 1000.0
    w2 = rng.standard_normal((width, width)).astype(np.float32) / 4
    w2[0] /= 1000.0
    w3 = rng.standard_normal((width, classes)).astype(np.float32) / 4
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        h.make_node("Mul", ["h1", "scale"], ["h2"], name="outlier"),
        h.make_node("MatMul", ["h2", "w2"], ["h3"], name="mm2"),
        h.make_node("Relu", ["h3"], ["h4"], name="relu"),
        h.make_node("MatMul", ["h4", "w3"], ["logits"], name="mm3"),
    ]
    inits = [
        onnx.numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (scale, "scale"), (w2, "w2"), (w3, "w3"))
    ]
    graph = h.make_graph(
        nodes, "outlier",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes])], inits,
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    onnx.save(outlier_mlp(), str(root / "outlier.onnx"))
    rng = np.random.default_rng(1)
    for name, count in (("cal", 64), ("val", 120)):
        (root / name).mkdir()
        np.save(root / name / "x.npy", rng.standard_normal((count, 16)).astype(np.float32))
    return root


def _build(
    work: Path, name: str, target: Target, mixed: bool = True, tolerance: Tolerance | None = None
) -> object:
    cal = CalibrationOptions(data=work / "cal", op_types=("MatMul",), mixed_precision=mixed)
    return build(
        BuildOptions(
            source=work / "outlier.onnx", output=work / "repo" / name, precision=Precision.INT8, target=target,
            calibration=cal, validation_data=work / "val", accept_accuracy_drop=not mixed, benchmark=False,
            tolerance=tolerance,
            progress=False,
        )
    )  # fmt: skip


def _stage(result: object) -> dict:
    return next(s for s in result.manifest["stages"] if s["name"] == "precision int8")["details"]  # type: ignore[attr-defined]


def test_search_keeps_exactly_the_sensitive_layer_in_float(work: Path) -> None:
    plain = _build(work, "plain", Target.ONNXRUNTIME, mixed=False)
    assert not plain.accuracy.passed  # type: ignore[attr-defined]  # all-INT8 is wrong: the case is real
    result = _build(work, "mixed", Target.ONNXRUNTIME)
    assert result.accuracy.passed  # type: ignore[attr-defined]
    details = _stage(result)
    assert [k["name"] for k in details["search"]["kept"]] == ["mm2"]
    assert details["kept_in_float"] == 1 and "mm2 (MatMul" in details["float_layers"][0]
    ranked = details["search"]["kept"][0]
    assert ranked["sqnr_db"] < 20  # its measured sensitivity is reported
    model = onnx.load(str(result.artifact))  # type: ignore[attr-defined]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    assert all(producers.get(i) != "DequantizeLinear" for i in by_name["mm2"].input)  # float inputs
    assert producers.get(by_name["mm1"].input[1]) == "DequantizeLinear"  # the others stay INT8
    assert producers.get(by_name["mm3"].input[1]) == "DequantizeLinear"


@pytest.mark.skipif(not HAS_OPENVINO, reason="no openvino/nncf")
def test_search_on_openvino_uses_the_ignored_scope(work: Path) -> None:
    # NNCF's INT8 of this toy model is a little less exact than ONNX Runtime's: a looser cosine
    result = _build(
        work, "mixed_ov", Target.OPENVINO, tolerance=Tolerance(min_cosine=0.98, min_top1_agreement=0.85)
    )
    assert result.accuracy.passed  # type: ignore[attr-defined]
    details = _stage(result)
    assert [k["name"] for k in details["search"]["kept"]] == ["mm2"]


def _report(passed: bool) -> AccuracyReport:
    return AccuracyReport(8, [], failures=[] if passed else ["fails"])


def test_search_finds_the_fewest_and_respects_its_bounds() -> None:
    ranking = [LayerSensitivity(f"n{i}", "Conv", 1.0 / (i + 1)) for i in range(20)]
    tried: list[int] = []

    def evaluate(keep: list[str]) -> AccuracyReport:
        tried.append(len(keep))
        return _report(len(keep) >= 5)

    result = search(ranking, evaluate, Reporter(progress=False))
    assert result.passed and [k.name for k in result.kept] == [f"n{i}" for i in range(5)]
    assert tried[:5] == [0, 1, 2, 4, 8] and 5 in tried
    never = search(ranking, lambda keep: _report(False), Reporter(progress=False), max_kept=6)
    assert not never.passed and max(e.kept for e in never.evaluations) == 6
    assert [k.name for k in never.kept] == [f"n{i}" for i in range(6)]  # the most faithful mix tried
    bounded = search(ranking, lambda keep: _report(False), Reporter(progress=False), max_evaluations=3)
    assert len(bounded.evaluations) == 3 and "3 evaluations" in bounded.stopped
