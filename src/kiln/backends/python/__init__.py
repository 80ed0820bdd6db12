"""The Python backend: Triton ``model.py`` files (``TritonPythonModel``) run unchanged.

Isolation per model (``parameters { key: "KILN_ISOLATION" value: { string_value: "process" } }``):

- ``in-process`` (the default): the instance runs in the server process. No IPC at all; the GIL is shared
  with the server. A plain ``def execute`` measured fast runs on the event loop itself (:mod:`kiln.bridge`).
- ``process``: one worker process per instance (Triton's design), tensors of 64 KiB and more through shared
  memory. A crash or a hang (``KILN_EXECUTE_TIMEOUT_S``) fails only that instance's requests, reports the model
  UNAVAILABLE with the reason, and restarts the worker. ``EXECUTION_ENV_PATH`` (a packed ``.tar.gz`` or an
  unpacked environment with ``bin/python``, e.g. a venv) runs it under that interpreter; it implies ``process``.

Either way the scheduler hands each instance its batch as a list of requests (Triton's execute), and answers go
back through each request's sender: from ``execute``'s return value, or from response senders (decoupled models).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from kiln.backends.base import Backend, ExecutionShape
from kiln.backends.python import shared
from kiln.backends.python.runner import ModelRunner
from kiln.config import config_to_dict
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelLoadError
from kiln.scheduling.work import Work

log = logging.getLogger(__name__)

ISOLATION_MODES = ("in-process", "process")


class PythonBackend(Backend):
    name = "python"
    platform = "python"
    default_filename = "model.py"
    shape = ExecutionShape.PER_REQUEST

    def load(self) -> None:
        env_path = self.parameter("EXECUTION_ENV_PATH")
        isolation = (self.parameter("KILN_ISOLATION") or ("process" if env_path else "in-process")).lower()
        if isolation not in ISOLATION_MODES:
            raise ModelLoadError(
                f"parameter KILN_ISOLATION must be one of {ISOLATION_MODES}, got '{isolation}'"
            )
        if env_path and isolation != "process":
            raise ModelLoadError(
                "EXECUTION_ENV_PATH runs the model in a worker process: KILN_ISOLATION must be process"
            )
        self.isolation = isolation
        if self.context.caller is not None:
            shared.state["caller"] = self.context.caller
        if self.context.metrics is not None:
            shared.state["metrics"] = self.context.metrics
        instance = {
            "model_instance_kind": self.context.kind,
            "model_instance_name": self.context.instance_name,
            "model_instance_device_id": str(self.context.device_id),
        }
        config = config_to_dict(self.config)
        if isolation == "in-process":
            self.runner: ModelRunner | None = ModelRunner(self.model_path, config, instance)
            if self.context.auto_complete:
                self._merge(self.runner.auto_complete())
            self.runner.initialize()
            self.runs_inline = self.runner.runs_inline
            self.checks_readiness = self.runner.has_ready_check
            self.worker = None
            return
        from kiln.backends.python.process import WorkerProcess

        self.runner = None
        python = _interpreter(env_path, self.model_path.parent.parent) if env_path else sys.executable
        timeout = float(self.parameter("KILN_EXECUTE_TIMEOUT_S", "0") or 0)
        self.worker = WorkerProcess(
            f"{self.config.name}/{self.context.instance_name}",
            python,
            (str(self.model_path), config, instance, self.context.auto_complete),
            self.context.caller,
            self.context.metrics,
            timeout,
        )
        self._merge(self.worker.start())
        self.checks_readiness = True  # the worker answers at once when its model has no is_ready()
        self.async_requests = True  # the loop sends each batch and awaits its end: no server thread waits

    def _merge(self, completed: dict[str, Any]) -> None:
        """A config ``auto_complete_config`` filled in becomes this version's config."""
        try:
            parsed = json_format.ParseDict(completed, model_config_pb2.ModelConfig())
        except json_format.ParseError as e:
            raise ModelLoadError(f"auto_complete_config() produced an invalid config: {e}") from None
        if parsed != self.config:
            self.config.CopyFrom(parsed)

    def settings(self) -> dict[str, object]:
        settings: dict[str, object] = {
            "runtime": f"python {sys.version.split()[0]}",
            "isolation": self.isolation,
        }
        if self.worker is not None:
            settings["interpreter"] = self.worker.python
        return settings

    def health(self) -> str | None:
        return None if self.worker is None else self.worker.dead

    def ready_check(self) -> str | None:
        if self.worker is not None:
            return self.worker.ready()
        return None if self.runner is None else self.runner.ready()

    def execute_requests(self, works: list[Work]) -> None:
        if self.worker is not None:
            self.worker.execute(works)
        else:
            assert self.runner is not None
            self.runner.execute(works)

    async def execute_requests_async(self, works: list[Work]) -> None:
        assert self.worker is not None
        await self.worker.execute_async(works)

    def unload(self) -> None:
        if self.worker is not None:
            self.worker.close()
        elif self.runner is not None:
            self.runner.finalize()


def _interpreter(env_path: str, model_dir: Path) -> str:
    """The Python of an ``EXECUTION_ENV_PATH``: an environment folder, or a packed one (``.tar.gz``) unpacked once
    into a cache keyed by its content. ``$$TRITON_MODEL_DIRECTORY`` stands for the model's folder, as in Triton."""
    path = Path(env_path.replace("$$TRITON_MODEL_DIRECTORY", str(model_dir)))
    if not path.is_absolute():
        path = model_dir / path
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        import tarfile  # only for packed environments (~25 ms of every server's start otherwise)

        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        target = Path(tempfile.gettempdir()) / f"kiln-env-{digest}"
        if not (target / "bin" / "python").exists():
            tmp = Path(tempfile.mkdtemp(prefix="kiln-env-"))
            with tarfile.open(path) as archive:
                archive.extractall(tmp, filter="tar")
            tmp.rename(target)
        path = target
    python = path / "bin" / "python"
    if not python.exists():
        raise ModelLoadError(f"EXECUTION_ENV_PATH {env_path}: no bin/python in {path}")
    return str(python)
