"""Blocking code on the event loop without blocking it: a backend's synchronous execute (a Python model) runs in
a greenlet on the loop's thread, and where it would block on the core (a BLS call, ``load_model``) it switches
back to the loop, which awaits the call and switches in again with the answer. No thread hop either way.

The scheduler uses this only for per-request executions measured to take microseconds (as it inlines fast
merged-batch runtimes): anything slower runs on a worker thread (:func:`timed`), where a blocking call waits on a
``concurrent.futures`` future instead (:func:`result`). That waiting is counted apart, so the measurement is of
the model's own work, not of the models it calls.

One case must never run on the loop: a model whose execute waits for threads of its own that call the core
(a BLS call from a helper thread needs the loop, which the execute would be holding). Such calls are counted
(:func:`foreign_waits`): the scheduler stops inlining a model during whose executions one happened, and a helper
thread that finds the loop held by one execution for over :data:`STALL_S` gives up with an error instead of
waiting for ever.

``greenlet`` is optional here: a Python-model worker under another interpreter (``EXECUTION_ENV_PATH``) may not
have it, and never runs anything on a server loop; :func:`inside` is then always False.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kiln.errors import UnavailableError

try:
    from greenlet import getcurrent, greenlet
except ImportError:  # pragma: no cover - workers under interpreters without greenlet
    getcurrent = None
    greenlet = object

T = TypeVar("T")
STALL_S = 1.0  # a helper thread's call gives up when one inline execution has held the loop this long

_POLL_S = 0.05
# .ns: time this thread waited for the loop; .executing: inside timed(); .service: see service_thread()
_local = threading.local()
# foreign: waits from threads not running an execute; segment: when the running inline segment began (0: none)
_state = {"foreign": 0, "segment": 0.0}


class _Bridge(greenlet):  # type: ignore[misc,valid-type]
    """A greenlet running blocking code for an event-loop task (its parent)."""


def inside() -> bool:
    """Whether this code runs in a bridge greenlet (on the loop's thread): block with :func:`wait`, not a lock."""
    return getcurrent is not None and isinstance(getcurrent(), _Bridge)


def wait(awaitable: Awaitable[Any]) -> Any:
    """From code inside a bridge greenlet: the result of ``awaitable``, awaited by the loop meanwhile."""
    current = getcurrent() if getcurrent is not None else None
    if not isinstance(current, _Bridge):
        raise RuntimeError("bridge.wait() outside a bridge greenlet")
    return current.parent.switch(awaitable)


async def run(fn: Callable[..., Any], *args: Any, cpu: bool = False) -> tuple[Any, int, int, int]:
    """``fn(*args)`` on this thread, in a bridge greenlet; returns its result, the wall time, the time it ran
    (without the time its :func:`wait` calls took) and, with ``cpu``, the CPU time this thread used meanwhile
    (less than the time it ran when it sleeps or waits for I/O; 0 without ``cpu``: the clock costs a system call)."""
    clock = time.thread_time_ns if cpu else _zero
    start = time.perf_counter_ns()
    cpu_start = clock()
    task = _Bridge(fn)
    busy = used = 0
    resumed, cpu_resumed = start, cpu_start
    try:
        _state["segment"] = time.perf_counter()
        pending = task.switch(*args)
        while not task.dead:
            busy += time.perf_counter_ns() - resumed
            used += clock() - cpu_resumed
            _state["segment"] = 0.0
            try:
                value = await pending
            except BaseException as e:  # the awaited call's error is raised where the greenlet waits for it
                resumed, cpu_resumed = time.perf_counter_ns(), clock()
                _state["segment"] = time.perf_counter()
                pending = task.throw(e)
            else:
                resumed, cpu_resumed = time.perf_counter_ns(), clock()
                _state["segment"] = time.perf_counter()
                pending = task.switch(value)
    finally:
        _state["segment"] = 0.0
    end = time.perf_counter_ns()
    return pending, end - start, busy + end - resumed, used + clock() - cpu_resumed


def _zero() -> int:
    return 0


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, int, int, int]:
    """On a worker thread: ``fn(*args)``, the wall time, the time without its waits for the loop, and the CPU
    time this thread used meanwhile."""
    waited = getattr(_local, "ns", 0)
    _local.executing = True
    cpu = time.thread_time_ns()
    start = time.perf_counter_ns()
    try:
        results = fn(*args)
    finally:
        _local.executing = False
    ns = time.perf_counter_ns() - start
    return results, ns, ns - (getattr(_local, "ns", 0) - waited), time.thread_time_ns() - cpu


def result(future: concurrent.futures.Future[T]) -> T:
    """From a thread other than the loop's: the result of ``future``, which the loop computes."""
    return _waiting(lambda: future.result(timeout=_POLL_S), concurrent.futures.TimeoutError, future.cancel)


def get(items: queue.SimpleQueue[T]) -> T:
    """From a thread other than the loop's: the next item the loop puts in ``items``."""
    return _waiting(lambda: items.get(timeout=_POLL_S), queue.Empty, lambda: None)


def _waiting(poll: Callable[[], T], timeout: type[BaseException], give_up: Callable[[], Any]) -> T:
    start = time.perf_counter_ns()
    if not (getattr(_local, "executing", False) or getattr(_local, "service", False)):
        _state["foreign"] += 1
    try:
        while True:
            try:
                return poll()
            except timeout:
                segment = _state["segment"]
                if segment and time.perf_counter() - segment > STALL_S:
                    give_up()
                    raise UnavailableError(
                        "a model call from a model's own thread found the server's loop held by a model "
                        "execution that waits for it; that model now runs on worker threads, retry"
                    ) from None
    finally:
        _local.ns = getattr(_local, "ns", 0) + time.perf_counter_ns() - start


def service_thread() -> None:
    """Marks this thread as one that makes model calls on behalf of something no execute waits for (a Python
    worker process's BLS calls): its waits are not foreign ones."""
    _local.service = True


def foreign_waits() -> int:
    """How many waits for the loop threads other than an execute's own have made (see the module's text)."""
    return _state["foreign"]
