"""Per-node profiles for ``kiln bench --profile``: where a run's time goes, node by node and op type by op type.

ONNX Runtime writes a JSON trace when ``SessionOptions.enable_profiling`` is set: one ``Node`` event per kernel
execution (``dur`` in µs, ``args.op_name``, ``args.provider``) inside one ``model_run`` event per run. OpenVINO
compiled with ``PERF_COUNT`` reports, after each inference, every node's ``real_time``, ``node_type`` and
``exec_type`` (the kernel and its precision, e.g. ``brgconv_avx512_I8``). Both are collected only for the timed
runs (warm-up excluded) and summed per node.

The profiling backends are the serving backend classes with profiling switched on, so the model is loaded with
the same options ``kiln serve`` uses; profiling itself adds a little time to every run.
"""

from __future__ import annotations

import bisect
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.backends import Backend, backend_class
from kiln.errors import InvalidArgumentError

PROFILED_BACKENDS = ("onnxruntime", "openvino")


@dataclass
class NodeTime:
    name: str
    op_type: str
    kernel: str  # ONNX Runtime: the execution provider; OpenVINO: the exec type (kernel and precision)
    total_us: float = 0.0
    calls: int = 0


@dataclass
class Profile:
    """Node times summed over ``runs`` timed runs of one artifact."""

    label: str
    backend: str
    runs: int
    nodes: list[NodeTime] = field(default_factory=list)

    @property
    def total_us(self) -> float:
        return sum(n.total_us for n in self.nodes)

    def share(self, us: float) -> float:
        """Percent of the profiled node time."""
        total = self.total_us
        return 100.0 * us / total if total > 0 else 0.0

    def per_run_ms(self, us: float) -> float:
        return us / 1000.0 / max(1, self.runs)

    def top(self, count: int) -> list[NodeTime]:
        return sorted(self.nodes, key=lambda n: -n.total_us)[:count]

    def by_op_type(self, family: bool = False) -> dict[str, tuple[float, int]]:
        """op type (or its :func:`op_family`) -> (total µs, nodes of that type), slowest first."""
        totals: dict[str, list[float]] = {}
        for node in self.nodes:
            entry = totals.setdefault(op_family(node.op_type) if family else node.op_type, [0.0, 0])
            entry[0] += node.total_us
            entry[1] += 1
        ordered = sorted(totals.items(), key=lambda kv: -kv[1][0])
        return {op: (us, int(count)) for op, (us, count) in ordered}

    def op_types_of(self, family: str) -> dict[str, int]:
        """The op types of this profile in ``family``, with their node counts."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            if op_family(node.op_type) == family:
                counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts

    def to_dict(self) -> dict[str, object]:
        nodes = [
            {**vars(n), "ms_per_run": self.per_run_ms(n.total_us), "share_percent": self.share(n.total_us)}
            for n in self.top(len(self.nodes))
        ]
        return {
            "label": self.label,
            "backend": self.backend,
            "runs": self.runs,
            "total_ms_per_run": self.per_run_ms(self.total_us),
            "nodes": nodes,
            "op_types": self._grouped("op_type", family=False),
            "op_families": self._grouped("family", family=True),
        }

    def _grouped(self, key: str, family: bool) -> list[dict[str, object]]:
        return [
            {key: op, "nodes": count, "ms_per_run": self.per_run_ms(us), "share_percent": self.share(us)}
            for op, (us, count) in self.by_op_type(family).items()
        ]


# what an op becomes after quantisation, fusion or another runtime's naming, so two artifacts compare op for op
_FAMILY_NAMES = {
    "Convolution": "Conv",
    "GroupConvolution": "Conv",
    "FullyConnected": "Gemm/MatMul",
    "Gemm": "Gemm/MatMul",
    "MatMul": "Gemm/MatMul",
    "Eltwise": "Add/Mul (elementwise)",
    "Add": "Add/Mul (elementwise)",
    "Mul": "Add/Mul (elementwise)",
    "Pooling": "Pool",
    "MaxPool": "Pool",
    "AveragePool": "Pool",
    "GlobalAveragePool": "Pool",
    "ReduceMean": "Pool",
    "QuantizeLinear": "quantize / dequantize",
    "DequantizeLinear": "quantize / dequantize",
    "DynamicQuantizeLinear": "quantize / dequantize",
    "FakeQuantize": "quantize / dequantize",
    "Reorder": "layout (reorder, transpose)",
    "ReorderInput": "layout (reorder, transpose)",
    "ReorderOutput": "layout (reorder, transpose)",
    "Transpose": "layout (reorder, transpose)",
}


def op_family(op_type: str) -> str:
    """``QLinearConv``, ``ConvInteger``, ``FusedConv`` and OpenVINO's ``Convolution`` are all ``Conv``;
    ``NhwcMaxPool`` and ``GlobalAveragePool`` are ``Pool``: the unit a precision or runtime comparison lines up."""
    name = op_type
    for prefix in ("QLinear", "Nhwc", "Fused"):
        if name.startswith(prefix) and len(name) > len(prefix):
            name = name[len(prefix) :]
    name = name.removesuffix("Integer")
    if name.startswith("Q") and name[1:] in ("Gemm", "MatMul", "Attention"):
        name = name[1:]
    return _FAMILY_NAMES.get(name, name)


class _Timing:
    """What the profiling backends share: a switch the timed loop turns on (warm-up runs are not counted)."""

    timing: bool = False

    def set_timing(self, on: bool) -> None:
        self.timing = on


def profiling_class(backend: str) -> type[Backend]:
    """The serving backend class of ``backend`` with profiling on; an error naming the supported ones else."""
    if backend == "onnxruntime":
        return _ort_class()
    if backend == "openvino":
        return _openvino_class()
    raise InvalidArgumentError(
        f"profiling is not supported for the '{backend}' backend: --profile works with ONNX Runtime (.onnx) "
        f"and OpenVINO (.xml) artifacts"
    )


def collect(backend: Backend, label: str) -> Profile:
    """The profile of a profiling backend's timed runs (call once, before unloading it)."""
    collector = getattr(backend, "collect_profile", None)
    if collector is None:
        raise InvalidArgumentError(f"{label} was not loaded with profiling on")
    return collector(label)  # type: ignore[no-any-return]


