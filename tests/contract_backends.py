"""Small in-process backends that exercise the execution contract through a real ``kiln serve``
(registered with ``--backend NAME=contract_backends:CLASS``; this folder is put on the server's PYTHONPATH).

Each is a real :class:`kiln.backends.Backend`: the server loads, schedules and answers them like any runtime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import orjson

from kiln.backends import Backend, ExecutionShape
from kiln.errors import (
    ErrorCode,
    InternalError,
    InvalidArgumentError,
    KilnError,
    UnavailableError,
    error_class,
)
from kiln.scheduling import Work
from kiln.types import InferRequest, InputTensor
from kiln.types.datatypes import BY_NAME


def _identity(request: InferRequest) -> bytes:
    return orjson.dumps(
        {
            "id": request.id,
            "parameters": request.parameters,
            "correlation_id": request.correlation_id,
            "sequence_start": request.sequence_start,
            "sequence_end": request.sequence_end,
            "priority": request.priority,
            "timeout_us": request.timeout_us,
            "outputs": [o.name for o in request.outputs or []],
        }
    )


class EchoBackend(Backend):
    """PER_REQUEST, no readable signature (the config describes it). OUT = IN; IDENTITY = what the backend
    saw of the request (JSON). A request parameter ``fail`` fails that request alone; ``raise`` = an error
    code raises that KilnError from execute (failing the whole scheduled batch)."""

    name = "echo"
    platform = "echo"
    default_filename = "model.echo"
    shape = ExecutionShape.PER_REQUEST

    def load(self) -> None:
        if not self.model_path.exists():
            raise FileNotFoundError(self.model_path)

    def execute_requests(self, works: list[Work]) -> None:
        for w in works:
            code = w.request.parameters.get("raise")
            if code:
                raise error_class(ErrorCode(str(code)))(f"raised {code} on purpose")
        for w in works:
            if w.request.parameters.get("fail"):
                w.sender.fail(InvalidArgumentError(f"request '{w.request.id}' asked to fail"))
                continue
            batch = w.feeds["IN"].shape[0]
            identity = np.array([[_identity(w.request)]] * batch, dtype=np.object_)
            w.sender.send({"OUT": w.feeds["IN"], "IDENTITY": identity}, final=True)


class RepeatBackend(Backend):
    """PER_REQUEST and decoupled: for input N, N responses OUT = [i] from another thread, then the final flag
    alone (N = 0: only the flag). Input ``DELAY_MS`` between responses."""

    name = "repeat"
    platform = "repeat"
    default_filename = "model.repeat"
    shape = ExecutionShape.PER_REQUEST

    def load(self) -> None:
        pass

    def execute_requests(self, works: list[Work]) -> None:
        for w in works:
            threading.Thread(target=self._answer, args=(w,), daemon=True).start()

    @staticmethod
    def _answer(w: Work) -> None:
        count = int(w.feeds["N"].reshape(-1)[0])
        delay = float(w.feeds["DELAY_MS"].reshape(-1)[0]) / 1000 if "DELAY_MS" in w.feeds else 0.0
        for i in range(count):
            if w.is_cancelled():
                break
            time.sleep(delay)
            w.sender.send({"OUT": np.array([i], dtype=np.int32)})
        w.sender.send(final=True)


class CallerBackend(Backend):
    """PER_REQUEST: calls the model named by config parameter ``callee`` through the injected caller (sync from
    its worker thread), forwarding IN, and returns the callee's OUT as its own."""

    name = "caller"
    platform = "caller"
    default_filename = "model.caller"
    shape = ExecutionShape.PER_REQUEST

    def load(self) -> None:
        if self.context.caller is None:
            raise InternalError("no model caller injected")
        self.callee = self.parameter("callee") or ""
        self.callee_input = self.parameter("callee_input", "IN") or "IN"

    def dependencies(self) -> list[str]:
        return [self.callee]

    def execute_requests(self, works: list[Work]) -> None:
        assert self.context.caller is not None
        for w in works:
            data = w.feeds["IN"]
            inner = InferRequest(
                self.callee,
                id=f"{w.request.id}/inner",
                inputs=[InputTensor(self.callee_input, BY_NAME["FP32"], tuple(data.shape), data)],
            )
            try:
                response = self.context.caller.infer_sync(inner)
            except KilnError as e:
                w.sender.fail(InvalidArgumentError(f"callee failed: {e.message}"))
                continue
            w.sender.send({"OUT": response.outputs[0].data}, final=True)


class ProbeBackend(Backend):
    """BATCHED: every execution waits at a barrier shared by the model's instances, so it returns only if
    two executions are in flight at once (a serial model times out there); OUT = [start, end] times."""

    name = "probe"
    platform = "probe"
    default_filename = "model.probe"
    barriers: dict[str, threading.Barrier] = {}

    def load(self) -> None:
        self.barrier = self.barriers.setdefault(self.config.name, threading.Barrier(2, timeout=10))

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        start = time.time()
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            self.barrier.reset()
            raise UnavailableError("no second execution ran at the same time") from None
        end = time.time()
        batch = inputs["IN"].shape[0]
        return {"OUT": np.array([[start, end]] * batch, dtype=np.float64)}
