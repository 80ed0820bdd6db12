"""Custom metrics that models register (the Python backend's ``pb_utils.MetricFamily``), exported on /metrics
beside Triton's own. Counters, gauges and histograms; each metric of a family is one label set."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric

from kiln.errors import InvalidArgumentError
from kiln.stats.kinds import MetricKind


class CustomMetric:
    def __init__(
        self, family: CustomFamily, labels: Mapping[str, str], buckets: Sequence[float] | None
    ) -> None:
        self.family = family
        self.labels = dict(labels)
        self._lock = threading.Lock()
        self._value = 0.0
        self.buckets = sorted(float(b) for b in buckets or ())
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.users = 0  # Metric objects holding it (model instances share a label set)

    def increment(self, value: float) -> None:
        if self.family.kind is MetricKind.HISTOGRAM:
            raise InvalidArgumentError(f"metric family '{self.family.name}' is a histogram: use observe()")
        if self.family.kind is MetricKind.COUNTER and value < 0:
            raise InvalidArgumentError(
                f"counter '{self.family.name}' cannot be incremented by a negative value"
            )
        with self._lock:
            self._value += value

    def set(self, value: float) -> None:
        if self.family.kind is not MetricKind.GAUGE:
            raise InvalidArgumentError(
                f"metric family '{self.family.name}' is not a gauge: set() is for gauges"
            )
        with self._lock:
            self._value = float(value)

    def observe(self, value: float) -> None:
        if self.family.kind is not MetricKind.HISTOGRAM:
            raise InvalidArgumentError(f"metric family '{self.family.name}' is not a histogram")
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._value += value  # the sum

    def value(self) -> float:
        with self._lock:
            return self._value

    def histogram(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            cumulative, out = 0, []
            for bound, count in zip([*self.buckets, float("inf")], self._counts, strict=True):
                cumulative += count
                out.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            return out, self._value


class CustomFamily:
    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: dict[tuple[tuple[str, str], ...], CustomMetric] = {}
        self._lock = threading.Lock()

    def metric(self, labels: Mapping[str, str], buckets: Sequence[float] | None = None) -> CustomMetric:
        if self.kind is MetricKind.HISTOGRAM and not buckets:
            raise InvalidArgumentError(f"histogram '{self.name}' needs buckets")
        key = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
        with self._lock:
            metric = self.metrics.get(key)
            if metric is None:  # the same labels again (another instance of the model): the same metric
                metric = self.metrics[key] = CustomMetric(self, dict(key), buckets)
            metric.users += 1
            return metric

    def remove(self, metric: CustomMetric) -> None:
        """One user let go of ``metric``; the last one removes it from the exposition."""
        with self._lock:
            metric.users -= 1
            if metric.users <= 0:
                self.metrics = {k: m for k, m in self.metrics.items() if m is not metric}


class CustomMetrics:
    """All custom families of one server; a prometheus_client collector."""

    def __init__(self) -> None:
        self.families: dict[str, CustomFamily] = {}
        self._lock = threading.Lock()

    def family(self, name: str, description: str, kind: int) -> CustomFamily:
        if not name or not name.replace("_", "a").replace(":", "a").isalnum() or name[0].isdigit():
            raise InvalidArgumentError(f"metric family name '{name}' is not a valid Prometheus metric name")
        try:
            kind = MetricKind(kind)
        except ValueError:
            raise InvalidArgumentError(f"metric family '{name}': unknown kind {kind!r}") from None
        with self._lock:
            existing = self.families.get(name)
            if existing is not None:
                if existing.kind is not kind:
                    raise InvalidArgumentError(
                        f"metric family '{name}' already exists as a {existing.kind.name}"
                    )
                return existing
            family = self.families[name] = CustomFamily(name, description, kind)
            return family

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for family in list(self.families.values()):
            metrics = list(family.metrics.values())
            label_names = sorted({k for m in metrics for k in m.labels})
            if family.kind is MetricKind.HISTOGRAM:
                out: Metric = HistogramMetricFamily(family.name, family.description, labels=label_names)
                for m in metrics:
                    buckets, total = m.histogram()
                    out.add_metric([m.labels.get(k, "") for k in label_names], buckets, total)  # type: ignore[attr-defined]
            else:  # Triton's names: a counter's samples carry no _total suffix
                out = Metric(family.name, family.description, family.kind.name.lower())
                for m in metrics:
                    out.add_sample(family.name, {k: m.labels.get(k, "") for k in label_names}, m.value())
            yield out
