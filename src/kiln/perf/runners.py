"""Run a model on input dicts through the serving backends: ``kiln bench`` and ``kiln build`` load artifacts
with the same backend classes, config parameters and thread defaults as ``kiln serve``.

A :class:`Runner` is a thin adapter over one loaded :class:`~kiln.backends.Backend` instance (one model
instance, as the server's first instance of that model). Its inputs and outputs come from the backend's
signature; ``settings()`` is the runtime configuration in force (threads, providers, optimisation level).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.backends import Backend, backend_class, backend_name
from kiln.config import ModelIO
from kiln.config.schema import model_config_pb2
from kiln.errors import InvalidArgumentError
from kiln.perf.inputs import InputSpec

_BY_SUFFIX = {
    ".onnx": "onnxruntime",
    ".xml": "openvino",
    ".pt": "pytorch",
    ".pt2": "pytorch",
    ".graphdef": "tensorflow",
    ".savedmodel": "tensorflow",  # a folder
    ".tflite": "tflite",
    ".param": "ncnn",
}
# the settings() key each backend reports its intra-op (CPU) thread count under
_THREAD_KEYS = ("intra_op_threads", "INFERENCE_NUM_THREADS", "num_threads")
_GROUP = model_config_pb2.ModelInstanceGroup


@dataclass(frozen=True)
class GpuOptions:
    """Run on one GPU instance (``KIND_GPU``); ``tensorrt`` options (``trt_*``) go to the config's
    ``gpu_execution_accelerator { name: "tensorrt" }`` section, as a served model's would."""

    device_id: int = 0
    tensorrt: Mapping[str, str] | None = None


def model_config(
    backend: str,
    name: str = "model",
    threads: int | None = None,
    parameters: Mapping[str, str] | None = None,
    gpu: GpuOptions | None = None,
) -> model_config_pb2.ModelConfig:
    """A minimal config for an artifact outside a repository: backend, parameters, one instance group."""
    config = model_config_pb2.ModelConfig(name=name, backend=backend)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if threads:
        config.parameters[backend_class(backend).threads_parameter].string_value = str(threads)
    if gpu is None:
        config.instance_group.add(name=f"{name}_0", count=1, kind=_GROUP.KIND_CPU)
        return config
    config.instance_group.add(name=f"{name}_0", count=1, kind=_GROUP.KIND_GPU, gpus=[gpu.device_id])
    if gpu.tensorrt is not None:
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accel.parameters.update(dict(gpu.tensorrt))
    return config


