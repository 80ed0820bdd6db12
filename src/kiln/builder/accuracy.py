"""Stage 5, the accuracy gate: the FP32 reference and the built artifact on the same validation inputs.

Validation streams: each batch is run through both models and reduced at once to per-sample figures (cosine,
top-1 class) and running maxima, so memory grows with the sample count, not with the outputs' size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from kiln.builder.data import Dataset, Sample
from kiln.builder.options import Tolerance
from kiln.builder.report import Reporter
from kiln.builder.stats import paired_drop_ci, wilson
from kiln.errors import ErrorCode, KilnError

Runner = Callable[[Sample], dict[str, np.ndarray]]


class AccuracyGateError(KilnError):
    """The built artifact is outside the tolerance: nothing was written."""

    code = ErrorCode.INVALID_ARGUMENT


@dataclass
class OutputMetrics:
    name: str
    max_abs_error: float
    max_rel_error: float  # max |ref - out| / max |ref|
    mean_cosine: float
    min_cosine: float
    top1_agreement: float | None  # for outputs shaped [batch, classes]
    top1_agreement_ci: tuple[float, float] | None = None  # 95 % Wilson interval
    # FP32 rows of unit L2 norm (and not probabilities): an embedding, whose argmax means nothing, so its
    # top-1 agreement is reported but not gated
    embedding: bool = False


@dataclass
class AccuracyReport:
    samples: int
    outputs: list[OutputMetrics]
    reference_accuracy: float | None = None  # task accuracy (percent) when labels are given
    accuracy: float | None = None
    reference_accuracy_ci: tuple[float, float] | None = None  # 95 % Wilson, percent
    accuracy_ci: tuple[float, float] | None = None
    accuracy_drop: float | None = None  # points, reference - artifact
    accuracy_drop_ci: tuple[float, float] | None = None  # 95 % paired bootstrap, points
    min_samples: int = 0  # the gate's minimum, for the record
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        parts = []
        for m in self.outputs:
            top1 = ""
            if m.top1_agreement is not None:
                top1 = f", top-1 agreement {m.top1_agreement:.4f}" + _ci(m.top1_agreement_ci, 4)
                top1 += " (embedding: not gated)" if m.embedding else ""
            parts.append(
                f"{m.name}: cos {m.mean_cosine:.6f} (min {m.min_cosine:.6f}), max abs {m.max_abs_error:.3g}, "
                f"rel {m.max_rel_error:.3g}{top1}"
            )
        if self.accuracy is not None and self.reference_accuracy is not None:
            parts.append(
                f"accuracy {self.accuracy:.2f}%{_ci(self.accuracy_ci, 2)} vs fp32 {self.reference_accuracy:.2f}%"
                f"{_ci(self.reference_accuracy_ci, 2)}, drop {self.accuracy_drop:+.2f} points"
                f"{_ci(self.accuracy_drop_ci, 2)}"
            )
        return f"{self.samples} samples; " + "; ".join(parts) + " (95 % intervals in brackets)"


def _ci(ci: tuple[float, float] | None, digits: int) -> str:
    return "" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


class Accumulator:
    """Per-output figures over batches of (reference, candidate) outputs, reduced as they come."""

    def __init__(self) -> None:
        self._cos: dict[str, list[np.ndarray]] = {}
        self._top: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._max_abs: dict[str, float] = {}
        self._max_ref: dict[str, float] = {}
        self._finite: dict[str, bool] = {}
        self._unit_rows: dict[str, bool] = {}
        self.samples = 0

    def add(self, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> None:
        for name, value in reference.items():
            ref = np.asarray(value, dtype=np.float64)
            out = np.asarray(candidate[name], dtype=np.float64)
            if ref.shape != out.shape:
                raise AccuracyGateError(
                    f"output '{name}': shape {list(out.shape)}, reference {list(ref.shape)}"
                )
            n = ref.shape[0] if ref.ndim else 1
            r, o = ref.reshape(n, -1), out.reshape(n, -1)
            finite = bool(np.isfinite(o).all())
            self._finite[name] = self._finite.get(name, True) and finite
            if finite and r.size:
                self._max_abs[name] = max(self._max_abs.get(name, 0.0), float(np.abs(r - o).max()))
            self._max_ref[name] = max(self._max_ref.get(name, 0.0), float(np.abs(r).max()) if r.size else 0.0)
            self._cos.setdefault(name, []).append(_cosine(r, o) if finite else np.zeros(n))
            if ref.ndim == 2 and ref.shape[1] > 1:
                self._top.setdefault(name, []).append((ref.argmax(axis=1), out.argmax(axis=1)))
                self._unit_rows[name] = self._unit_rows.get(name, True) and _unit_rows(ref)
        self.samples += len(next(iter(reference.values()))) if reference else 0

    def classes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = self._top[name]
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])

    def report(self, labels: np.ndarray | None = None) -> AccuracyReport:
        metrics = [self._metrics(name) for name in self._cos]
        report = AccuracyReport(self.samples, metrics)
        if labels is not None:
            name = next((m.name for m in metrics if m.top1_agreement is not None), None)
            if name is None:
                raise AccuracyGateError("labels were given but no output is shaped [batch, classes]")
            ref_top, out_top = self.classes(name)
            labels = np.asarray(labels).reshape(-1)[: len(ref_top)]
            ref_ok, out_ok = ref_top == labels, out_top == labels
            report.reference_accuracy = 100.0 * float(ref_ok.mean())
            report.accuracy = 100.0 * float(out_ok.mean())
            report.reference_accuracy_ci = _percent(wilson(int(ref_ok.sum()), len(labels)))
            report.accuracy_ci = _percent(wilson(int(out_ok.sum()), len(labels)))
            report.accuracy_drop = report.reference_accuracy - report.accuracy
            report.accuracy_drop_ci = paired_drop_ci(ref_ok, out_ok)
        return report

    def _metrics(self, name: str) -> OutputMetrics:
        cos = np.concatenate(self._cos[name])
        finite = self._finite[name]
        max_abs = self._max_abs.get(name, 0.0) if finite else float("inf")
        top1 = ci = None
        if name in self._top:
            ref_top, out_top = self.classes(name)
            agree = int((ref_top == out_top).sum())
            top1, ci = agree / len(ref_top), wilson(agree, len(ref_top))
        return OutputMetrics(
            name=name,
            max_abs_error=max_abs,
            max_rel_error=max_abs / (self._max_ref[name] or 1.0) if finite else float("inf"),
            mean_cosine=float(cos.mean()) if finite else 0.0,
            min_cosine=float(cos.min()) if finite else 0.0,
            top1_agreement=top1,
            top1_agreement_ci=ci,
            embedding=self._unit_rows.get(name, False),
        )


def _unit_rows(ref: np.ndarray) -> bool:
    """Every row of unit L2 norm and not a probability vector (non-negative, summing to 1)."""
    unit = bool(np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-3))
    probabilities = bool((ref >= 0).all() and np.allclose(ref.sum(axis=1), 1.0, atol=1e-3))
    return unit and not probabilities


def _percent(ci: tuple[float, float]) -> tuple[float, float]:
    return 100.0 * ci[0], 100.0 * ci[1]


def _cosine(r: np.ndarray, o: np.ndarray) -> np.ndarray:
    num = (r * o).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    same = np.abs(r).sum(1) == np.abs(o).sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(same, 1.0, 0.0))


def compare(
    reference: Runner, candidate: Runner, data: Dataset, batch: int, reporter: Reporter
) -> AccuracyReport:
    """Both models on ``data`` (streamed in batches of ``batch``), reduced to an AccuracyReport."""
    acc = Accumulator()
    total = -(-len(data) // batch)
    for feeds in reporter.track(data.batches(batch), total, "validating"):
        acc.add(reference(feeds), candidate(feeds))
    return acc.report(data.labels)


def gate(report: AccuracyReport, tolerance: Tolerance, min_samples: int = 0) -> list[str]:
    """The criteria the report fails (point estimates against the tolerance; too few samples fail too); also
    stored in ``report.failures``."""
    failures = []
    report.min_samples = min_samples
    if report.samples < min_samples:
        failures.append(
            f"only {report.samples} validation samples, fewer than the minimum of {min_samples} needed to "
            f"pass (give more --validation-data, or lower --min-validation-samples)"
        )
    for m in report.outputs:
        failures += _output_failures(m, tolerance)
    drop = report.accuracy_drop
    if tolerance.max_accuracy_drop is not None and drop is not None and drop > tolerance.max_accuracy_drop:
        failures.append(
            f"accuracy {report.accuracy:.2f}% is {drop:.2f} points below the FP32 reference "
            f"{report.reference_accuracy:.2f}% (allowed {tolerance.max_accuracy_drop})"
        )
    report.failures = failures
    return failures


def _output_failures(m: OutputMetrics, tolerance: Tolerance) -> list[str]:
    failures = []
    if tolerance.min_cosine is not None and m.mean_cosine < tolerance.min_cosine:
        failures.append(f"{m.name}: cosine similarity {m.mean_cosine:.6f} < {tolerance.min_cosine}")
    if tolerance.max_rel_error is not None and m.max_rel_error > tolerance.max_rel_error:
        failures.append(f"{m.name}: relative error {m.max_rel_error:.3g} > {tolerance.max_rel_error}")
    if tolerance.max_abs_error is not None and m.max_abs_error > tolerance.max_abs_error:
        failures.append(f"{m.name}: absolute error {m.max_abs_error:.3g} > {tolerance.max_abs_error}")
    if (
        tolerance.min_top1_agreement is not None
        and m.top1_agreement is not None
        and not m.embedding
        and m.top1_agreement < tolerance.min_top1_agreement
    ):
        failures.append(f"{m.name}: top-1 agreement {m.top1_agreement:.4f} < {tolerance.min_top1_agreement}")
    return failures
