"""The trace extension's state: the global setting and each model's, with Triton's fallback rules, and the two
calls the core makes for a request while tracing can sample (:meth:`TraceManager.begin` at admission,
:meth:`TraceManager.end` when it is released).

A model's setting holds only what was set for it; every other field follows the global setting (also when the
global setting changes later). ``null`` clears a field; a model with no field of its own left uses the global
setting. Each change replaces the setting in force, so its sampling counters start again and what it collected
is written once its traces have finished (as Triton does).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kiln.tracing.config import CLEAR, TraceConfig, TraceValues, check, parse_changes, render
from kiln.tracing.context import CURRENT, INCOMING
from kiln.tracing.files import TraceFile
from kiln.tracing.trace import Group, Sampler, Trace, timestamps

if TYPE_CHECKING:
    from kiln.core import Core
    from kiln.tracing.otel import OtelTracer


class TraceManager:
    def __init__(self, config: TraceConfig, otel: OtelTracer | None = None) -> None:
        self.config = config
        self.otel = otel
        if config.mode == "opentelemetry" and otel is None:
            from kiln.tracing.otel import OtelTracer

            self.otel = OtelTracer(config.otel)
        self._files: dict[str, TraceFile] = {}
        self._ids = itertools.count(1)
        self._global = self._sampler(config.values)
        self._own: dict[str, dict[str, Any]] = {}  # model -> the fields set for it
        self._models: dict[str, Sampler] = {}
        self._core: Core | None = None

    @property
    def propagates(self) -> bool:
        """Whether the transports should hand the client's W3C trace context over (OpenTelemetry mode)."""
        return self.otel is not None

    def attach(self, core: Core) -> None:
        """Serve ``core``'s trace extension; ``core.tracer`` is this manager while any setting can sample."""
        core.tracing = self
        self._core = core
        self._refresh()

    def _refresh(self) -> None:
        if self._core is not None:
            samplers = [self._global, *self._models.values()]
            live = any(s.on and (s.count != 0 or s.propagated) for s in samplers)
            self._core.tracer = self if live else None

    def _sampler(self, values: TraceValues) -> Sampler:
        file = None
        if self.config.mode == "triton" and values.file:
            file = self._files.setdefault(values.file, TraceFile(values.file))
        return Sampler(values, file, propagated=self.otel is not None)

    # -- the extension -------------------------------------------------------------------------------------
    def get(self, model: str = "") -> dict[str, object]:
        sampler = self._models.get(model, self._global) if model else self._global
        return render(replace(sampler.values, count=sampler.count), self.config)  # the count left, as Triton

    def update(self, model: str, doc: Mapping[str, object]) -> dict[str, object]:
        current = self._models.get(model, self._global).values if model else self._global.values
        changes = parse_changes(doc, current, self.config)
        if not model:
            values = replace(
                self._global.values,
                **{k: getattr(self.config.values, k) if v is CLEAR else v for k, v in changes.items()},
            )
            self._checked(values, "global")
            self._replace_global(values)
        else:
            own = {**self._own.get(model, {}), **changes}
            own = {k: v for k, v in own.items() if v is not CLEAR}
            values = replace(self._global.values, **own)
            if own:
                self._checked(values, f"model '{model}'")
            self._set_model(model, own, values)
        self._refresh()
        return self.get(model)

    def _checked(self, values: TraceValues, which: str) -> None:
        check(values, self.config.mode, f"the {which} trace setting")

    def _replace_global(self, values: TraceValues) -> None:
        old, self._global = self._global, self._sampler(values)
        old.retire()
        for name, own in self._own.items():  # models that follow the global setting in some field
            self._set_model(name, own, replace(values, **own))

    def _set_model(self, model: str, own: dict[str, Any], values: TraceValues) -> None:
        old = self._models.pop(model, None)
        if old is not None:
            old.retire()
        if own:
            self._own[model] = own
            self._models[model] = self._sampler(values)
        else:
            self._own.pop(model, None)

    def close(self) -> None:
        """Write what every setting still holds; flush the OpenTelemetry exporter."""
        for sampler in [self._global, *self._models.values()]:
            sampler.retire()
        if self.otel is not None:
            self.otel.close()

    # -- the core's two calls ------------------------------------------------------------------------------
    def begin(self, request: Any, model: Any, work: Any, start_ns: int) -> Trace | None:
        """At admission: the request's trace (a child of the one in ``CURRENT``, or newly sampled), or None."""
        parent: Trace | None = CURRENT.get()
        remote = None
        if parent is not None:
            group = parent.group
        else:
            sampler = self._models.get(model.name, self._global)
            if self.otel is not None:
                remote = self.otel.remote_parent(INCOMING.get())
            if not sampler.sample(forced=remote is not None):
                if sampler.exhausted:
                    self._refresh()
                return None
            sampler.open += 1
            group = Group(self, sampler)
        group.pending += 1
        trace = Trace(next(self._ids), group, parent, model, request.id)
        if self.otel is not None:
            self.otel.start(trace, start_ns, remote)
        CURRENT.set(trace)
        work.trace = trace
        return trace

    def end(self, trace: Trace, start_ns: int, queued_ns: int, timing: Any) -> None:
        """When the request is released (answered, failed or cancelled)."""
        now = time.perf_counter_ns()
        CURRENT.set(trace.parent)
        stamps = timestamps(start_ns, queued_ns, timing, now, compute=not trace.ensemble)
        group = trace.group
        if self.otel is not None:
            self.otel.finish(trace, stamps)
        else:
            group.records.append((trace.id, trace.triton_records(stamps)))
        group.pending -= 1
        if group.pending == 0:
            sampler = group.sampler
            sampler.open -= 1
            if self.otel is None:
                sampler.collect(group.serialize())
            if sampler.retired and sampler.open == 0:
                sampler.flush()
            if sampler.exhausted:
                self._refresh()
