"""Mixed precision by sensitivity: which quantised layers hurt the output most, and the fewest to keep in float.

1. Ranking, one pass: the FP32 model and the fully quantised QDQ model run on a few calibration samples with
   every intermediate tensor as an output. A layer's sensitivity is the relative noise it adds: the noise power
   of its output (QDQ vs FP32, over the FP32 signal power) minus the largest of its inputs', i.e. what
   quantising that layer's inputs and weights contributed, not the noise it inherited.
2. Search: the most sensitive layers are kept in float, k = 1, 2, 4 ... until the candidate passes the gate
   on the search samples, then bisection down to the fewest that pass; bounded by a number of evaluations
   and a time budget. Each evaluation re-quantises with the calibration already computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from kiln.builder.accuracy import AccuracyReport
from kiln.builder.data import Sample
from kiln.builder.report import Reporter

RANK_SAMPLES = 16
RANK_BATCH = 4
MAX_EVALUATIONS = 10
DEFAULT_BUDGET_S = 600.0


@dataclass
class LayerSensitivity:
    name: str
    op_type: str
    added_noise: float  # relative noise power this layer's quantisation adds (0.01 = SQNR 20 dB)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "added_noise": round(self.added_noise, 6), "sqnr_db": round(self.sqnr_db, 2)}

    @property
    def sqnr_db(self) -> float:
        return float(10 * np.log10(1.0 / self.added_noise)) if self.added_noise > 0 else float("inf")


@dataclass
class Evaluation:
    kept: int
    passed: bool
    summary: str
    seconds: float


@dataclass
class SearchResult:
    kept: list[LayerSensitivity]
    passed: bool
    ranked: int
    evaluations: list[Evaluation] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""  # why the search stopped early (budget, evaluations), if it did

    def to_dict(self) -> dict[str, object]:
        return {
            "kept": [k.to_dict() for k in self.kept],
            "passed": self.passed,
            "ranked_layers": self.ranked,
            "evaluations": [asdict(e) for e in self.evaluations],
            "seconds": round(self.seconds, 2),
            "stopped": self.stopped,
        }


def rank_layers(
    fp32: onnx.ModelProto, qdq: onnx.ModelProto, layers: Sequence[str], samples: Sequence[Sample]
) -> list[LayerSensitivity]:
    """``layers`` (node names quantised in ``qdq``), most sensitive first. A layer's input noise is taken
    before its input's QuantizeLinear (the float tensor it would read if kept in float), its output noise
    after it ran on quantised inputs and weights."""
    floats = _float_tensors(fp32)
    producers = {o: n for n in qdq.graph.node for o in n.output}
    wanted = [n for n in qdq.graph.node if n.name in set(layers)]
    sources: dict[str, list[str]] = {}
    for node in wanted:
        sources[node.name] = [s for s in (_float_source(t, producers) for t in node.input) if s in floats]
    outputs = {node.name: [t for t in node.output if t in floats] for node in wanted}
    tensors = sorted({t for v in (*sources.values(), *outputs.values()) for t in v})
    noise = _noise(fp32, qdq, tensors, floats, samples)
    ranked = []
    for node in wanted:
        outs = [noise[t] for t in outputs[node.name] if t in noise]
        ins = [noise[t] for t in sources[node.name] if t in noise]
        if outs:
            added = max(outs) - (max(ins) if ins else 0.0)
            ranked.append(LayerSensitivity(node.name, node.op_type, max(0.0, added)))
    return sorted(ranked, key=lambda s: s.added_noise, reverse=True)


def _float_source(tensor: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The float tensor behind ``tensor``: through DequantizeLinear(QuantizeLinear(x)) to x."""
    dq = producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return tensor
    q = producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return ""  # a quantised weight: not an activation
    return q.input[0]


def _float_tensors(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {vi.name: vi for vi in infos if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _noise(
    fp32: onnx.ModelProto,
    qdq: onnx.ModelProto,
    tensors: list[str],
    floats: dict[str, onnx.ValueInfoProto],
    samples: Sequence[Sample],
) -> dict[str, float]:
    """Relative noise power of each tensor, QDQ against FP32, over ``samples``."""
    ref_session = _probe(fp32, tensors, floats)
    available = {o.name for o in ref_session.get_outputs()}
    q_session = _probe(qdq, [t for t in tensors if t in available], floats)
    names = [o.name for o in q_session.get_outputs()]
    err = dict.fromkeys(names, 0.0)
    power = dict.fromkeys(names, 0.0)
    for start in range(0, len(samples), RANK_BATCH):
        chunk = samples[start : start + RANK_BATCH]
        feeds = {k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]}
        ref = dict(zip(names, ref_session.run(names, feeds), strict=True))
        got = dict(zip(names, q_session.run(names, feeds), strict=True))
        for name in names:
            r = np.asarray(ref[name], dtype=np.float64)
            err[name] += float(np.square(np.asarray(got[name], dtype=np.float64) - r).sum())
            power[name] += float(np.square(r).sum())
    return {n: err[n] / power[n] if power[n] > 0 else 0.0 for n in names}


def _probe(model: onnx.ModelProto, tensors: list[str], floats: dict[str, onnx.ValueInfoProto]):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    produced = {o for n in probe.graph.node for o in n.output}
    present = {o.name for o in probe.graph.output}
    for name in tensors:
        if name in produced and name not in present:
            probe.graph.output.append(floats[name])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])


Evaluate = Callable[[list[str]], AccuracyReport]


def search(
    ranking: Sequence[LayerSensitivity],
    evaluate: Evaluate,
    reporter: Reporter,
    max_kept: int | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    max_evaluations: int = MAX_EVALUATIONS,
) -> SearchResult:
    """The fewest of the most sensitive layers to keep in float for ``evaluate`` to pass (its report has no
    failures). Tries 0, 1, 2, 4 ... layers, then bisects between the last failing and first passing count."""
    started = time.perf_counter()
    limit = len(ranking) if max_kept is None else min(max_kept, len(ranking))
    result = SearchResult([], False, len(ranking))
    outcomes: dict[int, bool] = {}

    def run(k: int) -> bool:
        t0 = time.perf_counter()
        report = evaluate([s.name for s in ranking[:k]])
        outcomes[k] = report.passed
        result.evaluations.append(Evaluation(k, report.passed, report.summary(), time.perf_counter() - t0))
        verdict = "passes" if report.passed else "fails: " + "; ".join(report.failures)
        reporter.note(f"search: {k} layer(s) in float -> {verdict}")
        return report.passed

    def out_of_time() -> str:
        if len(result.evaluations) >= max_evaluations:
            return f"after {max_evaluations} evaluations"
        if time.perf_counter() - started > budget_s:
            return f"time budget of {budget_s:.0f}s spent"
        return ""

    k, low = 0, -1
    while k <= limit and not (stop := out_of_time()):
        if run(k):
            break
        low, k = k, (1 if k == 0 else 2 * k)
        if k > limit and low < limit:
            k = limit
    else:
        result.stopped = "" if k > limit else stop
    passing = [n for n, ok in outcomes.items() if ok]
    if passing:
        high = min(passing)
        while high - low > 1 and not (stop := out_of_time()):
            mid = (low + high) // 2
            low, high = (low, mid) if run(mid) else (mid, high)
        result.stopped = result.stopped or (stop if high - low > 1 else "")
        result.kept, result.passed = list(ranking[:high]), True
    result.seconds = time.perf_counter() - started
    return result
