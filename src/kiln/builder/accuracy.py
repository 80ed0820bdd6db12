"""Stage 5, the accuracy gate: the FP32 reference and the built artifact on the same validation inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from kiln.builder.data import Dataset, Sample
from kiln.builder.options import Tolerance
from kiln.builder.report import Reporter
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


@dataclass
class AccuracyReport:
    samples: int
    outputs: list[OutputMetrics]
    reference_accuracy: float | None = None  # task accuracy (percent) when labels are given
    accuracy: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        parts = []
        for m in self.outputs:
            top1 = f", top1 {m.top1_agreement:.4f}" if m.top1_agreement is not None else ""
            parts.append(
                f"{m.name}: cos {m.mean_cosine:.6f} (min {m.min_cosine:.6f}), max abs {m.max_abs_error:.3g}, "
                f"rel {m.max_rel_error:.3g}{top1}"
            )
        if self.accuracy is not None and self.reference_accuracy is not None:
            parts.append(f"accuracy {self.accuracy:.2f}% (fp32 reference {self.reference_accuracy:.2f}%)")
        return "; ".join(parts)


def compare(
    reference: Runner,
    candidate: Runner,
    data: Dataset,
    batch: int,
    reporter: Reporter,
) -> AccuracyReport:
    refs: dict[str, list[np.ndarray]] = {}
    outs: dict[str, list[np.ndarray]] = {}
    batches = list(data.batches(batch))
    for feeds in reporter.track(iter(batches), len(batches), "validating"):
        r, c = reference(feeds), candidate(feeds)
        for name, value in r.items():
            refs.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
            outs.setdefault(name, []).append(np.asarray(c[name], dtype=np.float64))
    metrics = [_metrics(n, np.concatenate(refs[n]), np.concatenate(outs[n])) for n in refs]
    report = AccuracyReport(len(data), metrics)
    if data.labels is not None:
        name = next((m.name for m in metrics if m.top1_agreement is not None), None)
        if name is None:
            raise AccuracyGateError("labels were given but no output is shaped [batch, classes]")
        labels = data.labels
        report.reference_accuracy = _accuracy(np.concatenate(refs[name]), labels)
        report.accuracy = _accuracy(np.concatenate(outs[name]), labels)
    return report


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(100.0 * np.mean(scores.reshape(len(labels), -1).argmax(axis=1) == labels))


def _metrics(name: str, ref: np.ndarray, out: np.ndarray) -> OutputMetrics:
    if ref.shape != out.shape:
        raise AccuracyGateError(f"output '{name}': shape {list(out.shape)}, reference {list(ref.shape)}")
    diff = np.abs(ref - out)
    finite = bool(np.isfinite(out).all())
    scale = float(np.abs(ref).max()) or 1.0
    n = ref.shape[0] if ref.ndim else 1
    r, o = ref.reshape(n, -1), out.reshape(n, -1)
    num = (r * o).sum(axis=1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    cos = np.where(
        den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(r).sum(1) == np.abs(o).sum(1), 1, 0)
    )
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(axis=1) == out.argmax(axis=1)))
    return OutputMetrics(
        name=name,
        max_abs_error=float(diff.max()) if finite and diff.size else (0.0 if finite else float("inf")),
        max_rel_error=float(diff.max() / scale)
        if finite and diff.size
        else (0.0 if finite else float("inf")),
        mean_cosine=float(cos.mean()) if finite else 0.0,
        min_cosine=float(cos.min()) if finite else 0.0,
        top1_agreement=top1,
    )


def gate(report: AccuracyReport, tolerance: Tolerance) -> list[str]:
    """The criteria the report fails; also stored in ``report.failures``."""
    failures = []
    for m in report.outputs:
        if tolerance.min_cosine is not None and m.mean_cosine < tolerance.min_cosine:
            failures.append(f"{m.name}: cosine similarity {m.mean_cosine:.6f} < {tolerance.min_cosine}")
        if tolerance.max_rel_error is not None and m.max_rel_error > tolerance.max_rel_error:
            failures.append(f"{m.name}: relative error {m.max_rel_error:.3g} > {tolerance.max_rel_error}")
        if tolerance.max_abs_error is not None and m.max_abs_error > tolerance.max_abs_error:
            failures.append(f"{m.name}: absolute error {m.max_abs_error:.3g} > {tolerance.max_abs_error}")
        if (
            tolerance.min_top1_agreement is not None
            and m.top1_agreement is not None
            and m.top1_agreement < tolerance.min_top1_agreement
        ):
            failures.append(
                f"{m.name}: top-1 agreement {m.top1_agreement:.4f} < {tolerance.min_top1_agreement}"
            )
    if (
        tolerance.max_accuracy_drop is not None
        and report.accuracy is not None
        and report.reference_accuracy is not None
        and report.reference_accuracy - report.accuracy > tolerance.max_accuracy_drop
    ):
        failures.append(
            f"accuracy {report.accuracy:.2f}% is {report.reference_accuracy - report.accuracy:.2f} points below "
            f"the FP32 reference {report.reference_accuracy:.2f}% (allowed {tolerance.max_accuracy_drop})"
        )
    report.failures = failures
    return failures
