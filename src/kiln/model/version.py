"""One loaded model version: completed config + backend + labels, and the request checks every backend shares."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiln.backends import Backend, BackendContext, ExecutionShape, ModelCaller, backend_class
from kiln.config import autocomplete, validate, validate_declared
from kiln.config.fields import check_fields
from kiln.config.schema import model_config_pb2
from kiln.config.sequence import SequenceOptions, sequence_options, without_sequence_tensors
from kiln.errors import InternalError, InvalidArgumentError, ModelConfigError, ModelLoadError
from kiln.model import messages
from kiln.model.conversions import lossless, reshape_target, same_kind, wire_name
from kiln.model.instances import KIND_CPU, instance_contexts
from kiln.types import InferRequest, InferResponse, OutputTensor, RequestedOutput, TensorMetadata, datatypes
from kiln.types.datatypes import DataType

if TYPE_CHECKING:
    from kiln.scheduling.work import Work

log = logging.getLogger(__name__)

#: how long a readiness check waits for a model's own is_ready() (Triton's Python backend waits 5 s)
READY_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TensorSpec:
    """An input/output as clients see it (config dims, no batch dim) and as the model gets it (reshape)."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    model_dims: tuple[int, ...] | None  # reshape target, None when no reshape
    optional: bool = False
    labels: tuple[str, ...] = ()

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a request's (non-batch) shape fits the config dims (-1 = any size)."""
        return len(shape) == len(self.dims) and all(
            d == -1 or d == s for d, s in zip(self.dims, shape, strict=True)
        )


@dataclass
class PreparedRequest:
    feeds: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    batch_size: int


