"""The server's side of an isolated Python model instance: one worker process, its socket, and the threads that
answer it. A worker that dies (or whose ``execute`` overruns ``KILN_EXECUTE_TIMEOUT_S``) fails the requests it
held with a clear UNAVAILABLE error, makes the model report UNAVAILABLE, and is started again."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import kiln
from kiln import bridge
from kiln.backends.base import ModelCaller
from kiln.backends.python import ipc
from kiln.errors import InternalError, KilnError, ModelLoadError, UnavailableError
from kiln.scheduling.work import Work

log = logging.getLogger(__name__)

INIT_TIMEOUT_S = 300.0
RESTART_DELAY_S = 0.5


class _LoopDone:
    """A batch's end, for a caller awaiting it on an event loop; ``set()`` from the reader thread (or when the
    worker dies), as for a ``threading.Event``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._resolve)
        except RuntimeError:  # the loop is closed: nobody awaits it any more
            pass

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class WorkerProcess:
    def __init__(
        self,
        name: str,
        python: str,
        init: tuple[str, dict[str, Any], dict[str, str], bool],
        caller: ModelCaller | None,
        metrics: Any,
        execute_timeout_s: float = 0.0,
    ) -> None:
        self.name = name  # model name / instance, for messages
        self.python = python
        self.init = init  # (model.py path, config JSON dict, instance args, auto-complete)
        self.caller = caller
        self.metrics = metrics
        self.execute_timeout_s = execute_timeout_s
        self.dead: str | None = None  # why the instance cannot serve right now
        self._stopped_because = ""  # set when the server stops a hung worker itself
        self.closing = False
        self.pending: dict[int, Work] = {}
        self._batches: dict[int, tuple[threading.Event | _LoopDone, list[Any]]] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        # these threads make a worker's model calls; no execute on the loop ever waits for them
        self._calls = ThreadPoolExecutor(
            4, thread_name_prefix=f"kiln-python-calls-{name}", initializer=bridge.service_thread
        )
        self._metric_handles: dict[int, Any] = {}
        self.restarts = 0
        self.completed_config: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Spawn the worker and initialise the model in it; returns the (auto-completed) config."""
        parent, child = socket.socketpair()
        env = dict(os.environ)
        source = str(Path(kiln.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
        command = [self.python, "-c", f"from kiln.backends.python.worker import main; main({child.fileno()})"]
        try:
            self.proc = subprocess.Popen(command, pass_fds=[child.fileno()], env=env)
        except OSError as e:
            raise ModelLoadError(f"cannot start the Python worker ({self.python}): {e}") from None
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.reader = threading.Thread(target=self._read, name=f"kiln-python-reader-{self.name}", daemon=True)
        self.reader.start()
        try:
            self.completed_config = self._job("init", self.init, INIT_TIMEOUT_S)
        except KilnError as e:
            self._kill()
            raise ModelLoadError(e.message) from None
        self.dead = None
        return self.completed_config

    def close(self) -> None:
        self.closing = True
        if self.dead is None:
            try:
                self._job("finalize", None, 30.0)
            except KilnError as e:
                log.warning("model '%s': finalize() in the worker failed: %s", self.name, e.message)
        self._kill()
        self._calls.shutdown(wait=False, cancel_futures=True)

    def _kill(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # -- requests ----------------------------------------------------------------------------------------
    def execute(self, works: list[Work]) -> None:
        items = self._pack(works)
        try:
            self._job("execute", items, self.execute_timeout_s or None)
        except UnavailableError:
            self._discard(items)
            raise

    async def execute_async(self, works: list[Work]) -> None:
        """:meth:`execute` for a caller on the event loop: sent from it, and awaited there, so no thread of the
        server waits for the worker (the reader thread wakes the loop once the batch is done)."""
        items = self._pack(works)
        batch_id = next(self._ids)
        done = _LoopDone(asyncio.get_running_loop())
        result: list[Any] = []
        self._batches[batch_id] = (done, result)
        try:
            self._send(("execute", batch_id, items))
            try:
                await asyncio.wait_for(asyncio.shield(done.future), self.execute_timeout_s or None)
            except TimeoutError:
                self._stop_hung("execute", self.execute_timeout_s)
            self._outcome(result)
        except UnavailableError:
            self._discard(items)
            raise
        finally:
            self._batches.pop(batch_id, None)

    def _pack(self, works: list[Work]) -> list[tuple[int, dict[str, Any], list[str]]]:
        if self.dead is not None:
            raise UnavailableError(f"model '{self.name}' is unavailable: {self.dead}")
        items = []
        for work in works:
            request_id = next(self._ids)
            self.pending[request_id] = work
            work.request.cancellation.on_cancel(lambda rid=request_id: self._send(("cancel", rid)))
            fields = ipc.pack_request(work.request, work.feeds)
            items.append((request_id, fields, list(work.outputs)))
        return items

    @staticmethod
    def _discard(items: list[tuple[int, dict[str, Any], list[str]]]) -> None:
        """The worker died or hung with this batch: its inputs' shared-memory blocks may never be unlinked."""
        for _, fields, _ in items:
            for *_, packed in fields["inputs"]:
                ipc.discard_array(packed)

    def ready(self) -> str | None:
        """The model's ``is_ready()``, asked of the worker (answered on a thread of its own, beside execute)."""
        if self.dead is not None:
            return self.dead
        batch_id = next(self._ids)
        done = threading.Event()
        result: list[Any] = []
        self._batches[batch_id] = (done, result)
        try:
            self._send(("ready", batch_id, None))
            done.wait()
        except UnavailableError as e:
            return e.message
        finally:
            self._batches.pop(batch_id, None)
        if not result:
            return self.dead or "the worker exited"
        error, value = result[0]
        return ipc.unpack_error(error).message if error is not None else value

    def _job(self, kind: str, payload: Any, timeout: float | None) -> Any:
        batch_id = next(self._ids)
        done = threading.Event()
        result: list[Any] = []
        self._batches[batch_id] = (done, result)
        try:
            self._send((kind, batch_id, payload))
            if not done.wait(timeout):
                self._stop_hung(kind, timeout or 0.0)
        finally:
            self._batches.pop(batch_id, None)
        return self._outcome(result)

    def _stop_hung(self, kind: str, timeout: float) -> None:
        reason = f"{kind}() did not return within {timeout:g} s; the worker was stopped"
        log.error("model '%s': %s", self.name, reason)
        self._stopped_because = reason
        self._kill()  # the reader then sees the worker die, fails what it held and restarts it
        raise UnavailableError(f"model '{self.name}': {reason}")

    def _outcome(self, result: list[Any]) -> Any:
        error, value = result[0] if result else (("UNAVAILABLE", self.dead or "the worker exited"), None)
        if error is not None:
            raise ipc.unpack_error(error)
        return value

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self.conn.send(message)
        except (OSError, ValueError) as e:
            raise UnavailableError(f"model '{self.name}': the Python worker is gone ({e})") from None

    # -- the worker's messages ---------------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._dispatch(message)
            except Exception:
                log.exception("model '%s': bad message from the Python worker", self.name)
        self._died()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reply":
            self._reply(*message[1:])
        elif kind == "done":
            _, batch_id, error, value, replies = message
            for reply in replies:  # a non-decoupled model's answers come with its execute's end
                self._reply(*reply[1:])
            waiting = self._batches.get(batch_id)
            if waiting is not None:
                waiting[1].append((error, value))
                waiting[0].set()
        elif kind == "call":
            self._calls.submit(self._serve, *message[1:])
        elif kind == "metric_op" and message[2] == "remove":
            handle = self._metric_handles.pop(message[1], None)
            if handle is not None:
                handle.family.remove(handle)

    def _reply(
        self, request_id: int, outputs: Any, error: Any, final: bool, parameters: dict[str, Any]
    ) -> None:
        work = self.pending.pop(request_id, None) if final else self.pending.get(request_id)
        if work is None:
            return
        try:
            if error is not None:
                work.sender.fail(ipc.unpack_error(error), final=final)
            else:
                arrays = None if outputs is None else ipc.unpack_arrays(outputs)
                work.sender.send(arrays, final=final, parameters=parameters)
        except KilnError as e:
            log.warning("model '%s': %s", self.name, e.message)

    def _serve(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method == "stream":
                assert self.caller is not None
                for response in self.caller.stream_sync(ipc.unpack_request(args[0])):
                    self._send(("answer", call_id, "item", ipc.pack_response(response)))
                self._send(("answer", call_id, "end", None))
                return
            self._send(("answer", call_id, "value", self._call(method, args)))
        except Exception as e:
            try:
                self._send(("answer", call_id, "error", ipc.pack_error(e)))
            except UnavailableError:
                pass

    def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        if method.startswith("metric"):
            return self._metric(method, args)
        caller: Any = self.caller
        if caller is None:
            raise UnavailableError("model calls need a running Kiln server")
        if method == "infer":
            return ipc.pack_response(caller.infer_sync(ipc.unpack_request(args[0])))
        if method == "load":
            return caller.load_sync(*args)
        if method == "unload":
            return caller.unload_sync(*args)
        if method == "ready":
            return caller.ready_sync(*args)
        raise InternalError(f"unknown call '{method}' from the Python worker")

    def _metric(self, method: str, args: tuple[Any, ...]) -> Any:
        if self.metrics is None:
            raise UnavailableError("custom metrics need a running Kiln server")
        if method == "metric_family":
            self.metrics.family(*args)
            return None
        if method == "metric_new":
            name, labels, buckets = args
            handle = self.metrics.families[name].metric(labels, buckets)
            key = next(self._ids)
            self._metric_handles[key] = handle
            return key
        key, op, value = args
        handle = self._metric_handles[key]
        return handle.value() if op == "value" else getattr(handle, op)(value)

    def _died(self) -> None:
        if self.closing:
            return
        try:
            code: int | None = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        reason = self._stopped_because or f"the Python worker process exited (exit code {code})"
        self._stopped_because = ""
        self.dead = f"{reason}; restarting it"
        log.error("model '%s': %s", self.name, self.dead)
        for batch in list(self._batches.values()):
            batch[0].set()
        for work in list(self.pending.values()):
            work.sender.fail_if_open(UnavailableError(f"model '{self.name}': {reason}"))
        self.pending.clear()
        threading.Thread(target=self._restart, name=f"kiln-python-restart-{self.name}", daemon=True).start()

    def _restart(self) -> None:
        time.sleep(RESTART_DELAY_S * min(8, 2**self.restarts))
        if self.closing:
            return
        self.restarts += 1
        try:
            self.start()
            log.info("model '%s': Python worker restarted (restart %d)", self.name, self.restarts)
        except KilnError as e:
            self.dead = f"the Python worker could not be restarted: {e.message}"
            log.error("model '%s': %s", self.name, self.dead)
