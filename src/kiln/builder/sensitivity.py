"""Mixed precision by sensitivity: which quantised layers hurt the output most, and the fewest to keep in float.

1. Ranking, one pass: the FP32 model runs on a few calibration samples with every layer's input and output
   tensors as outputs; each quantised layer, cut out of the QDQ model with its own input and output
   quantisation, runs alone on those FP32 inputs through ONNX Runtime's integer kernels. A layer's sensitivity
   is the relative noise power of its output against the FP32 one: what quantising that layer contributes,
   measured on the arithmetic the artifact will run, not the noise it inherits from the layers before it.
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
    noise: float  # relative noise power this layer's quantisation adds on its own (0.01 = SQNR 20 dB)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "noise": round(self.noise, 6), "sqnr_db": round(self.sqnr_db, 2)}

    @property
    def sqnr_db(self) -> float:
        return float(10 * np.log10(1.0 / self.noise)) if self.noise > 0 else float("inf")


@dataclass
class Evaluation:
    kept: int
    passed: bool
    summary: str
    seconds: float


@dataclass
class SearchResult:
    kept: list[LayerSensitivity]  # in float in the chosen mix (the most faithful one tried if none passed)
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
    fp32: onnx.ModelProto,
    qdq: onnx.ModelProto,
    layers: Sequence[str],
    samples: Sequence[Sample],
    kernels: bool = True,
) -> list[LayerSensitivity]:
    """``layers`` (node names quantised in ``qdq``), most sensitive first. Each layer is measured alone: its
    quantised form (input QuantizeLinear/DequantizeLinear, INT8 weights, output quantisation) runs on the FP32
    model's own input tensors and is compared with the FP32 model's output tensor, so its figure is the noise
    it adds, not the noise it inherits. With ``kernels`` the layer runs through ONNX Runtime's optimisations,
    i.e. the integer kernels the artifact will use (the x86 U8S8 kernels' int16 saturation included); without,
    the QDQ arithmetic in float (a proxy for another runtime)."""
    fp_tensors = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    graph = _Graph(qdq)
    probes = [p for p in (graph.layer(name, fp_tensors) for name in layers) if p is not None]
    if not probes:
        return []
    types = _elem_types(fp32)
    sessions = [_session(graph.extract(p, types), optimise=kernels) for p in probes]
    graph_inputs = {i.name for i in fp32.graph.input}
    needed = sorted({t for p in probes for t in (*p.inputs, p.reference)} - graph_inputs)
    reference = _session(_with_outputs(fp32, needed), optimise=False)
    err = [0.0] * len(probes)
    power = [0.0] * len(probes)
    for start in range(0, len(samples), RANK_BATCH):
        chunk = samples[start : start + RANK_BATCH]
        feeds = {k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]}
        values = dict(zip(needed, reference.run(needed, feeds), strict=True)) | feeds
        for i, (probe, session) in enumerate(zip(probes, sessions, strict=True)):
            (out,) = session.run(None, {t: values[t] for t in probe.inputs})
            ref = np.asarray(values[probe.reference], dtype=np.float64)
            err[i] += float(np.square(np.asarray(out, dtype=np.float64) - ref).sum())
            power[i] += float(np.square(ref).sum())
    ranked = [
        LayerSensitivity(p.node.name, p.node.op_type, e / w if w > 0 else 0.0)
        for p, e, w in zip(probes, err, power, strict=True)
    ]
    return sorted(ranked, key=lambda s: s.noise, reverse=True)


@dataclass
class _Probe:
    node: onnx.NodeProto
    inputs: list[str]  # FP32 tensors the layer reads (through its input QuantizeLinear, or as they are)
    output: str  # the layer's output in the QDQ graph (after its output DequantizeLinear, if quantised)
    reference: str  # the FP32 tensor it stands for


class _Graph:
    """Producers, consumers and initialisers of a QDQ model, to cut one layer out of it."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.by_name = {n.name: n for n in model.graph.node}

    def _op(self, tensor: str) -> str:
        node = self.producer.get(tensor)
        return node.op_type if node is not None else ""

    def layer(self, name: str, fp_tensors: set[str]) -> _Probe | None:
        node = self.by_name.get(name)
        if node is None:
            return None
        inputs = []
        for tensor in filter(None, node.input):
            if tensor in self.initializers:
                continue
            if self._op(tensor) == "DequantizeLinear":
                source = self.producer[tensor].input[0]
                if source in self.initializers:
                    continue  # an INT8 weight, part of the layer
                if self._op(source) != "QuantizeLinear":
                    return None
                tensor = self.producer[source].input[0]
            if tensor not in fp_tensors:
                return None
            inputs.append(tensor)
        output = reference = node.output[0]
        dequant = self._dequantized(output)
        if dequant is not None:
            output = dequant  # a removed Clip/Relu lives on in this quantisation's range
            if reference not in fp_tensors:
                reference = dequant  # a graph output: ORT renames the layer's own output
        if reference not in fp_tensors or not inputs:
            return None
        return _Probe(node, sorted(set(inputs)), output, reference)

    def _dequantized(self, tensor: str) -> str | None:
        """The DequantizeLinear(QuantizeLinear(tensor)) output, if ``tensor`` is quantised."""
        quant = next((c for c in self.consumers.get(tensor, []) if c.op_type == "QuantizeLinear"), None)
        if quant is None:
            return None
        consumers = self.consumers.get(quant.output[0], [])
        return next((c.output[0] for c in consumers if c.op_type == "DequantizeLinear"), None)

    def extract(self, probe: _Probe, types: dict[str, int]) -> onnx.ModelProto:
        """The nodes between ``probe.inputs`` and ``probe.output``, as a model of their own."""
        h = onnx.helper
        stop = set(probe.inputs)
        seen: set[str] = set()
        nodes: dict[int, onnx.NodeProto] = {}
        used: set[str] = set()
        stack = [probe.output]
        while stack:
            tensor = stack.pop()
            if not tensor or tensor in stop or tensor in seen:
                continue
            seen.add(tensor)
            if tensor in self.initializers:
                used.add(tensor)
                continue
            node = self.producer[tensor]
            nodes[id(node)] = node
            stack.extend(node.input)
        order = [n for n in self.model.graph.node if id(n) in nodes]
        graph = h.make_graph(
            order,
            "layer",
            [h.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None) for t in probe.inputs],
            [h.make_tensor_value_info(probe.output, onnx.TensorProto.FLOAT, None)],
            [self.initializers[t] for t in sorted(used)],
        )
        model = h.make_model(graph, opset_imports=self.model.opset_import)
        model.ir_version = self.model.ir_version
        return model


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {vi.name: vi.type.tensor_type.elem_type for vi in infos if vi.type.tensor_type.elem_type}


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return probe


def _session(model: onnx.ModelProto, optimise: bool):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


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
    elif outcomes:
        result.kept = list(ranking[: max(outcomes)])  # none passed: the most faithful mix tried
    result.seconds = time.perf_counter() - started
    return result
