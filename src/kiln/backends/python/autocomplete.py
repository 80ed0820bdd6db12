"""``pb_utils.ModelConfig``: what a Python model's ``auto_complete_config`` gets and fills in, with Triton's merge
and error rules (a conflicting datatype or dims fails the load; a smaller max_batch_size than configured is
refused)."""

from __future__ import annotations

import json
from typing import Any


class ModelConfig:
    """What ``auto_complete_config(auto_complete_model_config)`` gets: the config as Triton's JSON, and the calls
    that may fill it in (inputs, outputs, max_batch_size, dynamic batching, the transaction policy)."""

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._config = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._config.setdefault("input", [])
        self._config.setdefault("output", [])
        self._config.setdefault("max_batch_size", 0)

    def _where(self) -> str:
        return f"in auto-complete-config function for model '{self._config.get('name', '')}'"

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but {self._where()} specified "
                f"max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"configuration specified scheduling_choice as '{other}', but {self._where()} tries to set "
                    f"scheduling_choice as 'dynamic_batching'"
                )
        self._config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, entry: dict[str, Any], allowed: tuple[str, ...]) -> None:
        name = entry.get("name")
        extra = [k for k in entry if k not in allowed]
        if extra:
            raise ValueError(
                f"{kind} '{name}' {self._where()} contains properties {extra}; allowed: {allowed}"
            )
        for required in ("name", "data_type", "dims"):
            if required not in entry:
                raise ValueError(f"{kind} '{name or ''}' {self._where()} is missing '{required}' property")
        for current in self._config[kind]:
            if current.get("name") != name:
                continue
            dtype = current.get("data_type", "TYPE_INVALID")
            if dtype not in ("TYPE_INVALID", entry["data_type"]):
                raise ValueError(
                    f"unable to load model '{self._config.get('name', '')}', configuration expects datatype "
                    f"{dtype} for {kind} '{name}', model provides {entry['data_type']}"
                )
            dims = [int(d) for d in current.get("dims", [])]
            if dims and dims != [int(d) for d in entry["dims"]]:
                raise ValueError(
                    f"model '{self._config.get('name', '')}', tensor '{name}': the model expects dims "
                    f"{list(entry['dims'])} but the model configuration specifies dims {dims}"
                )
            if "optional" in entry and "optional" in current and current["optional"] != entry["optional"]:
                raise ValueError(f"model '{self._config.get('name', '')}', tensor '{name}': optional differs")
            current.update(entry)
            return
        self._config[kind].append(dict(entry))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        extra = [k for k in transaction_policy_dict if k != "decoupled"]
        if extra:
            raise ValueError(
                f"model transaction property {self._where()} contains property other than 'decoupled'"
            )
        policy = self._config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(
                    f"trying to change decoupled property {self._where()}, which is already set to "
                    f"'{policy['decoupled']}'"
                )
            policy["decoupled"] = wanted
