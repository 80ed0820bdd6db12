"""Building into an existing model folder: what the user wrote in config.pbtxt stays, the build updates only
the fields it owns, and every change is listed (stage line and build.json)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from kiln.builder.options import Preprocessing
from kiln.config.schema import model_config_pb2
from kiln.errors import InvalidArgumentError

ModelConfig = model_config_pb2.ModelConfig
PREPROCESSING_KEY = "preprocessing"  # config parameter naming the image scaling the model expects


@dataclass
class ExistingModel:
    config: ModelConfig | None = None
    preprocessing: Preprocessing | None = None  # recorded for the model: config parameter or last build.json
    preprocessing_from: str = ""


def read_existing(model_dir: Path) -> ExistingModel:
    """The model folder's config.pbtxt (if any) and the pre-processing recorded for the model."""
    found = ExistingModel()
    path = model_dir / "config.pbtxt"
    if path.is_file():
        try:
            found.config = text_format.Parse(path.read_text(), ModelConfig())
        except text_format.ParseError as e:
            raise InvalidArgumentError(f"{path} does not parse, so it cannot be merged into: {e}") from None
        value = found.config.parameters.get(PREPROCESSING_KEY)
        if value is not None and value.string_value:
            found.preprocessing = _preprocessing(value.string_value, str(path))
            found.preprocessing_from = f"{path} (parameters.{PREPROCESSING_KEY})"
    if found.preprocessing is None:
        _from_last_build(model_dir, found)
    return found


def _from_last_build(model_dir: Path, found: ExistingModel) -> None:
    versions = sorted(
        (int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()), reverse=True
    )
    for version in versions:
        manifest = model_dir / str(version) / "build.json"
        if manifest.is_file():
            try:
                value = json.loads(manifest.read_text())["options"]["calibration"]["preprocessing"]
            except (KeyError, TypeError, ValueError):
                return
            if value:
                found.preprocessing = _preprocessing(value, str(manifest))
                found.preprocessing_from = str(manifest)
            return


def _preprocessing(value: str, where: str) -> Preprocessing:
    try:
        return Preprocessing(value)
    except ValueError:
        names = ", ".join(p.value for p in Preprocessing)
        raise InvalidArgumentError(f"{where}: preprocessing '{value}' is not one of {names}") from None


def merge_config(generated: ModelConfig, existing: ModelConfig | None) -> tuple[ModelConfig, list[str]]:
    """``existing`` with the build's fields from ``generated``; the list of field changes."""
    if existing is None:
        return generated, []
    merged = ModelConfig()
    merged.CopyFrom(existing)
    changes: list[str] = []
    for field in ("name", "backend", "max_batch_size"):
        old, new = getattr(existing, field), getattr(generated, field)
        if old != new:
            setattr(merged, field, new)
            changes.append(f"{field}: {old!r} -> {new!r}")
    if existing.platform:
        merged.platform = ""
        changes.append(f"platform: {existing.platform!r} removed (backend {generated.backend!r})")
    _merge_ios(merged.input, existing.input, generated.input, "input", changes)
    _merge_ios(merged.output, existing.output, generated.output, "output", changes)
    if not existing.instance_group:
        merged.instance_group.extend(generated.instance_group)
        changes.append("instance_group: added " + _short(generated.instance_group[0]))
    _merge_batching(merged, existing, generated, changes)
    for key, value in generated.parameters.items():
        old = existing.parameters.get(key)
        if old is None or old.string_value != value.string_value:
            merged.parameters[key].string_value = value.string_value
            before = "unset" if old is None else repr(old.string_value)
            changes.append(f"parameters.{key}: {before} -> {value.string_value!r}")
    gpu = generated.optimization.execution_accelerators.gpu_execution_accelerator
    if gpu and list(gpu) != list(existing.optimization.execution_accelerators.gpu_execution_accelerator):
        accelerators = merged.optimization.execution_accelerators
        del accelerators.gpu_execution_accelerator[:]
        accelerators.gpu_execution_accelerator.extend(gpu)
        changes.append("optimization.execution_accelerators.gpu_execution_accelerator: set (tensorrt)")
    return merged, changes


def _merge_ios(merged, existing, generated, kind: str, changes: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Entries keep the user's extra fields (label_filename, format, reshape ...); type and dims are the model's."""
    old = {e.name: e for e in existing}
    del merged[:]
    for entry in generated:
        if entry.name not in old:
            merged.add().CopyFrom(entry)
            changes.append(f"{kind} {entry.name!r}: added")
            continue
        kept = merged.add()
        kept.CopyFrom(old[entry.name])
        if kept.data_type != entry.data_type:
            names = model_config_pb2.DataType.Name
            changes.append(
                f"{kind} {entry.name!r} data_type: {names(kept.data_type)} -> {names(entry.data_type)}"
            )
            kept.data_type = entry.data_type
        if list(kept.dims) != list(entry.dims):
            changes.append(f"{kind} {entry.name!r} dims: {list(kept.dims)} -> {list(entry.dims)}")
            del kept.dims[:]
            kept.dims.extend(entry.dims)
    for name in old.keys() - {e.name for e in generated}:
        changes.append(f"{kind} {name!r}: removed (not in the model)")


def _merge_batching(
    merged: ModelConfig, existing: ModelConfig, generated: ModelConfig, changes: list[str]
) -> None:
    if generated.max_batch_size == 0 and existing.HasField("dynamic_batching"):
        merged.ClearField("dynamic_batching")
        changes.append("dynamic_batching: removed (the model does not batch)")
    elif generated.HasField("dynamic_batching") and not existing.HasField("dynamic_batching"):
        merged.dynamic_batching.CopyFrom(generated.dynamic_batching)
        changes.append("dynamic_batching: added " + _short(generated.dynamic_batching))


def _short(message) -> str:  # type: ignore[no-untyped-def]
    return "{ " + text_format.MessageToString(message, as_one_line=True) + " }"


def add_labels(config: ModelConfig, labels: Path, model_dir: Path, changes: list[str]) -> Path:
    """Point the classification output's ``label_filename`` at ``labels`` (copied into the model folder by
    the caller, which gets the destination back)."""
    labels = Path(labels)
    if not labels.is_file():
        raise InvalidArgumentError(f"--labels {labels}: no such file")

    def class_dims(o: model_config_pb2.ModelOutput) -> list[int]:
        return list(o.dims) if config.max_batch_size > 0 else list(o.dims)[1:]

    outputs = [o for o in config.output if len(class_dims(o)) == 1]
    if not outputs:
        raise InvalidArgumentError("--labels needs a classification output (shaped [batch, classes])")
    entry = outputs[0]
    lines = [line for line in labels.read_text().splitlines() if line.strip()]
    classes = class_dims(entry)[0]
    if classes > 0 and len(lines) != classes:
        raise InvalidArgumentError(
            f"--labels {labels}: {len(lines)} labels for {classes} classes of '{entry.name}'"
        )
    if entry.label_filename != labels.name:
        changes.append(
            f"output {entry.name!r} label_filename: {entry.label_filename or 'unset'!r} -> {labels.name!r}"
        )
    entry.label_filename = labels.name
    return model_dir / labels.name


def copy_labels(labels: Path, destination: Path) -> None:
    if Path(labels).resolve() != destination.resolve():
        shutil.copyfile(labels, destination)
