"""INT8 defaults: a Softmax output is never quantised, 7-bit weights where the CPU's U8S8 kernels saturate,
embeddings are not gated on top-1 agreement, and the layer ranking measures each layer on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from kiln.builder.accuracy import Accumulator, gate
from kiln.builder.cpu import Int8Dot, default_reduce_range, int8_dot
from kiln.builder.data import Dataset
from kiln.builder.int8_ort import OrtQuantizer
from kiln.builder.options import CalibrationOptions, Tolerance
from kiln.builder.report import Reporter, StageRecord
from kiln.builder.sensitivity import rank_layers


def softmax_classifier(width: int = 8, classes: int = 5) -> onnx.ModelProto:
    h, rng = onnx.helper, np.random.default_rng(0)
    w1 = rng.standard_normal((width, width)).astype(np.float32)
    w2 = rng.standard_normal((width, classes)).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        h.make_node("Relu", ["h1"], ["h2"], name="relu"),
        h.make_node("MatMul", ["h2", "w2"], ["logits"], name="mm2"),
        h.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = h.make_graph(
        nodes, "classifier",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", width])],
        [h.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", classes])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _quantizer(model: onnx.ModelProto, width: int = 8, **options: object) -> tuple[OrtQuantizer, StageRecord]:
    rng = np.random.default_rng(1)
    data = Dataset.from_samples(
        [{"x": rng.standard_normal((1, width)).astype(np.float32)} for _ in range(32)]
    )
    record = StageRecord("precision int8")
    options = {"reduce_range": False, **options}
    return OrtQuantizer(
        model, data, CalibrationOptions(**options), True, Reporter(progress=False), record
    ), record  # type: ignore[arg-type]


def test_a_softmax_output_is_never_quantised() -> None:
    quantizer, record = _quantizer(softmax_classifier())
    try:
        model = quantizer.quantize()
    finally:
        quantizer.close()
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert consumers.get(softmax.output[0]) != "QuantizeLinear"  # computes and writes float
    assert producers["probabilities"] == "Softmax"
    mm2 = next(n for n in model.graph.node if n.name == "mm2")
    assert producers[mm2.input[1]] == "DequantizeLinear"  # the layers before it are INT8
    assert "Softmax" not in quantizer.op_types and record.details["op_types"] == "all but Softmax"


def test_softmax_is_quantised_when_asked_for() -> None:
    quantizer, _ = _quantizer(softmax_classifier(), op_types=("MatMul", "Softmax"))
    try:
        model = quantizer.quantize()
    finally:
        quantizer.close()
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers["probabilities"] == "DequantizeLinear"  # ORT's own default: 8-bit probabilities


@pytest.mark.parametrize("reduce", [True, False])
def test_reduce_range_gives_seven_bit_weights(reduce: bool) -> None:
    quantizer, record = _quantizer(softmax_classifier(), reduce_range=reduce)
    try:
        model = quantizer.quantize()
    finally:
        quantizer.close()
    weights = [
        onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest <= 64 if reduce else largest == 127
    assert record.details["reduce_range"] is reduce and "cpu_int8_dot" in record.details


def test_cpu_flags_decide_the_default(tmp_path: Path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n")
    assert int8_dot(avx2, "x86_64") is Int8Dot.SATURATING
    assert int8_dot(vnni, "x86_64") is Int8Dot.EXACT
    assert int8_dot(tmp_path / "missing", "x86_64") is Int8Dot.UNKNOWN
    assert int8_dot(avx2, "aarch64") is Int8Dot.EXACT  # not x86: no U8S8 vpmaddubsw kernels
    assert default_reduce_range(Int8Dot.SATURATING) and default_reduce_range(Int8Dot.UNKNOWN)
    assert not default_reduce_range(Int8Dot.EXACT)


def test_an_embedding_is_not_gated_on_top1_but_probabilities_are() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((64, 384))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    noisy = emb + 0.005 * rng.standard_normal(emb.shape)  # argmax flips, cosine stays high
    acc = Accumulator()
    acc.add({"e": emb}, {"e": noisy})
    report = acc.report()
    assert report.outputs[0].embedding and report.outputs[0].top1_agreement < 0.95  # type: ignore[operator]
    assert gate(report, Tolerance(min_cosine=0.99, min_top1_agreement=0.95)) == []
    probs = np.zeros((64, 16))
    probs[:, 0] = 1.0  # one-hot probabilities have unit L2 norm too: still a classification
    acc = Accumulator()
    acc.add({"p": probs}, {"p": probs[:, ::-1]})
    report = acc.report()
    assert not report.outputs[0].embedding
    assert any("top-1" in f for f in gate(report, Tolerance(min_top1_agreement=0.9)))


def test_ranking_measures_each_layer_on_its_own() -> None:
    """A layer downstream of a bad one inherits its noise but adds little: it must rank below it."""
    from tests.unit.builder.test_build_mixed import outlier_mlp

    model = outlier_mlp()
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(16)]
    quantizer, _ = _quantizer(model, width=16, op_types=("MatMul",))
    try:
        qdq = quantizer.quantize()
        ranking = rank_layers(model, qdq, quantizer.layers(qdq), samples)
    finally:
        quantizer.close()
    assert ranking[0].name == "mm2" and {r.name for r in ranking} == {"mm1", "mm2", "mm3"}
    # mm3 reads mm2's wrecked output in the full INT8 model, but is measured on FP32 inputs: it adds little
    assert ranking[0].sqnr_db < 10 and all(r.sqnr_db > 15 for r in ranking[1:])
