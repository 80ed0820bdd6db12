"""The /metrics text exposition, written as Triton writes it.

prometheus-client's own writer names every counter's ``# HELP`` / ``# TYPE`` lines ``<name>_total``, while
Triton's counters (``nv_inference_request_success``) carry no suffix, so a scraper would read them as untyped. Here
the ``# HELP`` / ``# TYPE`` lines use the samples' own name: Triton's metrics keep theirs, and metrics whose
samples do end in ``_total`` (process_cpu_seconds_total) are written exactly as prometheus-client would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() or abs(value) >= 1e15 else str(int(value))


def _family_name(metric: Metric) -> str:
    samples = [s for s in metric.samples if not s.name.endswith("_created")]
    if metric.type == "counter" and samples and all(s.name == metric.name + "_total" for s in samples):
        return metric.name + "_total"
    return metric.name


def render(registry: CollectorRegistry) -> bytes:
    lines: list[str] = []
    for metric in registry.collect():
        name = _family_name(metric)
        kind = "untyped" if metric.type == "unknown" else metric.type
        lines.append(f"# HELP {name} {_escape_help(metric.documentation)}")
        lines.append(f"# TYPE {name} {kind}")
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sample.labels.items())
            label_text = f"{{{labels}}}" if labels else ""
            lines.append(f"{sample.name}{label_text} {_value(sample.value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def metrics_app(registry: CollectorRegistry) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A minimal ASGI app: ``GET /metrics`` (and ``/``) renders the registry; anything else is 404."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] not in ("/metrics", "/"):
            body, status, ctype = (
                b'{"error": "no such endpoint; metrics are at /metrics"}',
                404,
                "application/json",
            )
        else:
            body, status, ctype = render(registry), 200, CONTENT_TYPE
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