class Runner:
    """One loaded backend instance, run on input dicts (what bench, build and the accuracy gate call)."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name
        signature = backend.signature()
        if signature is not None:
            self.inputs = [_spec(io) for io in signature[0]]
            self.outputs = [_spec(io) for io in signature[1]]
        elif backend.config.input and backend.config.output:
            # a runtime that cannot tell its inputs (TorchScript): the config.pbtxt says them, as for the server
            self.inputs = _declared(backend.config, backend.config.input)
            self.outputs = _declared(backend.config, backend.config.output)
        else:
            raise InvalidArgumentError(
                f"the '{backend.name}' backend cannot tell the inputs of {name}: give its model folder with a "
                f"config.pbtxt that lists them"
            )
        self.output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.execute(feeds, self.output_names)

    def settings(self) -> dict[str, object]:
        return self.backend.settings()

    @property
    def threads(self) -> int | None:
        """Intra-op threads in force, when the backend reports them."""
        settings = self.settings()
        value = next((settings[k] for k in _THREAD_KEYS if k in settings), None)
        return int(value) if isinstance(value, int) else None

    def close(self) -> None:
        self.backend.unload()


def open_model(
    backend: str,
    model: Path | bytes,
    config: model_config_pb2.ModelConfig | None = None,
    name: str = "",
    klass: type[Backend] | None = None,
) -> Runner:
    """Load ``model`` (a file, or ONNX bytes for the ONNX Runtime backend) with ``config`` (default: a minimal
    one) as ``kiln serve`` loads a model's first instance: same backend class, same context and thread
    defaults (cores / CPU instances of the config's instance groups). ``klass`` replaces the backend class
    (a subclass of it: the profiling backends)."""
    from kiln.model.instances import instance_contexts

    klass = klass or backend_class(backend)
    config = config if config is not None else model_config(backend)
    if not config.instance_group:
        config = _copy(config)
        config.instance_group.add(name=f"{config.name}_0", count=1, kind=_GROUP.KIND_CPU)
    context = instance_contexts(config, klass)[0]
    path = model if isinstance(model, Path) else Path(klass.default_filename)  # only named in messages
    instance = klass(config, path, context)
    if isinstance(model, bytes):
        if not hasattr(instance, "model_bytes"):
            raise InvalidArgumentError(f"the '{backend}' backend cannot run a model held in memory")
        instance.model_bytes = model  # type: ignore[attr-defined]
    instance.load()
    try:
        return Runner(instance, name or (model.name if isinstance(model, Path) else klass.default_filename))
    except BaseException:
        instance.unload()
        raise


@dataclass(frozen=True)
class Artifact:
    path: Path  # the model file
    backend: str  # "onnxruntime" or "openvino"
    config: model_config_pb2.ModelConfig = field(compare=False)  # the repository config, else a minimal one


def resolve(target: Path) -> Artifact:
    """An .onnx / .xml file, a repository model folder (the version ``kiln serve`` would load, the latest by
    default) or a version folder. A repository model keeps its config.pbtxt, read as the server reads it."""
    from kiln.repository import ModelRepository

    target = Path(target)
    if target.is_file() or (target.is_dir() and target.suffix == ".savedmodel"):
        backend = _BY_SUFFIX.get(target.suffix)
        if backend is None:
            raise InvalidArgumentError(
                f"{target}: expected a model file ({', '.join(sorted(_BY_SUFFIX))}) or a model folder"
            )
        return Artifact(target, backend, model_config(backend, target.stem))
    if not target.is_dir():
        raise InvalidArgumentError(f"{target} does not exist")
    model_dir, version_dir = target, None
    if not (target / "config.pbtxt").exists() and (
        (target.parent / "config.pbtxt").exists() or target.name.isdigit()
    ):
        model_dir, version_dir = target.parent, target
    config = ModelRepository.read_config(model_dir.name, model_dir)
    if version_dir is None:
        versions = ModelRepository.versions(model_dir, config)
        if not versions:
            raise InvalidArgumentError(f"{target} has no numbered version folder")
        version_dir = model_dir / str(versions[-1])
    backend = backend_name(config, model_dir)
    path = version_dir / (config.default_model_filename or backend_class(backend).default_filename)
    if not path.exists():
        raise InvalidArgumentError(f"{version_dir} has no {path.name} (the '{backend}' backend's model file)")
    return Artifact(path, backend, config)


def open_runner(
    artifact: Artifact, threads: int | None = None, name: str = "", klass: type[Backend] | None = None
) -> Runner:
    """Load a resolved artifact; ``threads`` overrides the config's ``intra_op_thread_count``."""
    config = artifact.config
    if threads:
        config = _copy(config)
        config.parameters[backend_class(artifact.backend).threads_parameter].string_value = str(threads)
    return open_model(artifact.backend, artifact.path, config, name or artifact.path.name, klass)


def _copy(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    copy = model_config_pb2.ModelConfig()
    copy.CopyFrom(config)
    return copy


def _spec(io: ModelIO) -> InputSpec:
    return InputSpec(io.name, io.datatype.numpy, tuple(io.shape))


def _declared(config: model_config_pb2.ModelConfig, entries) -> list[InputSpec]:  # type: ignore[no-untyped-def]
    from kiln.types import datatypes

    batch = (-1,) if config.max_batch_size > 0 else ()
    return [
        InputSpec(e.name, datatypes.BY_CONFIG_NAME[model_config_pb2.DataType.Name(e.data_type)].numpy,
                  batch + tuple(e.dims))
        for e in entries
    ]  # fmt: skip
