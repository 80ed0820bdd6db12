"""Model instances: one backend context per instance, as Triton's ``instance_group`` lays them out."""

from __future__ import annotations

from typing import Any

from kiln.backends import Backend, BackendContext, ModelCaller
from kiln.config.schema import model_config_pb2
from kiln.errors import ModelLoadError

KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU
KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_AUTO = model_config_pb2.ModelInstanceGroup.KIND_AUTO


def instance_contexts(
    config: model_config_pb2.ModelConfig,
    klass: type[Backend],
    cpu_count: int | None = None,
    caller: ModelCaller | None = None,
    auto_complete: bool = True,
    metrics: Any = None,
) -> list[BackendContext]:
    """One context per model instance: ``count`` per group (per listed GPU for KIND_GPU), as Triton does.
    KIND_AUTO means GPU where the backend can use one, else CPU; KIND_GPU without a usable GPU is an error."""
    gpu_ok = klass.gpu_available()
    plan: list[tuple[str, int, str]] = []  # kind, device, Triton's instance name <group>_<index>
    for g, group in enumerate(config.instance_group):
        group_name = group.name or f"{config.name}_{g}"
        count = group.count or 1
        kind = group.kind
        if kind == KIND_AUTO:
            kind = KIND_GPU if gpu_ok else KIND_CPU
        if kind == KIND_GPU:
            if not gpu_ok:
                raise ModelLoadError(
                    f"model '{config.name}': instance group '{group.name or 'unnamed'}' asks for KIND_GPU but "
                    f"no GPU is usable ({klass.name}: CUDA execution provider not available); use KIND_CPU "
                    f"or KIND_AUTO"
                )
            devices = [gpu for gpu in (list(group.gpus) or [0]) for _ in range(count)]
            plan += [("GPU", gpu, f"{group_name}_{i}") for i, gpu in enumerate(devices)]
        elif kind == KIND_CPU:
            plan += [("CPU", 0, f"{group_name}_{i}") for i in range(count)]
        else:
            kind_name = model_config_pb2.ModelInstanceGroup.Kind.Name(kind)
            raise ModelLoadError(f"model '{config.name}': instance group kind {kind_name} is not supported")
    cpu_instances = sum(1 for kind, _, _ in plan if kind == "CPU") or 1
    base = {"cpu_count": cpu_count} if cpu_count else {}
    return [
        BackendContext(
            instance_count=cpu_instances,
            kind=kind,
            device_id=dev,
            instance_name=name,
            caller=caller,
            auto_complete=auto_complete,
            metrics=metrics,
            **base,
        )
        for kind, dev, name in plan
    ]
