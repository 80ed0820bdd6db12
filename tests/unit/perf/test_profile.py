"""Profiles from ONNX Runtime traces (timed runs only) and op families that line FP32 and INT8 ops up."""

from __future__ import annotations

import pytest

from kiln.perf.profile import NodeTime, Profile, op_family, ort_trace_profile


def _run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def _node(name: str, op: str, ts: int, dur: int) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op, "provider": "CPUExecutionProvider"}}  # fmt: skip


def test_only_the_timed_runs_are_counted() -> None:
    trace = [
        _run(0, 100), _node("conv", "Conv", 10, 80), _node("relu", "Relu", 91, 5),  # warm-up
        _run(200, 100), _node("conv", "Conv", 210, 60), _node("relu", "Relu", 271, 20),
        {"cat": "Node", "name": "conv_fence_before", "ts": 205, "dur": 0},
        _run(400, 100), _node("conv", "Conv", 410, 70), _node("relu", "Relu", 481, 10),
    ]  # fmt: skip
    profile = ort_trace_profile(trace, [False, True, True], "m")
    assert profile.runs == 2
    nodes = {n.name: n for n in profile.nodes}
    assert nodes["conv"].total_us == 130 and nodes["conv"].calls == 2 and nodes["conv"].kernel == "CPU"
    assert nodes["relu"].total_us == 30
    assert profile.per_run_ms(profile.total_us) == pytest.approx(0.08)
    assert profile.share(nodes["conv"].total_us) == pytest.approx(100 * 130 / 160)
    assert profile.top(1)[0].name == "conv"


def test_op_families() -> None:
    assert {op_family(t) for t in ("Conv", "QLinearConv", "ConvInteger", "FusedConv", "Convolution")} == {
        "Conv"
    }
    assert op_family("NhwcMaxPool") == op_family("QLinearGlobalAveragePool") == "Pool"
    assert op_family("QGemm") == op_family("MatMulInteger") == op_family("FullyConnected") == "Gemm/MatMul"
    assert op_family("QuantizeLinear") == op_family("DequantizeLinear")
    assert op_family("Softmax") == "Softmax"
    assert op_family("Quantize") == "Quantize"  # only a known prefix is stripped


def test_grouping_by_family() -> None:
    profile = Profile("m", "onnxruntime", 2, [NodeTime("a", "QLinearConv", "CPU", 300.0, 2),
                                              NodeTime("b", "Conv", "CPU", 100.0, 2),
                                              NodeTime("c", "Relu", "CPU", 100.0, 2)])  # fmt: skip
    assert profile.by_op_type(family=True) == {"Conv": (400.0, 2), "Relu": (100.0, 1)}
    assert profile.op_types_of("Conv") == {"QLinearConv": 1, "Conv": 1}
    doc = profile.to_dict()
    assert sum(f["share_percent"] for f in doc["op_families"]) == pytest.approx(100.0)  # type: ignore[index, union-attr]
