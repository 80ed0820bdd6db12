"""One sampled request (a :class:`Trace`), the group it belongs to (a request and its ensemble steps / BLS calls,
written together), and the setting that sampled it (:class:`Sampler`: rate, count, the traces collected so far
and when they are written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from kiln.tracing.config import TraceValues
from kiln.tracing.files import TraceFile

if TYPE_CHECKING:
    from kiln.scheduling import Batch

Stamps = list[tuple[str, int]]


class Sampler:
    """One trace setting in force (global or one model's): samples 1 in ``rate`` requests while ``count`` lasts,
    and collects the finished traces. A new setting replaces the object (its counters start again); the old one
    writes what it holds once its last trace has finished."""

    def __init__(self, values: TraceValues, file: TraceFile | None, propagated: bool) -> None:
        self.values = values
        self.file = file
        self.count = values.count
        self.seen = 0  # requests counted for the rate
        self.open = 0  # traces sampled here and not finished
        self.buffer: list[str] = []  # finished trace groups not written yet
        self.retired = False
        # OpenTelemetry: a request carrying a trace context is traced whatever the rate and count
        self.propagated = propagated

    @property
    def on(self) -> bool:
        return bool(self.values.level)

    def sample(self, forced: bool) -> bool:
        if not self.values.level:
            return False
        hit = False
        rate = self.values.rate
        if rate and self.count != 0:
            self.seen += 1
            hit = self.seen % rate == 0
            if hit and self.count > 0:
                self.count -= 1
        return hit or (forced and self.propagated)

    @property
    def exhausted(self) -> bool:
        return self.count == 0

    def collect(self, group: str) -> None:
        """A finished group (triton mode: its records as JSON). Written to ``FILE.<i>`` every ``log_frequency``
        groups; with ``log_frequency`` 0, to ``FILE`` once the count is used up, on a setting change or at the
        end (Triton writes there only at the end; Kiln's file is a valid JSON list after each write)."""
        self.buffer.append(group)
        frequency = self.values.log_frequency
        if frequency and len(self.buffer) >= frequency:
            self.flush()
        elif self.count == 0 and self.open == 0:
            self.flush()

    def retire(self) -> None:
        self.retired = True
        if self.open == 0:
            self.flush()

    def flush(self) -> None:
        items, self.buffer = self.buffer, []
        if self.file is None or not items:
            return
        if self.values.log_frequency:
            self.file.write_indexed(items)
        else:
            self.file.append(items)


@dataclass(eq=False)
class Group:
    """A top-level traced request and the child traces made on its behalf (written together, as Triton does)."""

    manager: Any  # the TraceManager that sampled it
    sampler: Sampler
    pending: int = 0
    records: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    root_span: Any = None  # OpenTelemetry: the "InferRequest" span

    def serialize(self) -> str:
        self.records.sort(key=lambda r: r[0])
        return ",".join(orjson.dumps(r).decode() for _, records in self.records for r in records)


class Trace:
    """One traced request (top-level, or a child with a ``parent``)."""

    __slots__ = (
        "ensemble", "error", "group", "id", "model_name", "model_version", "parent", "request_id", "span",
    )  # fmt: skip

    def __init__(
        self, trace_id: int, group: Group, parent: Trace | None, model: Any, request_id: str
    ) -> None:
        self.id = trace_id
        self.group = group
        self.parent = parent
        self.model_name: str = model.name
        self.model_version = int(model.version)
        self.request_id = request_id
        self.ensemble = model.config.platform == "ensemble"
        self.error: BaseException | None = None
        self.span: Any = None  # OpenTelemetry: this request's span

    def end(self, start_ns: int, queued_ns: int, timing: Batch | None) -> None:
        """The request was released (answered, failed or cancelled): record it."""
        self.group.manager.end(self, start_ns, queued_ns, timing)

    def triton_records(self, stamps: Stamps) -> list[dict[str, Any]]:
        """Triton's trace-file objects for this trace: its identity, then one object per timestamp."""
        head: dict[str, Any] = {
            "id": self.id,
            "model_name": self.model_name,
            "model_version": self.model_version,
        }
        if self.request_id:
            head["request_id"] = self.request_id
        if self.parent is not None:
            head["parent_id"] = self.parent.id
        return [head, *({"id": self.id, "timestamps": [{"name": n, "ns": ns}]} for n, ns in stamps)]


def timestamps(start: int, queued: int, timing: Batch | None, end: int, compute: bool) -> Stamps:
    """Triton's timestamps (steady-clock ns) from what the core and the scheduler measured: the compute ones
    from the execution's queue wait and its input / infer / output durations; none for an ensemble (it has no
    execution of its own: its steps have theirs) or a request that never ran (a cache hit, a rejection)."""
    stamps: Stamps = [("REQUEST_START", start), ("QUEUE_START", queued)]
    if timing is not None and compute:
        begin = min(queued + timing.queue_ns, end)
        inputs = min(begin + timing.input_ns, end)
        outputs = min(inputs + timing.infer_ns, end)
        stamps += [
            ("COMPUTE_START", begin),
            ("COMPUTE_INPUT_END", inputs),
            ("COMPUTE_OUTPUT_START", outputs),
            ("COMPUTE_END", min(outputs + timing.output_ns, end)),
        ]
    stamps.append(("REQUEST_END", end))
    return stamps
