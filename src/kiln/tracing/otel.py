"""OpenTelemetry mode: Triton's spans through ``opentelemetry-sdk``, exported over OTLP/HTTP (protobuf) to the
configured ``url`` by a batch span processor. Imported only in this mode (the ``tracing`` extra).

Spans, as Triton makes them: ``InferRequest`` for the request as the server got it (a child of the caller's span
when the request carried a W3C ``traceparent``), one span named after the model (attributes
``triton.model_name``, ``triton.model_version``, ``triton.trace_id``, ``triton.trace_parent_id``; events
REQUEST_START, QUEUE_START, REQUEST_END), and below it a ``compute`` span (COMPUTE_START, COMPUTE_INPUT_END,
COMPUTE_OUTPUT_START, COMPUTE_END). An ensemble step or a BLS call is a model span under its caller's model span.
Event times are the wall clock (Triton's steady-clock readings shifted by one offset).
"""

from __future__ import annotations

import time
from typing import Any

from kiln.errors import UnavailableError
from kiln.tracing.config import OtelOptions
from kiln.tracing.trace import Stamps, Trace

_COMPUTE = ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END")


class OtelTracer:
    def __init__(self, options: OtelOptions, exporter: Any = None) -> None:
        try:
            from opentelemetry import trace as api
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            raise UnavailableError(
                "--trace-config mode=opentelemetry needs the tracing extra: pip install 'kiln[tracing]'"
            ) from None
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=options.url)
        self._api = api
        self._propagator = TraceContextTextMapPropagator()
        self.provider = TracerProvider(resource=Resource.create(dict(options.resource)))
        self.provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=options.bsp_max_queue_size,
                schedule_delay_millis=options.bsp_schedule_delay,
                max_export_batch_size=options.bsp_max_export_batch_size,
            )
        )
        self.tracer = self.provider.get_tracer("kiln")
        self._offset = time.time_ns() - time.perf_counter_ns()  # steady clock -> wall clock

    def wall(self, ns: int) -> int:
        return ns + self._offset

    def remote_parent(self, carrier: dict[str, str] | None) -> Any:
        """The caller's context from its W3C headers, or None when there is none (or it does not parse)."""
        if carrier is None:
            return None
        context = self._propagator.extract(carrier)
        return context if self._api.get_current_span(context).get_span_context().is_valid else None

    def start(self, trace: Trace, start_ns: int, remote: Any) -> None:
        """Open the spans of ``trace`` (and the group's root span for a top-level request)."""
        api, kind = self._api, self._api.SpanKind.SERVER
        when = self.wall(start_ns)
        if trace.parent is None:
            trace.group.root_span = self.tracer.start_span("InferRequest", remote, kind, start_time=when)
            parent = trace.group.root_span
        else:
            parent = trace.parent.span
        trace.span = self.tracer.start_span(
            trace.model_name,
            api.set_span_in_context(parent),
            kind,
            attributes={
                "triton.model_name": trace.model_name,
                "triton.model_version": trace.model_version,
                "triton.trace_id": trace.id,
                "triton.trace_parent_id": trace.parent.id if trace.parent is not None else 0,
            },
            start_time=when,
        )

    def finish(self, trace: Trace, stamps: Stamps) -> None:
        span = trace.span
        named = dict(stamps)
        for name, ns in stamps:
            if name not in _COMPUTE and name != "REQUEST_END":
                span.add_event(name, timestamp=self.wall(ns))
        if "COMPUTE_START" in named:
            compute = self.tracer.start_span(
                "compute",
                self._api.set_span_in_context(span),
                self._api.SpanKind.SERVER,
                start_time=self.wall(named["COMPUTE_START"]),
            )
            for name in _COMPUTE:
                compute.add_event(name, timestamp=self.wall(named[name]))
            compute.end(end_time=self.wall(named["COMPUTE_END"]))
        end = self.wall(named["REQUEST_END"])
        span.add_event("REQUEST_END", timestamp=end)
        if trace.error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, str(trace.error)))
        span.end(end_time=end)
        if trace.parent is None and trace.group.root_span is not None:
            trace.group.root_span.end(end_time=end)

    def close(self) -> None:
        self.provider.shutdown()  # exports what the batch processor still holds