class Model:
    """A model version ready to run. Built with :meth:`load` (blocking: call it off the event loop)."""

    def __init__(
        self,
        config: model_config_pb2.ModelConfig,
        version: int,
        backends: list[Backend],
        labels: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        labels = labels or {}
        self.config = config
        self.name = config.name
        self.version = version
        self.backends = backends  # one per model instance
        # the readiness check running for each instance (ready_check)
        self._ready_checks: dict[int, asyncio.Future[str | None]] = {}
        self.backend = backends[0]
        self.batched = self.backend.shape is ExecutionShape.BATCHED
        self.inline_requests = not self.batched and all(b.runs_inline for b in backends)
        self.async_requests = not self.batched and all(b.async_requests for b in backends)
        self.decoupled = config.model_transaction_policy.decoupled
        self.dependencies = list(self.backend.dependencies())
        self.ensemble = getattr(self.backend, "plan", None)  # an ensemble's graph (kiln.config.ensemble)
        self.sequence: SequenceOptions | None = None  # sequence batching: controls and implicit state
        self.response_cache = config.response_cache.enable  # answers may come from the server's cache
        self.max_batch_size = config.max_batch_size
        self.inputs = {e.name: _spec(e) for e in config.input}
        self.outputs = {e.name: _spec(e, labels.get(e.name, ())) for e in config.output}
        self._all_outputs = tuple(RequestedOutput(name) for name in self.outputs)  # shared, never mutated

    @classmethod
    def load(
        cls,
        config: model_config_pb2.ModelConfig,
        model_dir: Path,
        version: int,
        backend_name: str,
        *,
        auto_complete: bool = True,
        default_max_batch_size: int = 4,
        cpu_count: int | None = None,
        caller: ModelCaller | None = None,
        metrics: Any = None,
        response_cache: bool = False,
    ) -> Model:
        config = _copy(config)
        for warning in check_fields(config, backend_name):  # refuses what Kiln does not honour
            log.warning("%s", warning)
        if config.response_cache.enable and not response_cache:
            raise ModelConfigError(
                f"model '{config.name}': response_cache is enabled but the server has no cache: start kiln serve "
                f"with --cache-config local,size=BYTES"
            )
        klass = backend_class(backend_name)
        # the fields Triton fills in its completed config, so clients reading it see the same
        if not config.backend and klass.has_instances:  # Triton leaves an ensemble's backend empty
            config.backend = klass.name
        if not config.platform and klass.config_platform:
            config.platform = klass.config_platform
        if not config.default_model_filename:
            # a backend with more than one file kind (TensorFlow: SavedModel or GraphDef) picks by the config
            pick = getattr(klass, "model_filename", None)
            config.default_model_filename = (
                pick(config, model_dir / str(version)) if pick is not None else klass.default_filename
            )
        if not config.HasField("version_policy"):
            config.version_policy.latest.num_versions = 1
        path = model_dir / str(version) / config.default_model_filename
        if not path.exists():
            raise ModelLoadError(f"model '{config.name}' version {version}: {path} does not exist")
        if klass.has_instances:
            if not config.instance_group:
                config.instance_group.add(count=1, kind=KIND_CPU)
            for index, group in enumerate(config.instance_group):
                if not group.name:
                    group.name = f"{config.name}_{index}"
                if not group.count:
                    group.count = 1
            contexts = instance_contexts(config, klass, cpu_count, caller, auto_complete, metrics)
        elif config.instance_group:
            raise ModelConfigError(
                f"model '{config.name}': instance_group is not allowed for a '{klass.name}' model (it has no "
                f"instances of its own)"
            )
        else:
            contexts = [BackendContext(caller=caller, auto_complete=auto_complete, metrics=metrics)]
        sequence = sequence_options(config, model_dir)
        first = klass(config, path, contexts[0])
        first.load()
        try:
            signature = first.signature()
            if signature is not None and sequence is not None:
                signature = without_sequence_tensors(config, sequence, *signature)
            if signature is None:  # no readable signature: the config alone describes the model
                validate_declared(config)
            else:
                if auto_complete:
                    autocomplete(config, *signature, default_max_batch_size)
                validate(config, *signature)
            _check_transaction_policy(config, klass)
            if config.response_cache.enable and (
                sequence is not None or config.model_transaction_policy.decoupled
            ):
                raise ModelConfigError(
                    f"model '{config.name}': response_cache cannot serve a decoupled or sequence model (its answers "
                    f"depend on more than its inputs)"
                )
            if sequence is not None and config.model_transaction_policy.decoupled:
                raise ModelConfigError(
                    f"model '{config.name}': sequence batching of a decoupled model is not implemented in Kiln yet"
                )
            labels = {e.name: _read_labels(model_dir, e) for e in config.output if e.label_filename}
        except BaseException:
            first.unload()
            raise
        backends = [first, *load_instances(klass, config, path, contexts[1:])]
        model = cls(config, version, backends, labels)
        model.sequence = sequence
        return model

    # -- metadata ------------------------------------------------------------------------------------------
    def metadata_tensors(self, kind: str) -> list[TensorMetadata]:
        specs = self.inputs if kind == "input" else self.outputs
        batch = [-1] if self.max_batch_size > 0 else []
        return [TensorMetadata(s.name, s.datatype.name, [*batch, *s.dims]) for s in specs.values()]

    # -- inference -----------------------------------------------------------------------------------------
    def prepare(self, request: InferRequest) -> PreparedRequest:
        """Check a request against the config and build the feeds the backend gets."""
        feeds: dict[str, np.ndarray] = {}
        batch_size = 0
        for tensor in request.inputs:
            spec = self.inputs.get(tensor.name)
            if spec is None:
                raise InvalidArgumentError(
                    f"unexpected inference input '{tensor.name}' for model '{self.name}'; "
                    f"its inputs are {sorted(self.inputs)}"
                )
            if tensor.name in feeds:
                raise InvalidArgumentError(f"input '{tensor.name}' is given more than once")
            if tensor.datatype != spec.datatype:
                raise InvalidArgumentError(
                    messages.wrong_datatype(tensor.name, self.name, tensor.datatype.name, spec.datatype.name)
                )
            shape = tensor.shape
            if self.max_batch_size > 0:
                if len(shape) != len(spec.dims) + 1:
                    raise InvalidArgumentError(
                        messages.unexpected_shape(tensor.name, self.name, spec.dims, True, shape)
                    )
                batch = shape[0]
                if batch > self.max_batch_size:
                    raise InvalidArgumentError(
                        messages.batch_too_large(self.name, self.max_batch_size, batch)
                    )
                if batch < 1:
                    raise InvalidArgumentError(
                        f"inference request batch-size must be >= 1 for '{self.name}' (got {batch})"
                    )
                if batch_size and batch != batch_size:
                    raise InvalidArgumentError(
                        f"input '{tensor.name}' batch size does not match other inputs for '{self.name}' "
                        f"({batch} vs {batch_size})"
                    )
                batch_size = batch
                item_shape = shape[1:]
            else:
                item_shape = shape
                batch_size = 1
            if item_shape != spec.dims and not spec.accepts(item_shape):
                raise InvalidArgumentError(
                    messages.unexpected_shape(
                        tensor.name, self.name, spec.dims, self.max_batch_size > 0, shape
                    )
                )
            data = tensor.data
            if spec.model_dims is not None:
                lead = (shape[0],) if self.max_batch_size > 0 else ()
                try:
                    data = data.reshape(lead + reshape_target(item_shape, spec.dims, spec.model_dims))
                except ValueError:
                    raise InvalidArgumentError(
                        f"input '{tensor.name}' of shape {list(shape)} cannot be reshaped to "
                        f"{list(spec.model_dims)}"
                    ) from None
            feeds[tensor.name] = data
        required = [n for n, s in self.inputs.items() if not s.optional]
        if any(n not in feeds for n in required):
            raise InvalidArgumentError(
                messages.wrong_input_count(self.name, list(feeds), required, len(self.inputs))
            )
        return PreparedRequest(feeds, self._requested_outputs(request), batch_size or 1)

    def _requested_outputs(self, request: InferRequest) -> list[RequestedOutput]:
        if request.outputs is None:
            return list(self._all_outputs)
        seen: set[str] = set()
        for out in request.outputs:
            spec = self.outputs.get(out.name)
            if spec is None:
                raise InvalidArgumentError(
                    f"unexpected inference output '{out.name}' for model '{self.name}'; "
                    f"its outputs are {sorted(self.outputs)}"
                )
            if out.name in seen:
                raise InvalidArgumentError(f"output '{out.name}' is requested more than once")
            seen.add(out.name)
            if out.classification < 0:
                raise InvalidArgumentError(f"output '{out.name}': classification count must be > 0")
            if out.classification and spec.datatype.name in ("BYTES", "BOOL"):
                raise InvalidArgumentError(
                    f"output '{out.name}': classification needs a numeric output, not {spec.datatype.name}"
                )
        return list(request.outputs)

    def execute(
        self, feeds: dict[str, np.ndarray], outputs: Sequence[str], instance: int = 0
    ) -> dict[str, np.ndarray]:
        """Blocking: run one (possibly merged) batch on the given model instance."""
        return self.backends[instance].execute(feeds, outputs)

    def health(self) -> str | None:
        """Why an instance of this version cannot serve right now (None: all can)."""
        return next((reason for b in self.backends if (reason := b.health()) is not None), None)

    async def ready_check(self, timeout_s: float = READY_CHECK_TIMEOUT_S) -> str | None:
        """The instances' own readiness checks (a Python model's ``is_ready()``), each on a worker thread: None
        when all answer ready within ``timeout_s``; else why not. A check still running when the next one comes
        is waited for again, not started twice."""
        loop = asyncio.get_running_loop()
        for index, backend in enumerate(self.backends):
            if not backend.checks_readiness:
                continue
            running = self._ready_checks.get(index)
            if running is None or running.done():
                running = self._ready_checks[index] = asyncio.ensure_future(
                    loop.run_in_executor(None, backend.ready_check)
                )
            try:
                reason = await asyncio.wait_for(asyncio.shield(running), timeout_s)
            except TimeoutError:
                reason = f"its readiness check (is_ready()) did not answer within {timeout_s:g} s"
            except Exception as e:  # a backend's own failure: the model is not ready, the server goes on
                reason = f"its readiness check failed: {type(e).__name__}: {e}"
            if reason is not None:
                log.info("model '%s' version %s is not ready: %s", self.name, self.version, reason)
                return reason
        return None

    def execute_requests(self, works: list[Work], instance: int = 0) -> None:
        """Blocking: hand the scheduled requests to a per-request backend's instance."""
        self.backends[instance].execute_requests(works)

    async def execute_requests_async(self, works: list[Work], instance: int = 0) -> None:
        """Where ``async_requests``: the same, awaited on the event loop."""
        await self.backends[instance].execute_requests_async(works)

    def respond(
        self,
        request: InferRequest,
        prepared: PreparedRequest,
        results: Mapping[str, np.ndarray],
        parameters: Mapping[str, Any] | None = None,
        final: bool = True,
    ) -> InferResponse:
        """The response for ``request`` from a backend's outputs: reshaped back to the config's dims,
        classified where asked; a missing output or one of another datatype is an error for this request."""
        outputs = []
        for req in prepared.outputs:
            spec = self.outputs[req.name]
            array = results.get(req.name)
            if array is None:
                raise InternalError(f"model '{self.name}' did not produce the requested output '{req.name}'")
            if not isinstance(array, np.ndarray):
                array = np.asarray(array)
            if spec.model_dims is not None:
                lead = (array.shape[0],) if self.max_batch_size > 0 else ()
                array = array.reshape(
                    lead + reshape_target(array.shape[len(lead) :], spec.model_dims, spec.dims)
                )
            if req.classification:
                array = self._classify(array, req.classification, spec.labels)
                dtype = datatypes.BY_NAME["BYTES"]
            else:
                dtype = spec.datatype
                if array.dtype != dtype.numpy and not same_kind(array.dtype, dtype):
                    converted = lossless(array, dtype)
                    if converted is None:
                        raise InternalError(
                            f"model '{self.name}' output '{req.name}' has datatype "
                            f"{wire_name(array.dtype)}, but its config says {dtype.name} (and its values do "
                            f"not convert without loss)"
                        )
                    array = converted
            outputs.append(OutputTensor(req.name, dtype, tuple(array.shape), array))
        return InferResponse(self.name, str(self.version), request.id, outputs, dict(parameters or {}), final)

    def _classify(self, array: np.ndarray, k: int, labels: tuple[str, ...]) -> np.ndarray:
        batched = self.max_batch_size > 0
        rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
        k = min(k, rows.shape[1])
        result = np.empty((rows.shape[0], k), dtype=np.object_)
        for r, row in enumerate(rows):
            top = np.argsort(-row.astype(np.float64), kind="stable")[:k]
            for j, idx in enumerate(top):
                text = f"{float(row[idx]):f}:{int(idx)}"
                if idx < len(labels):
                    text += f":{labels[idx]}"
                result[r, j] = text.encode("utf-8")
        return result if batched else result.reshape(k)

    def unload(self) -> None:
        for backend in self.backends:
            backend.unload()


def _spec(entry, labels: tuple[str, ...] = ()) -> TensorSpec:  # type: ignore[no-untyped-def]
    dtype_name = model_config_pb2.DataType.Name(entry.data_type)
    dtype = datatypes.BY_CONFIG_NAME.get(dtype_name)
    if dtype is None:
        raise ModelConfigError(f"'{entry.name}': data_type {dtype_name} is not supported")
    model_dims = tuple(entry.reshape.shape) if entry.HasField("reshape") else None
    return TensorSpec(
        entry.name, dtype, tuple(entry.dims), model_dims, bool(getattr(entry, "optional", False)), labels
    )


def load_instances(
    klass: type[Backend], config: model_config_pb2.ModelConfig, path: Path, contexts: list[BackendContext]
) -> list[Backend]:
    """Load the remaining instances side by side (runtimes release the GIL while they build sessions)."""
    if not contexts:
        return []
    backends = [klass(config, path, context) for context in contexts]
    with ThreadPoolExecutor(min(len(backends), 8), thread_name_prefix="kiln-load") as pool:
        futures = [pool.submit(b.load) for b in backends]
        errors = [f.exception() for f in futures]
    failed = next((e for e in errors if e is not None), None)
    if failed is not None:
        for backend, error in zip(backends, errors, strict=True):
            if error is None:
                backend.unload()
        raise failed
    return backends


def _check_transaction_policy(config: model_config_pb2.ModelConfig, klass: type[Backend]) -> None:
    if config.model_transaction_policy.decoupled and klass.shape is ExecutionShape.BATCHED:
        raise ModelConfigError(
            f"model '{config.name}': model_transaction_policy decoupled needs a backend that answers each "
            f"request itself; the '{klass.name}' backend answers every request exactly once"
        )


def _copy(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(config)
    return out


def _read_labels(model_dir: Path, entry) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    path = (model_dir / entry.label_filename).resolve()
    if model_dir.resolve() not in path.parents:
        raise ModelConfigError(f"output '{entry.name}': label_filename must stay inside the model directory")
    try:
        return tuple(line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines())
    except OSError as e:
        raise ModelConfigError(f"output '{entry.name}': cannot read label file {path.name}: {e}") from None
