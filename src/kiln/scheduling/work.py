"""What travels between the core, a scheduler and a backend: one request's :class:`Work`, and the
:class:`ResponseSender` its answers go to.

A backend answers through the sender: a non-decoupled model exactly one response (or error), a decoupled model
zero or more responses and then the final flag. The sender is thread-safe: a backend may answer from any thread,
during or after its ``execute``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from kiln.errors import InternalError, KilnError
from kiln.types import InferRequest

_NO_PARAMETERS: Mapping[str, Any] = MappingProxyType({})
_CLOSED = "unable to send response: the response sender is closed (the final response was sent)"


@dataclass
class Batch:
    """What one execution did, for statistics: attributed to every request in it."""

    size: int
    queue_ns: int = 0  # this request's wait before its batch started
    input_ns: int = 0  # merging inputs
    infer_ns: int = 0
    output_ns: int = 0  # splitting outputs


class Reply(NamedTuple):
    """One response as a backend produced it (outputs by name), or its error; ``final`` closes the request."""

    outputs: Mapping[str, np.ndarray] | None = None
    error: BaseException | None = None
    final: bool = True
    parameters: Mapping[str, Any] = _NO_PARAMETERS


class ResponseSender:
    """Collects one request's replies and hands them to the core on its event loop.

    ``decoupled=False``: exactly one reply, and it is final. ``decoupled=True``: replies stream out as they are sent
    (:meth:`next`), the last one carries ``final``; a final flag alone (no outputs) is allowed.
    """

    __slots__ = ("_future", "_lock", "_loop", "_queue", "_reply", "closed", "decoupled")

    def __init__(self, loop: asyncio.AbstractEventLoop, decoupled: bool = False) -> None:
        self._loop = loop
        self.decoupled = decoupled
        self.closed = False
        self._lock = threading.Lock()
        self._reply: Reply | None = None  # non-decoupled: the answer, once given
        self._future: asyncio.Future[Reply] | None = None  # non-decoupled: made only when the core must wait
        self._queue: asyncio.Queue[Reply] | None = asyncio.Queue() if decoupled else None

    # -- the backend's side (any thread) -------------------------------------------------------------------
    def send(
        self,
        outputs: Mapping[str, np.ndarray] | None = None,
        *,
        final: bool = False,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        """Send one response (``outputs``), or only the final flag (``outputs`` None, ``final`` True)."""
        if outputs is None and not final:
            raise InternalError("a response needs outputs, or the final flag")
        if not self.decoupled:
            if outputs is None:
                raise InternalError("a non-decoupled model must send exactly one response; it sent none")
            final = True
        self._deliver(Reply(outputs, None, final, parameters or _NO_PARAMETERS))

    def fail(self, error: BaseException, final: bool = True) -> None:
        """Answer with an error (a non-decoupled request ends with it; a decoupled one ends if ``final``)."""
        self._deliver(Reply(None, error, final or not self.decoupled))

    def fail_if_open(self, error: BaseException) -> None:
        """End the request with ``error`` unless it has already been answered in full."""
        with self._lock:
            if self.closed:
                return
        try:
            self.fail(error)
        except KilnError:
            pass  # closed meanwhile by another thread

    def _deliver(self, reply: Reply) -> None:
        on_loop = _running_loop() is self._loop
        with self._lock:
            if self.closed:
                raise InternalError(_CLOSED)
            self.closed = reply.final
            if self._queue is None and not on_loop:
                # from a worker thread: store the answer; wake the loop only if the core already waits for it
                # (usually it does not yet: it first waits for the execute call that is sending this)
                self._reply = reply
                waiting = self._future
                if waiting is None:
                    return
        if on_loop:
            self._put(reply)
        else:
            self._loop.call_soon_threadsafe(self._put, reply)

    def _put(self, reply: Reply) -> None:
        if self._queue is not None:
            self._queue.put_nowait(reply)
            return
        self._reply = reply
        if self._future is not None and not self._future.done():
            self._future.set_result(reply)

    # -- the core's side (the event loop) ------------------------------------------------------------------
    async def result(self) -> Reply:
        """The one reply of a non-decoupled request."""
        assert self._queue is None, "result() is for non-decoupled requests; use next()"
        if self._reply is not None:
            return self._reply
        with self._lock:  # against a worker thread storing the answer right now (see _deliver)
            if self._reply is not None:
                return self._reply
            if self._future is None:
                self._future = self._loop.create_future()
        return await self._future

    async def next(self) -> Reply:
        """The next reply of a decoupled request (the last has ``final``)."""
        assert self._queue is not None, "next() is for decoupled requests; use result()"
        return await self._queue.get()


_running_loop = asyncio._get_running_loop  # None off the loop; the public call raises instead (slower)


@dataclass(eq=False)
class Work:
    """One request as schedulers and backends see it: its identity (``request``: id, parameters, correlation id,
    sequence flags, priority, timeout, cancellation), the checked inputs in the model's shapes, the outputs to
    compute, and where its answers go."""

    request: InferRequest
    feeds: dict[str, np.ndarray]
    outputs: list[str]
    batch_size: int
    sender: ResponseSender
    timing: Batch | None = None  # set by the scheduler once executed (statistics)
    trace: Any = None  # the request's trace when it is traced (kiln.tracing; BLS calls pass it on)

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def timeout_us(self) -> int | None:
        return self.request.timeout_us

    def is_cancelled(self) -> bool:
        return self.request.cancellation.cancelled