def _ort_class() -> type[Backend]:
    import onnxruntime as ort

    base = backend_class("onnxruntime")

    class OrtProfiling(_Timing, base):  # type: ignore[valid-type, misc]
        def session_options(self) -> ort.SessionOptions:
            options = super().session_options()
            if not hasattr(self, "_profile_dir"):
                self._profile_dir = tempfile.TemporaryDirectory(prefix="kiln-profile-")
                self._timed_runs: list[bool] = []
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(self._profile_dir.name) / "ort")
            return options

        def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
            self._timed_runs.append(self.timing)
            return super().execute(inputs, outputs)  # type: ignore[no-any-return]

        def collect_profile(self, label: str) -> Profile:
            trace = json.loads(Path(self.session.end_profiling()).read_text())
            profile = ort_trace_profile(trace, self._timed_runs, label)
            self._profile_dir.cleanup()
            return profile

    return OrtProfiling


def ort_trace_profile(trace: list[dict[str, Any]], timed_runs: Sequence[bool], label: str) -> Profile:
    """Sum the kernel events of ONNX Runtime's trace that fall inside the timed ``model_run`` events
    (``timed_runs[i]``: whether the i-th run was timed)."""
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    windows = [(e["ts"], e["ts"] + e["dur"]) for e, timed in zip(runs, timed_runs, strict=False) if timed]
    starts = [w[0] for w in windows]
    nodes: dict[str, NodeTime] = {}
    for event in trace:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        i = bisect.bisect_right(starts, event["ts"]) - 1
        if i < 0 or event["ts"] > windows[i][1]:
            continue  # a warm-up run's node
        args = event.get("args", {})
        node_name = name.removesuffix("_kernel_time")
        node = nodes.setdefault(
            node_name,
            NodeTime(
                node_name,
                str(args.get("op_name", "?")),
                str(args.get("provider", "")).removesuffix("ExecutionProvider"),
            ),
        )
        node.total_us += float(event.get("dur", 0))
        node.calls += 1
    return Profile(label, "onnxruntime", len(windows), list(nodes.values()))


def _openvino_class() -> type[Backend]:
    base = backend_class("openvino")

    class OpenVinoProfiling(_Timing, base):  # type: ignore[valid-type, misc]
        def load(self) -> None:
            super().load()
            import openvino as ov

            # PERF_COUNT is a compile-time property: compile again, with the serving backend's own properties
            self.compiled = ov.Core().compile_model(
                str(self.model_path), "CPU", {**self._properties, "PERF_COUNT": True}
            )
            self._request = self.compiled.create_infer_request()
            self._outputs = {port.get_any_name(): port for port in self.compiled.outputs}
            self._nodes: dict[str, NodeTime] = {}
            self._runs = 0

        def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
            results = super().execute(inputs, outputs)
            if self.timing:  # bench runs one inference at a time: the request still holds this run's counts
                with self._lock:
                    self._add(self._request.profiling_info)
            return results  # type: ignore[no-any-return]

        def _add(self, infos: Sequence[Any]) -> None:
            self._runs += 1
            for info in infos:
                us = info.real_time.total_seconds() * 1e6
                if us <= 0:
                    continue  # not run: fused into a neighbour, or a constant / parameter
                node = self._nodes.setdefault(
                    info.node_name, NodeTime(info.node_name, info.node_type, info.exec_type)
                )
                node.total_us += us
                node.calls += 1

        def collect_profile(self, label: str) -> Profile:
            return Profile(label, "openvino", self._runs, list(self._nodes.values()))

    return OpenVinoProfiling
