"""How a trace reaches the calls made on its behalf, without touching the request types.

``CURRENT`` is the trace of the request being served in this task (or thread): an ensemble's steps run in its
task (or tasks created from it), so they see it and become child traces. A Python model's BLS call passes
``trace=request.trace()`` (as in Triton); the call then runs with ``CURRENT`` set in the calling thread, which
``asyncio.run_coroutine_threadsafe`` carries to the server's loop. ``INCOMING`` holds the W3C trace context
(``traceparent``, ``tracestate``) a client sent with the request, set by the transports in OpenTelemetry mode.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TypeVar

CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("kiln_trace", default=None)
INCOMING: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "kiln_trace_incoming", default=None
)
HEADERS = ("traceparent", "tracestate")
T = TypeVar("T")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def carrier_from(lookup: Callable[[str], str | None]) -> dict[str, str] | None:
    """The W3C headers found through ``lookup`` (HTTP headers, gRPC metadata), or None without a traceparent."""
    parent = lookup("traceparent")
    if not parent:
        return None
    carrier = {"traceparent": parent}
    state = lookup("tracestate")
    if state:
        carrier["tracestate"] = state
    return carrier


def with_incoming_context(app: ASGIApp) -> ASGIApp:
    """``app`` with each HTTP request's W3C trace context in ``INCOMING`` (installed in OpenTelemetry mode only:
    other servers keep the bare app)."""

    async def dispatch(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            found = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                     if k.lower() in (b"traceparent", b"tracestate")}  # fmt: skip
            if "traceparent" in found:
                token = INCOMING.set(found)
                try:
                    await app(scope, receive, send)
                finally:
                    INCOMING.reset(token)
                return
        await app(scope, receive, send)

    return dispatch


@contextmanager
def incoming(carrier: dict[str, str] | None) -> Iterator[None]:
    """``INCOMING`` set to ``carrier`` for the block (gRPC: from the call's metadata)."""
    if carrier is None:
        yield
        return
    token = INCOMING.set(carrier)
    try:
        yield
    finally:
        INCOMING.reset(token)


def run_in_trace(trace: Any, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` with ``CURRENT`` set to ``trace`` (a BLS call made with ``trace=request.trace()``)."""
    if trace is None:
        return fn(*args)

    def call() -> T:
        CURRENT.set(trace)
        return fn(*args)

    return contextvars.copy_context().run(call)
