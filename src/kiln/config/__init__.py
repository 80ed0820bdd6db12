"""config.pbtxt <-> ModelConfig: parsing against Triton's schema, JSON rendering, auto-complete, validation."""

from kiln.config.complete import ModelIO, autocomplete, validate, validate_declared
from kiln.config.parse import (
    ModelConfig,
    config_to_dict,
    int_parameter,
    load_config,
    parse_config,
    parse_config_json,
    string_parameter,
)

__all__ = [
    "ModelConfig",
    "ModelIO",
    "autocomplete",
    "config_to_dict",
    "int_parameter",
    "load_config",
    "parse_config",
    "parse_config_json",
    "string_parameter",
    "validate",
    "validate_declared",
]
