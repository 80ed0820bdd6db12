"""config.pbtxt <-> ModelConfig: parsing against Triton's schema, JSON rendering, auto-complete, validation."""

from kiln.config.complete import ModelIO, autocomplete, validate
from kiln.config.parse import ModelConfig, config_to_dict, load_config, parse_config, parse_config_json

__all__ = [
    "ModelConfig",
    "ModelIO",
    "autocomplete",
    "config_to_dict",
    "load_config",
    "parse_config",
    "parse_config_json",
    "validate",
]
