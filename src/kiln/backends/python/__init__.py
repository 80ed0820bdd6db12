"""The Python backend: Triton ``model.py`` files (``TritonPythonModel``) run unchanged, in the server process.

Each instance imports the model file under its own module name with the version folder, the model folder and
this backend's folder on ``sys.path``, and ``triton_python_backend_utils`` importable. Requests arrive per request
(the scheduler's batch is handed over as a list, as Triton does); answers go back through each request's sender,
from ``execute``'s return value or, for decoupled models, from response senders used from any thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from kiln.backends.base import Backend, ExecutionShape
from kiln.backends.python import pb_utils
from kiln.config import config_to_dict
from kiln.config.schema import model_config_pb2
from kiln.errors import InternalError, InvalidArgumentError, KilnError, ModelLoadError
from kiln.scheduling.work import Work

log = logging.getLogger(__name__)

_ERRORS = {
    pb_utils.TritonError.INVALID_ARG: InvalidArgumentError,
}


class PythonBackend(Backend):
    name = "python"
    platform = "python"
    default_filename = "model.py"
    shape = ExecutionShape.PER_REQUEST

    def load(self) -> None:
        for key in ("EXECUTION_ENV_PATH", "KILN_ISOLATION"):
            if self.parameter(key) is not None:
                raise ModelLoadError(
                    f"parameter {key}: other execution environments and process isolation are not implemented "
                    f"by Kiln's Python backend yet (models run in the server process)"
                )
        sys.modules.setdefault("triton_python_backend_utils", pb_utils)
        if self.context.caller is not None:
            pb_utils._state["caller"] = self.context.caller
        version_dir = self.model_path.parent
        model_dir = version_dir.parent
        for folder in (str(Path(__file__).parent), str(model_dir), str(version_dir)):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        module_name = f"kiln_python_model_{self.config.name}_{version_dir.name}_{self.context.instance_name}"
        spec = importlib.util.spec_from_file_location(module_name, self.model_path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import {self.model_path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            model_class = module.TritonPythonModel
        except Exception as e:
            raise ModelLoadError(
                f"failed to import {self.model_path.name}: {type(e).__name__}: {e}"
            ) from None
        if self.context.auto_complete and hasattr(model_class, "auto_complete_config"):
            self._auto_complete(model_class)
        if self.context.metrics is not None:
            pb_utils._state["metrics"] = self.context.metrics
        self.model = model_class()
        self.decoupled = self.config.model_transaction_policy.decoupled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        args = {
            "model_config": json.dumps(config_to_dict(self.config)),
            "model_instance_kind": self.context.kind,
            "model_instance_name": self.context.instance_name,
            "model_instance_device_id": str(self.context.device_id),
            "model_repository": str(model_dir),
            "model_version": version_dir.name,
            "model_name": self.config.name,
        }
        if hasattr(self.model, "initialize"):
            try:
                self._call(self.model.initialize, args)
            except Exception as e:
                raise ModelLoadError(f"initialize() failed: {type(e).__name__}: {e}") from None

    def _auto_complete(self, model_class: Any) -> None:
        """Triton's ``auto_complete_config`` staticmethod, before ``initialize``: its additions are merged into
        this version's config (which the other instances and the validation then use)."""
        document = pb_utils.ModelConfig(config_to_dict(self.config))
        try:
            result = model_class.auto_complete_config(document)
        except Exception as e:
            raise ModelLoadError(f"auto_complete_config() failed: {e}") from None
        completed = result.as_dict() if isinstance(result, pb_utils.ModelConfig) else document.as_dict()
        try:
            parsed = json_format.ParseDict(completed, model_config_pb2.ModelConfig())
        except json_format.ParseError as e:
            raise ModelLoadError(f"auto_complete_config() produced an invalid config: {e}") from None
        self.config.CopyFrom(parsed)

    def settings(self) -> dict[str, object]:
        return {"runtime": f"python {sys.version.split()[0]}", "isolation": "in-process"}

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run a model method; an ``async def`` one on this instance's own event loop."""
        previous = getattr(pb_utils._current, "model", None)
        pb_utils._current.model = (self.config.name, self.model_path.parent.name)
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                result = self._loop.run_until_complete(result)
            return result
        finally:
            pb_utils._current.model = previous

    def execute_requests(self, works: list[Work]) -> None:
        requests = [self._request(w) for w in works]
        with self._lock:  # one execute at a time per instance, as Triton's stub runs them
            try:
                responses = self._call(self.model.execute, requests)
            except Exception as e:
                raise InternalError(self._failure(f"{type(e).__name__}: {e}")) from None
        if self.decoupled or responses is None:
            return  # answered through response senders
        if not isinstance(responses, list | tuple) or len(responses) != len(works):
            count = len(responses) if isinstance(responses, list | tuple) else type(responses).__name__
            raise InternalError(self._failure(f"expected {len(works)} responses, got {count}"))
        for work, response in zip(works, responses, strict=True):
            _answer(work, response, final=True)

    def _failure(self, message: str) -> str:
        return f"Failed to process the request(s) for model '{self.config.name}', message: {message}"

    def _request(self, work: Work) -> pb_utils.InferenceRequest:
        r = work.request
        flags = (pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if r.sequence_start else 0) | (
            pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if r.sequence_end else 0
        )
        request = pb_utils.InferenceRequest(
            self.config.name,
            [pb_utils.Tensor(name, data) for name, data in work.feeds.items()],
            list(work.outputs),
            r.id,
            r.correlation_id,
            flags,
            r.timeout_us or 0,
            parameters=r.parameters,
        )
        request._sender = _Sender(work)
        request._cancelled = work.is_cancelled
        return request

    def unload(self) -> None:
        model = self.__dict__.pop("model", None)
        if model is not None and hasattr(model, "finalize"):
            self._call(model.finalize)
        if getattr(self, "_loop", None) is not None:
            self._loop.close()  # type: ignore[union-attr]


class _Sender:
    """Triton's response sender over a request's Kiln sender."""

    def __init__(self, work: Work) -> None:
        self.work = work

    def send(self, response: pb_utils.InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        try:
            if response is None:
                if not final:
                    raise pb_utils.TritonModelException("send() needs a response or the FINAL flag")
                self.work.sender.send(final=True)
            else:
                _answer(self.work, response, final)
        except KilnError as e:
            raise pb_utils.TritonModelException(e.message) from None


def _answer(work: Work, response: Any, final: bool) -> None:
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


__all__ = ["PythonBackend"]
