"""``pb_utils.MetricFamily`` and ``Metric``: custom metrics on Kiln's /metrics (the server's registry in process,
a proxy to it in a worker process)."""

from __future__ import annotations

from typing import Any

from kiln.backends.python.shared import TritonModelException, current_model, state
from kiln.errors import KilnError
from kiln.stats.kinds import MetricKind

# Triton's stub exports the kinds three ways, and models use all three: pb_utils.MetricKind.COUNTER,
# pb_utils.COUNTER and pb_utils.MetricFamily.COUNTER.
COUNTER, GAUGE, HISTOGRAM = MetricKind.COUNTER, MetricKind.GAUGE, MetricKind.HISTOGRAM


class MetricFamily:
    """A custom metric family on Kiln's /metrics. Each ``Metric`` is one label set; ``model`` and ``version``
    labels are added from the model that creates it unless given."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: int) -> None:
        registry = state.get("metrics")
        if registry is None:
            raise TritonModelException("custom metrics need a running Kiln server")
        try:
            self._family = registry.family(name, description, kind)
        except KilnError as e:
            raise TritonModelException(e.message) from None
        self.name, self.description, self.kind = name, description, kind

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        return Metric(self, labels, buckets)


class Metric:
    def __init__(
        self, family: MetricFamily, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> None:
        full = dict(labels or {})
        model = current_model.get()
        if model is not None:
            full.setdefault("model", model[0])
            full.setdefault("version", model[1])
        try:
            self._metric = family._family.metric(full, buckets)
        except KilnError as e:
            raise TritonModelException(e.message) from None
        self._family = family._family

    def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except KilnError as e:
            raise TritonModelException(e.message) from None

    def increment(self, value: float) -> None:
        self._do(self._metric.increment, value)

    def set(self, value: float) -> None:
        self._do(self._metric.set, value)

    def observe(self, value: float) -> None:
        self._do(self._metric.observe, value)

    def value(self) -> float:
        return self._metric.value()

    def __del__(self) -> None:  # Triton removes a metric when its object goes away
        family = getattr(self, "_family", None)
        if family is not None:
            family.remove(self._metric)
