"""Triton's trace extension: ``--trace-config``, ``/v2[/models/{m}]/trace/setting`` and gRPC ``TraceSetting``;
traces written in Triton's trace-file format (triton mode) or exported as OpenTelemetry spans (docs/tracing.md).
OpenTelemetry is imported only in that mode."""

from kiln.tracing.config import TraceConfig, TraceValues
from kiln.tracing.manager import TraceManager

__all__ = ["TraceConfig", "TraceManager", "TraceValues"]
