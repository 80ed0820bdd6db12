"""A Python model's worker process (``KILN_ISOLATION: process``): hosts one instance's ``TritonPythonModel``,
answers the server over a socket pair, and sends BLS calls, repository calls and metric updates back to it.

Run by the server as ``python -c "from kiln.backends.python.worker import main; main(FD)"``, possibly under
another interpreter (``EXECUTION_ENV_PATH``): it needs only numpy and Kiln's light modules.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kiln.backends.python import ipc, shared
from kiln.backends.python.runner import ModelRunner
from kiln.errors import InternalError, KilnError
from kiln.types import InferRequest, InferResponse


class Channel:
    """The worker's end of the socket: sends from any thread; calls that wait for the server's answer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.waiting: dict[int, queue.SimpleQueue[tuple[str, Any]]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self.conn.send(message)

    def call(self, method: str, *args: Any) -> Any:
        call_id = next(self._ids)
        answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.waiting[call_id] = answers
        try:
            self.send(("call", call_id, method, args))
            kind, value = answers.get()
        finally:
            self.waiting.pop(call_id, None)
        if kind == "error":
            raise ipc.unpack_error(value)
        return value

    def stream(self, method: str, *args: Any) -> Iterator[Any]:
        call_id = next(self._ids)
        answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.waiting[call_id] = answers
        try:
            self.send(("call", call_id, method, args))
            while True:
                kind, value = answers.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise ipc.unpack_error(value)
                else:
                    return
        finally:
            self.waiting.pop(call_id, None)


class RemoteCaller:
    """The model caller, over the channel: BLS and the repository API go through the server's core."""

    loop = None

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def infer_sync(self, request: InferRequest) -> InferResponse:
        return ipc.unpack_response(self.channel.call("infer", ipc.pack_request(request)))

    def stream_sync(self, request: InferRequest) -> Iterator[InferResponse]:
        for item in self.channel.stream("stream", ipc.pack_request(request)):
            yield ipc.unpack_response(item)

    def load_sync(self, name: str, parameters: dict[str, Any]) -> None:
        self.channel.call("load", name, parameters)

    def unload_sync(self, name: str, parameters: dict[str, Any]) -> None:
        self.channel.call("unload", name, parameters)

    def ready_sync(self, name: str, version: str = "") -> bool:
        return bool(self.channel.call("ready", name, version))


class RemoteMetrics:
    """Custom metrics whose values live in the server (exported on its /metrics)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def family(self, name: str, description: str, kind: int) -> _RemoteFamily:
        self.channel.call("metric_family", name, description, kind)
        return _RemoteFamily(self.channel, name)


class _RemoteFamily:
    def __init__(self, channel: Channel, name: str) -> None:
        self.channel, self.name = channel, name

    def metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> _RemoteMetric:
        key = self.channel.call("metric_new", self.name, labels, buckets)
        return _RemoteMetric(self.channel, key)

    def remove(self, metric: _RemoteMetric) -> None:
        self.channel.send(("metric_op", metric.key, "remove", 0.0))


class _RemoteMetric:
    def __init__(self, channel: Channel, key: int) -> None:
        self.channel, self.key = channel, key

    def increment(self, value: float) -> None:
        self.channel.call("metric_op", self.key, "increment", value)

    def set(self, value: float) -> None:
        self.channel.call("metric_op", self.key, "set", value)

    def observe(self, value: float) -> None:
        self.channel.call("metric_op", self.key, "observe", value)

    def value(self) -> float:
        return float(self.channel.call("metric_op", self.key, "value", 0.0))


class _Sender:
    """Replies of a non-decoupled model made during its execute ride on the batch's ``done`` message (one socket
    round trip per batch); a decoupled model's go out at once, as they are produced."""

    def __init__(self, channel: Channel, request_id: int, batch: list[tuple[Any, ...]] | None) -> None:
        self.channel, self.request_id, self.closed = channel, request_id, False
        self.batch = batch  # the executing batch's collected replies, None to send each at once

    def send(self, outputs: Any = None, *, final: bool = False, parameters: Any = None) -> None:
        self._check(final)
        packed = None if outputs is None else ipc.pack_arrays(outputs)
        self._out(("reply", self.request_id, packed, None, final, dict(parameters or {})))

    def fail(self, error: BaseException, final: bool = True) -> None:
        self._check(final)
        self._out(("reply", self.request_id, None, ipc.pack_error(error), final, {}))

    def _out(self, reply: tuple[Any, ...]) -> None:
        batch = self.batch
        if batch is not None:
            batch.append(reply)
        else:
            self.channel.send(reply)

    def _check(self, final: bool) -> None:
        if self.closed:
            raise InternalError(
                "unable to send response: the response sender is closed (the final response was sent)"
            )
        self.closed = final


class _Work:
    def __init__(self, channel: Channel, cancelled: set[int], batch: list[tuple[Any, ...]] | None,
                 request_id: int, fields: dict[str, Any], outputs: list[str]) -> None:  # fmt: skip
        self.request_id = request_id
        self.request = ipc.unpack_request(fields)
        self.feeds = {t.name: t.data for t in self.request.inputs}
        self.outputs = outputs
        self.sender = _Sender(channel, request_id, batch)
        self._cancelled = cancelled

    def is_cancelled(self) -> bool:
        return self.request_id in self._cancelled


def main(fd: int) -> None:
    conn = Connection(fd)
    channel = Channel(conn)
    shared.state["caller"] = RemoteCaller(channel)
    shared.state["metrics"] = RemoteMetrics(channel)
    cancelled: set[int] = set()
    jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
    runner: ModelRunner | None = None

    def run_jobs() -> None:
        while (job := jobs.get()) is not None:
            kind, batch_id, payload = job
            error = None
            replies: list[tuple[Any, ...]] = []
            try:
                if kind == "init":
                    nonlocal runner
                    path, config, instance, auto_complete = payload
                    runner = ModelRunner(Path(path), config, instance)
                    if auto_complete:
                        runner.auto_complete()
                    runner.initialize()
                    channel.send(("done", batch_id, None, runner.config, []))
                    continue
                assert runner is not None
                if kind == "execute":
                    batch = None if runner.decoupled else replies
                    works = [_Work(channel, cancelled, batch, *item) for item in payload]
                    try:
                        runner.execute(works)
                    finally:
                        for work in works:  # a reply sent later (from another thread) goes out at once
                            work.sender.batch = None
                elif kind == "finalize":
                    runner.finalize()
            except BaseException as e:  # answered to the server, never raised here
                error = ipc.pack_error(
                    e if isinstance(e, KilnError) else InternalError(f"{type(e).__name__}: {e}")
                )
            channel.send(("done", batch_id, error, None, replies))
            if kind == "finalize":
                return

    def answer_ready(batch_id: int) -> None:
        channel.send(("done", batch_id, None, None if runner is None else runner.ready(), []))

    executor = threading.Thread(target=run_jobs, name="kiln-python-execute", daemon=True)
    executor.start()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the server went away
        kind = message[0]
        if kind in ("init", "execute", "finalize"):
            jobs.put(message)
            if kind == "finalize":
                executor.join()
                break
        elif kind == "ready":
            threading.Thread(target=answer_ready, args=(message[1],), daemon=True).start()
        elif kind == "answer":
            _, call_id, answer_kind, value = message
            waiting = channel.waiting.get(call_id)
            if waiting is not None:
                waiting.put((answer_kind, value))
        elif kind == "cancel":
            cancelled.add(message[1])
    sys.exit(0)
