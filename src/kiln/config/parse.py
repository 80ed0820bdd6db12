"""Parse config.pbtxt with protobuf text format against Triton's own ``ModelConfig`` schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from kiln.config.schema import model_config_pb2
from kiln.errors import ModelConfigError

ModelConfig = model_config_pb2.ModelConfig

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def parse_config(text: str, source: str = "config.pbtxt") -> model_config_pb2.ModelConfig:
    """Parse protobuf text; errors name the source, line, column and field as protobuf reports them."""
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ModelConfigError(f"{source}:{e}") from None
    return config


def load_config(path: Path) -> model_config_pb2.ModelConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"cannot read {path}: {e}") from None
    return parse_config(text, str(path))


def parse_config_json(text: str | bytes, source: str = "config override") -> model_config_pb2.ModelConfig:
    """Parse a model config in Triton's JSON form (used by load requests with a config override)."""
    config = model_config_pb2.ModelConfig()
    try:
        json_format.Parse(text, config)
    except json_format.ParseError as e:
        raise ModelConfigError(f"{source}: {e}") from None
    return config


def string_parameter(config: model_config_pb2.ModelConfig, key: str) -> str | None:
    """A value from ``parameters { key: KEY value: { string_value: ... } }``; None when absent."""
    return config.parameters[key].string_value if key in config.parameters else None


def int_parameter(config: model_config_pb2.ModelConfig, key: str, default: int) -> int:
    """An integer config parameter; absent or empty gives ``default``, anything else non-integer is an error."""
    value = string_parameter(config, key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ModelConfigError(
            f"model '{config.name}': parameter '{key}' must be an integer, got '{value}'"
        ) from None


def config_to_dict(message: Message) -> dict[str, Any]:
    """Render a config as Triton does in JSON: every scalar present (defaults included), 64-bit ints as
    numbers (not the strings of proto3 JSON), enums by name, unset sub-messages left out."""
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            val_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _value_to_json(val_fd, v) for k, v in value.items()}
        elif fd.label == FieldDescriptor.LABEL_REPEATED:
            out[fd.name] = [_value_to_json(fd, v) for v in value]
        elif fd.message_type is not None:
            if message.HasField(fd.name):
                out[fd.name] = config_to_dict(value)
        elif fd.containing_oneof is not None and not message.HasField(fd.name):
            continue
        else:
            out[fd.name] = _value_to_json(fd, value)
    return out


def _value_to_json(fd: FieldDescriptor, value: Any) -> Any:
    if fd.message_type is not None:
        return config_to_dict(value)
    if fd.enum_type is not None:
        enum_value = fd.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("latin-1")
    if fd.type in _INT64_TYPES:
        return int(value)
    return value
