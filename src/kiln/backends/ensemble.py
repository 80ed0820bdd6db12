"""Ensembles (``platform: "ensemble"``): no runtime of their own. At load the steps are checked against their
models' configs and the dataflow graph is built; requests are then run by the ensemble scheduler
(:mod:`kiln.scheduling.ensemble`), each step through its own model."""

from __future__ import annotations

from typing import ClassVar

from kiln.backends.base import Backend, ExecutionShape
from kiln.config.ensemble import ENSEMBLE_PLATFORM, EnsemblePlan, build_plan, step_models
from kiln.config.schema import model_config_pb2
from kiln.errors import InternalError, KilnError, ModelLoadError


class EnsembleBackend(Backend):
    name = "ensemble"
    platform = ENSEMBLE_PLATFORM
    config_platform = ENSEMBLE_PLATFORM
    default_filename = ""  # the version folder itself (Triton wants one, usually empty)
    shape = ExecutionShape.PER_REQUEST
    has_instances: ClassVar[bool] = False

    plan: EnsemblePlan

    def load(self) -> None:
        caller = self.context.caller
        if caller is None:
            raise ModelLoadError(
                f"ensemble '{self.config.name}' needs a server to call its step models (kiln serve)"
            )

        def lookup(name: str, version: str) -> model_config_pb2.ModelConfig:
            try:
                return caller.config_sync(name, version)
            except KilnError as e:
                which = f"version {version} of model '{name}'" if version else f"model '{name}'"
                raise ModelLoadError(
                    f"ensemble '{self.config.name}': step {which} is not available: {e.message}"
                ) from None

        self.plan = build_plan(self.config, lookup)
        # as in Triton: the ensemble is decoupled (any number of responses) exactly when a step is
        self.config.model_transaction_policy.decoupled = self.plan.decoupled

    def dependencies(self) -> list[str]:
        return step_models(self.config)

    def health(self) -> str | None:
        caller = self.context.caller
        if caller is None:
            return None
        for step in self.plan.steps:
            if not caller.ready_sync(step.model_name, step.model_version):
                which = f"version {step.model_version} of " if step.model_version else ""
                return f"ensemble step {which}model '{step.model_name}' is not ready"
        return None

    def settings(self) -> dict[str, object]:
        return {"steps": [s.model_name for s in self.plan.steps]}

    def execute_requests(self, works: list) -> None:  # type: ignore[type-arg]
        raise InternalError("ensemble requests are run by the ensemble scheduler, not executed directly")
