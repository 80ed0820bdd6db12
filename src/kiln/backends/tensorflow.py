"""TensorFlow backend (``backend: "tensorflow"``): ``platform: "tensorflow_savedmodel"`` (a ``model.savedmodel/``
folder) and ``platform: "tensorflow_graphdef"`` (a frozen ``model.graphdef``), on CPU.

As Triton's TensorFlow backend does, each model instance runs its graph in a TF session of its own, made with the
session options the config asks for:

- SavedModel: the MetaGraph tagged ``TF_GRAPH_TAG`` (default ``serve``) and its signature ``TF_SIGNATURE_DEF``
  (default ``serving_default``; when absent, the first other signature that is not the init/train op, with a
  warning). Tensors are named by the signature's keys; the signature auto-completes the config. An input or
  output of unknown rank takes its shape from the config.
- GraphDef: no signature, so the config names every input (a ``Placeholder`` node) and output (a node of the
  graph; ``name`` means ``name:0``) with its data type and dims. Names, data types and ranks are checked
  against the graph at load.

Parameters, as Triton documents them: ``TF_NUM_INTRA_THREADS``, ``TF_NUM_INTER_THREADS`` (0 = TF decides),
``TF_USE_PER_SESSION_THREADS`` (without it TF shares its process-wide thread pools between sessions),
``TF_GRAPH_TAG``, ``TF_SIGNATURE_DEF``, ``TF_INIT_OPS_FILE`` (JSON ``{"init_ops": [...]}``, in the version folder
or else the model folder, run once after load) and ``MAX_SESSION_SHARE_COUNT`` (only 1: every Kiln instance has
its own session). ``optimization { graph { level } }`` sets TF's global JIT level as Triton does (-1 off, 1 ON_1,
> 1 ON_2). GPU execution accelerators are ignored on CPU with a warning, as Triton does; CPU ones are refused.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.backends.base import Backend
from kiln.config import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import (
    InternalError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelConfigError,
    ModelLoadError,
)
from kiln.types.datatypes import BY_CONFIG_NAME, BY_NAME, DataType, from_numpy

log = logging.getLogger(__name__)

SAVEDMODEL = "tensorflow_savedmodel"
GRAPHDEF = "tensorflow_graphdef"
_FILES = {SAVEDMODEL: "model.savedmodel", GRAPHDEF: "model.graphdef"}
_SKIPPED_SIGNATURES = ("__saved_model_init_op", "__saved_model_train_op")
_TRUE = ("true", "on", "1", "yes")
_FALSE = ("false", "off", "0", "no", "")


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelLoadError(str(MissingDependencyError("TensorFlow", "tensorflow"))) from None
    return tf


class TensorFlowBackend(Backend):
    name = "tensorflow"
    platform = SAVEDMODEL  # per instance: the format loaded (metadata reports it)
    config_platform = ""  # two platforms: load() fills the one the model file is
    default_filename = _FILES[SAVEDMODEL]
    threads_parameter = "TF_NUM_INTRA_THREADS"

    @classmethod
    def model_filename(cls, config: model_config_pb2.ModelConfig, version_dir: Path) -> str:
        """The default model file name for this config, as Triton picks it: by platform, else (``backend:
        "tensorflow"`` alone) the SavedModel folder if present, else the GraphDef."""
        if config.platform in _FILES:
            return _FILES[config.platform]
        if not (version_dir / _FILES[SAVEDMODEL]).exists() and (version_dir / _FILES[GRAPHDEF]).exists():
            return _FILES[GRAPHDEF]
        return _FILES[SAVEDMODEL]

    # -- parameters ----------------------------------------------------------------------------------------
    def _count(self, key: str) -> int:
        value = self.int_parameter(key, 0)
        if value < 0:
            raise ModelConfigError(f"model '{self.config.name}': parameter '{key}' must be >= 0, got {value}")
        return value

    def _flag(self, key: str) -> bool:
        value = (self.parameter(key) or "").strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ModelConfigError(
            f"model '{self.config.name}': parameter '{key}' must be true/false (True, On, 1 / False, Off, 0), "
            f"got '{value}'"
        )

    def _options(self) -> dict[str, Any]:
        share = self.int_parameter("MAX_SESSION_SHARE_COUNT", 1)
        if share <= 0:
            raise ModelConfigError(
                f"model '{self.config.name}': parameter 'MAX_SESSION_SHARE_COUNT' must be a positive number"
            )
        if share > 1:
            raise ModelConfigError(
                f"model '{self.config.name}': MAX_SESSION_SHARE_COUNT > 1 (sessions shared between instances) is "
                f"not implemented in Kiln: each instance has a session of its own; remove it or set it to 1"
            )
        level = self.config.optimization.graph.level if self.config.optimization.HasField("graph") else None
        accelerators = self.config.optimization.execution_accelerators
        if len(accelerators.cpu_execution_accelerator):
            raise ModelConfigError(
                f"model '{self.config.name}': CPU execution accelerators are not supported by the TensorFlow "
                f"backend"
            )
        if len(accelerators.gpu_execution_accelerator):
            names = [a.name for a in accelerators.gpu_execution_accelerator]
            log.warning(
                "model '%s': GPU execution accelerators %s are ignored for instances on CPU",
                self.config.name,
                names,
            )
        return {
            "intra_op_threads": self._count("TF_NUM_INTRA_THREADS"),
            "inter_op_threads": self._count("TF_NUM_INTER_THREADS"),
            "use_per_session_threads": self._flag("TF_USE_PER_SESSION_THREADS"),
            "graph_level": level,
        }

    def _session_config(self, tf: Any, options: Mapping[str, Any]) -> Any:
        proto = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=options["intra_op_threads"],
            inter_op_parallelism_threads=options["inter_op_threads"],
            use_per_session_threads=options["use_per_session_threads"],
            allow_soft_placement=True,
            device_count={"GPU": 0},
        )
        level = options["graph_level"]
        jit = tf.compat.v1.OptimizerOptions
        if level is not None:
            if level == -1:
                proto.graph_options.optimizer_options.global_jit_level = jit.OFF
            elif level == 1:
                proto.graph_options.optimizer_options.global_jit_level = jit.ON_1
            elif level > 1:
                proto.graph_options.optimizer_options.global_jit_level = jit.ON_2
        return proto

    # -- load ----------------------------------------------------------------------------------------------
    def load(self) -> None:
        tf = _import_tensorflow()
        self._tf = tf
        if self.context.kind == "GPU":
            raise ModelLoadError(
                "the TensorFlow backend serves on CPU only in Kiln; use instance_group KIND_CPU"
            )
        fmt = self.config.platform or (SAVEDMODEL if self.model_path.is_dir() else GRAPHDEF)
        if fmt not in _FILES:
            raise ModelConfigError(
                f"platform '{fmt}' is not supported for TensorFlow model '{self.config.name}' "
                f"(use {SAVEDMODEL} or {GRAPHDEF})"
            )
        if not self.config.platform:
            self.config.platform = fmt  # the completed config names the format, as Triton's does
        self.platform = fmt  # type: ignore[misc]  # what model metadata reports for this instance
        self._settings = self._options()
        self._graph = tf.Graph()
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable[..., list[Any]]] = {}
        self._lock = threading.Lock()
        with self._graph.as_default():
            self._session = tf.compat.v1.Session(
                graph=self._graph, config=self._session_config(tf, self._settings)
            )
            try:
                if fmt == SAVEDMODEL:
                    self._load_savedmodel(tf)
                else:
                    self._load_graphdef(tf)
                self._run_init_ops()
            except BaseException:
                self._session.close()
                raise

    def _load_savedmodel(self, tf: Any) -> None:
        if not self.model_path.is_dir():
            raise ModelLoadError(f"{self.model_path.name} must be a SavedModel folder (with saved_model.pb)")
        tag = self.parameter("TF_GRAPH_TAG") or "serve"
        try:
            meta = _silenced(
                lambda: tf.compat.v1.saved_model.loader.load(self._session, [tag], str(self.model_path))
            )
        except (RuntimeError, OSError, ValueError, tf.errors.OpError) as e:
            raise ModelLoadError(
                f"TensorFlow could not load {self.model_path.name} (tag '{tag}'): {e}"
            ) from None
        wanted = self.parameter("TF_SIGNATURE_DEF") or "serving_default"
        signatures = meta.signature_def
        key = wanted
        if wanted not in signatures:
            others = sorted(k for k in signatures if k not in _SKIPPED_SIGNATURES)
            if not others:
                raise ModelLoadError(
                    f"unable to load model '{self.config.name}', expected '{wanted}' signature; the SavedModel "
                    f"has {sorted(signatures)}"
                )
            key = others[0]
            log.warning(
                "model '%s': unable to find signature '%s', using signature '%s'",
                self.config.name,
                wanted,
                key,
            )
        self._settings["signature_def"] = key
        self._settings["graph_tag"] = tag
        signature = signatures[key]
        self._in = {n: self._tensor_io("input", n, info, tf) for n, info in signature.inputs.items()}
        self._out = {n: self._tensor_io("output", n, info, tf) for n, info in signature.outputs.items()}
        self._feed_names = {n: info.name for n, info in signature.inputs.items()}
        self._fetch_names = {n: info.name for n, info in signature.outputs.items()}

    def _tensor_io(self, kind: str, name: str, info: Any, tf: Any) -> ModelIO:
        dtype = _datatype(tf, tf.dtypes.as_dtype(info.dtype))
        if dtype is None:
            raise ModelLoadError(
                f"unable to process {kind} '{name}' for '{self.config.name}', unsupported datatype "
                f"'{tf.dtypes.as_dtype(info.dtype).name}'"
            )
        if not info.tensor_shape.unknown_rank:
            return ModelIO(
                name, dtype, tuple(int(d.size) if d.size >= 0 else -1 for d in info.tensor_shape.dim)
            )
        # no shape in the signature: the config's (as Triton does)
        entries = self.config.input if kind == "input" else self.config.output
        entry = next((e for e in entries if e.name == name), None)
        if entry is None or not (entry.dims or entry.HasField("reshape")):
            raise ModelConfigError(
                f"model '{self.config.name}' {kind} '{name}' has no shape in the SavedModel signature: list it "
                f"with its dims in config.pbtxt"
            )
        dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
        batch = [-1] if self.config.max_batch_size > 0 else []
        return ModelIO(name, dtype, tuple(batch + dims))

    def _load_graphdef(self, tf: Any) -> None:
        for key in ("TF_GRAPH_TAG", "TF_SIGNATURE_DEF"):
            if self.parameter(key):
                log.warning("model '%s': parameter '%s' applies to SavedModels only", self.config.name, key)
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(self.model_path.read_bytes())
        except Exception as e:  # protobuf's DecodeError, IsADirectoryError
            raise ModelLoadError(f"{self.model_path.name} is not a TensorFlow GraphDef: {e}") from None
        if not graph_def.node:
            raise ModelLoadError(f"model {self.config.name} has an empty network")
        for node in graph_def.node:
            node.device = ""  # placed by the session (CPU), as Triton clears it
        try:
            tf.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as e:
            raise ModelLoadError(f"TensorFlow could not import {self.model_path.name}: {e}") from None
        placeholders = sorted(op.name for op in self._graph.get_operations() if op.type == "Placeholder")
        self._in, self._out, self._feed_names, self._fetch_names = {}, {}, {}, {}
        for entry in self.config.input:
            if entry.name not in placeholders:
                raise ModelConfigError(
                    f"model '{self.config.name}' input '{entry.name}': the GraphDef has no Placeholder of that name;"
                    f" its placeholders are {placeholders}"
                )
            self._feed_names[entry.name] = self._check_graph_tensor("input", entry, entry.name + ":0")
        for entry in self.config.output:
            tensor = entry.name if ":" in entry.name else entry.name + ":0"
            self._fetch_names[entry.name] = self._check_graph_tensor("output", entry, tensor)

    def _check_graph_tensor(self, kind: str, entry: Any, tensor_name: str) -> str:
        """A config input/output against its graph tensor: it exists, and data type and rank agree."""
        where = f"model '{self.config.name}' {kind} '{entry.name}'"
        try:
            tensor = self._graph.get_tensor_by_name(tensor_name)
        except (KeyError, ValueError):
            raise ModelConfigError(f"{where}: the GraphDef has no tensor '{tensor_name}'") from None
        model_dtype = _datatype(self._tf, tensor.dtype)
        if entry.data_type != model_config_pb2.TYPE_INVALID:
            config_dtype = BY_CONFIG_NAME.get(model_config_pb2.DataType.Name(entry.data_type))
            if config_dtype != model_dtype:
                found = model_dtype.config_name if model_dtype else tensor.dtype.name
                raise ModelConfigError(
                    f"{where}: config data_type {model_config_pb2.DataType.Name(entry.data_type)} does not match "
                    f"the graph's {found}"
                )
        rank = tensor.shape.rank
        if rank is not None and (entry.dims or entry.HasField("reshape")):
            dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
            full = ([-1] if self.config.max_batch_size > 0 else []) + dims
            if len(full) != rank:
                raise ModelConfigError(
                    f"{where}: config gives rank {len(full)} {full} but the graph's tensor has rank {rank} "
                    f"{tensor.shape.as_list()}"
                )
        return tensor_name

    def _run_init_ops(self) -> None:
        file = self.parameter("TF_INIT_OPS_FILE")
        if not file:
            return
        candidates = [self.model_path.parent / file, self.model_path.parent.parent / file]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ModelConfigError(
                f"model '{self.config.name}': TF_INIT_OPS_FILE '{file}' is in neither the version folder nor the "
                f"model folder"
            )
        try:
            ops = json.loads(path.read_text())["init_ops"]
            if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
                raise TypeError("init_ops must be a list of operation names")
        except (ValueError, KeyError, TypeError) as e:
            raise ModelConfigError(
                f"model '{self.config.name}': {path.name} must be JSON {{\"init_ops\": [names]}}: {e}"
            ) from None
        try:
            self._session.run([self._graph.get_operation_by_name(o) for o in ops])
        except (KeyError, ValueError, self._tf.errors.OpError) as e:
            raise ModelLoadError(f"model '{self.config.name}': init ops {ops} failed: {e}") from None
        self._settings["init_ops"] = ops

    # -- the interface -------------------------------------------------------------------------------------
    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        if self.platform != SAVEDMODEL:
            return None  # GraphDef: the config says everything, as Triton requires
        return list(self._in.values()), list(self._out.values())

    def settings(self) -> dict[str, object]:
        tf = getattr(self, "_tf", None)
        runtime = f"tensorflow {tf.__version__}" if tf is not None else "tensorflow"
        return {
            "runtime": runtime,
            "format": self.platform,
            "device": "CPU",
            **getattr(self, "_settings", {}),
        }

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Callable[..., list[Any]]:
        key = (feeds, fetches)
        fn = self._callables.get(key)
        if fn is None:
            with self._lock:
                fn = self._callables.get(key)
                if fn is None:
                    fn = self._session.make_callable(
                        [self._fetch_names[o] for o in fetches], [self._feed_names[i] for i in feeds]
                    )
                    self._callables[key] = fn
        return fn

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        unknown = [n for n in inputs if n not in self._feed_names]
        if unknown:
            raise InvalidArgumentError(f"model has no input(s) {unknown}")
        feeds = tuple(inputs)
        fn = self._callable(feeds, tuple(outputs))
        errors = self._tf.errors
        try:
            results = fn(*(inputs[n] for n in feeds))
        except errors.InvalidArgumentError as e:
            raise InvalidArgumentError(f"model rejected the request: {e.message}") from None
        except (ValueError, TypeError) as e:  # the session's own feed checks (shape, dtype)
            raise InvalidArgumentError(f"model rejected the request: {e}") from None
        except errors.OpError as e:
            raise InternalError(f"model execution failed: {e.message}") from None
        return {name: np.asarray(value) for name, value in zip(outputs, results, strict=True)}

    def unload(self) -> None:
        session = self.__dict__.pop("_session", None)
        if session is not None:
            session.close()
        self.__dict__.pop("_callables", None)
        self.__dict__.pop("_graph", None)


def _datatype(tf: Any, dtype: Any) -> DataType | None:
    """Kiln's datatype for a TF dtype (string -> BYTES), or None for those Kiln does not serve."""
    if dtype == tf.string:
        return BY_NAME["BYTES"]
    try:
        return from_numpy(np.dtype(dtype.as_numpy_dtype))
    except (TypeError, InvalidArgumentError):
        return None


def _silenced(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` without TF's deprecation notices (the v1 SavedModel loader is the one with session options)."""
    try:
        from tensorflow.python.util import deprecation
    except ImportError:  # pragma: no cover - TF moved it
        return fn()
    with deprecation.silence():
        return fn()
