"""One ``TritonPythonModel`` instance: import ``model.py`` as Triton does, auto-complete, initialize, execute,
finalize. Used in the server process (in-process instances) and in worker processes (isolated instances), so it
needs only numpy and Kiln's light modules — no protobuf, no transports.

Requests come as objects with ``request`` (a :class:`kiln.types.InferRequest`), ``feeds``, ``outputs``,
``sender`` (``send(outputs, final=, parameters=)`` / ``fail(error, final=)``) and ``is_cancelled()``: Kiln's
:class:`~kiln.scheduling.work.Work` in-process, a proxy that answers over the pipe in a worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from kiln import bridge
from kiln.backends.python import pb_utils, shared
from kiln.errors import InternalError, InvalidArgumentError, KilnError, ModelLoadError
from kiln.types import InferRequest

_ERRORS: dict[int, type[KilnError]] = {pb_utils.TritonError.INVALID_ARG: InvalidArgumentError}


class Sender(Protocol):
    def send(self, outputs: Any = None, *, final: bool = False, parameters: Any = None) -> None: ...

    def fail(self, error: BaseException, final: bool = True) -> None: ...


class Request(Protocol):
    request: InferRequest
    feeds: dict[str, Any]
    outputs: list[str]
    sender: Sender

    def is_cancelled(self) -> bool: ...


class ModelRunner:
    def __init__(self, model_path: Path, config: dict[str, Any], instance: dict[str, str]) -> None:
        self.model_path = model_path
        self.config = config  # Triton's JSON form of the model config
        self.instance = instance  # model_instance_kind / _name / _device_id
        self.name = str(config.get("name", ""))
        self.version = model_path.parent.name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.model_class = self._import()
        self.model: Any = None

    def _import(self) -> Any:
        sys.modules.setdefault("triton_python_backend_utils", pb_utils)
        version_dir = self.model_path.parent
        for folder in (str(Path(pb_utils.__file__).parent), str(version_dir.parent), str(version_dir)):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        instance = self.instance.get("model_instance_name", "0")
        module_name = f"kiln_python_model_{self.name}_{version_dir.name}_{instance}"
        spec = importlib.util.spec_from_file_location(module_name, self.model_path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {self.model_path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            return module.TritonPythonModel
        except Exception as e:
            raise ModelLoadError(
                f"failed to import {self.model_path.name}: {type(e).__name__}: {e}"
            ) from None

    def auto_complete(self) -> dict[str, Any]:
        """Run the model's ``auto_complete_config`` staticmethod (if any) on the config; returns the result."""
        if not hasattr(self.model_class, "auto_complete_config"):
            return self.config
        document = pb_utils.ModelConfig(json.loads(json.dumps(self.config)))
        try:
            result = self.model_class.auto_complete_config(document)
        except Exception as e:
            raise ModelLoadError(f"auto_complete_config() failed: {e}") from None
        self.config = result.as_dict() if isinstance(result, pb_utils.ModelConfig) else document.as_dict()
        return self.config

    def initialize(self) -> None:
        self.decoupled = bool(self.config.get("model_transaction_policy", {}).get("decoupled", False))
        self.model = self.model_class()
        if not hasattr(self.model, "initialize"):
            return
        args = {
            "model_config": json.dumps(self.config),
            **self.instance,
            "model_repository": str(self.model_path.parent.parent),
            "model_version": self.version,
            "model_name": self.name,
        }
        try:
            self.call(self.model.initialize, args)
        except Exception as e:
            raise ModelLoadError(f"initialize() failed: {type(e).__name__}: {e}") from None

    @property
    def has_ready_check(self) -> bool:
        return self.model is not None and callable(getattr(self.model, "is_ready", None))

    def ready(self) -> str | None:
        """The model's optional ``is_ready()`` (plain or ``async def``), as Triton's stub calls it for a readiness
        check: None when it returns True; else why the model is not ready (False, an exception, not a bool)."""
        if not self.has_ready_check:
            return None
        token = shared.current_model.set((self.name, self.version))
        try:
            result = self.model.is_ready()
            if inspect.isawaitable(result):  # on this thread's own loop: execute may be using the instance's
                result = asyncio.run(_awaited(result))
        except Exception as e:
            return f"is_ready() raised {type(e).__name__}: {e}"
        finally:
            shared.current_model.reset(token)
        if not isinstance(result, bool):
            return f"is_ready() returned {type(result).__name__}, not a bool"
        return None if result else "is_ready() returned False"

    @property
    def runs_inline(self) -> bool:
        """Whether ``execute`` may run on the server's loop (in a bridge greenlet): a plain ``def`` one may; an
        ``async def`` one runs on this instance's own loop, on a worker thread."""
        return self.model is not None and not inspect.iscoroutinefunction(self.model.execute)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a model method; an ``async def`` one on this instance's own event loop (or, returned by a plain
        method running on the server's loop, awaited by that loop)."""
        token = shared.current_model.set((self.name, self.version))
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                if bridge.inside():
                    return bridge.wait(result)
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                result = self._loop.run_until_complete(result)
            return result
        finally:
            shared.current_model.reset(token)

    def execute(self, works: Sequence[Request]) -> None:
        """Run ``execute(requests)`` and answer each request: from its return value, or (decoupled models, or
        models returning None) through the response senders the model used."""
        requests = [self._request(w) for w in works]
        # one execute at a time per instance, as Triton's stub runs them (the scheduler gives an instance one batch
        # at a time; on the loop, a lock held by a suspended greenlet must never be waited for)
        if not self._lock.acquire(blocking=not bridge.inside()):
            raise InternalError(self.failure("the instance is already executing"))
        try:
            responses = self.call(self.model.execute, requests)
        except Exception as e:
            raise InternalError(self.failure(f"{type(e).__name__}: {e}")) from None
        finally:
            self._lock.release()
        if self.decoupled or responses is None:
            return
        if not isinstance(responses, list | tuple) or len(responses) != len(works):
            count = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise InternalError(self.failure(f"expected {len(works)} responses, got {count}"))
        for work, response in zip(works, responses, strict=True):
            answer(work, response, final=True)

    def failure(self, message: str) -> str:
        return f"Failed to process the request(s) for model '{self.name}', message: {message}"

    def _request(self, work: Request) -> pb_utils.InferenceRequest:
        r = work.request
        flags = (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if r.sequence_start else 0) | (
            pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if r.sequence_end else 0
        )
        request = pb_utils.InferenceRequest(
            self.name,
            [pb_utils.Tensor(name, data) for name, data in work.feeds.items()],
            list(work.outputs),
            r.id,
            r.correlation_id,
            flags,
            r.timeout_us or 0,
            parameters=r.parameters,
        )
        request._sender = ResponseSender(work)
        request._trace = pb_utils.InferenceTrace(getattr(work, "trace", None))
        request._cancelled = work.is_cancelled
        return request

    def finalize(self) -> None:
        if self.model is not None and hasattr(self.model, "finalize"):
            self.call(self.model.finalize)
        self.model = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class ResponseSender(pb_utils.InferenceResponseSender):
    """Triton's response sender (``get_response_sender()``) over a request's Kiln sender."""

    def __init__(self, work: Request) -> None:
        self.work = work

    def send(self, response: pb_utils.InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        try:
            if response is None:
                if not final:
                    raise pb_utils.TritonModelException("send() needs a response or the FINAL flag")
                self.work.sender.send(final=True)
            else:
                answer(self.work, response, final)
        except KilnError as e:
            raise pb_utils.TritonModelException(e.message) from None

    def close(self) -> None:  # older Triton examples end a decoupled request with close()
        self.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def answer(work: Request, response: Any, final: bool) -> None:
    if not isinstance(response, pb_utils.InferenceResponse):
        work.sender.fail(
            InternalError(f"execute() returned {type(response).__name__}, not InferenceResponse")
        )
        return
    error = response.error()
    if error is not None:
        work.sender.fail(_ERRORS.get(error.code(), InternalError)(error.message()), final=final)
        return
    outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
    work.sender.send(outputs, final=final, parameters=json.loads(response.parameters()))
