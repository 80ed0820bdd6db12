"""TFLite (LiteRT) backend (``backend: "tflite"``, a Kiln platform of its own; ``model.tflite``), on CPU through
``ai-edge-litert``'s Interpreter. Imported only when such a model is loaded.

- Names: a model with one signature (what TF's converter writes) is served by its signature's input/output keys,
  as the SavedModel it came from; otherwise (or with parameter ``tensor_names: "tensor"``) by tensor names.
- Shapes: the details' ``shape_signature`` (-1 = dynamic) auto-complete the config; a request whose shape differs
  from the current one resizes the inputs (``resize_tensor_input``, strict: only dynamic dims change) before it
  runs, so a dynamic batch dimension batches.
- Quantised (INT8/UINT8) tensors carry their scale and zero point: ``settings()`` reports them (``kiln bench`` and
  the load log show them), and with auto-complete on they are written into the completed config as parameters
  ``quantization:<tensor>`` = ``{"scale": ..., "zero_point": ...}`` (lists for per-channel quantisation), so
  clients read them from the model config (Triton's model metadata has no field for them). Clients send and get
  the quantised integers, as the model takes them.
- ``num_threads`` (config parameter; default cores / instances; -1 lets LiteRT decide).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kiln.backends.base import Backend
from kiln.config import ModelIO
from kiln.errors import (
    InternalError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelConfigError,
    ModelLoadError,
)
from kiln.types.datatypes import from_numpy

QUANTIZATION_PREFIX = "quantization:"


class TFLiteBackend(Backend):
    name = "tflite"
    platform = "tflite"
    default_filename = "model.tflite"
    threads_parameter = "num_threads"

    def load(self) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelLoadError(str(MissingDependencyError("LiteRT (ai-edge-litert)", "tflite"))) from None
        if self.context.kind == "GPU":
            raise ModelLoadError("the TFLite backend serves on CPU only in Kiln; use instance_group KIND_CPU")
        threads = self.int_parameter("num_threads", self.default_threads())
        if threads == 0 or threads < -1:
            raise ModelConfigError(
                f"model '{self.config.name}': parameter 'num_threads' must be >= 1 (or -1: LiteRT decides), "
                f"got {threads}"
            )
        naming = (self.parameter("tensor_names") or "signature").lower()
        if naming not in ("signature", "tensor"):
            raise ModelConfigError(
                f"model '{self.config.name}': parameter 'tensor_names' must be 'signature' or 'tensor', "
                f"got '{naming}'"
            )
        try:
            self._interpreter = Interpreter(model_path=str(self.model_path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"LiteRT could not load {self.model_path.name}: {e}") from None
        self._lock = threading.Lock()
        self._threads = threads
        inputs = {d["index"]: d for d in self._interpreter.get_input_details()}
        outputs = {d["index"]: d for d in self._interpreter.get_output_details()}
        in_names = {i: d["name"] for i, d in inputs.items()}
        out_names = {i: d["name"] for i, d in outputs.items()}
        signatures = self._interpreter.get_signature_list()
        if naming == "signature" and len(signatures) == 1:
            key = next(iter(signatures))
            runner = self._interpreter.get_signature_runner(key)
            in_names = {d["index"]: n for n, d in runner.get_input_details().items()}
            out_names = {d["index"]: n for n, d in runner.get_output_details().items()}
            naming = f"signature '{key}'"
        elif naming == "signature":
            naming = "tensor (the model has no single signature)"
        self._naming = naming
        self._in = {in_names[i]: d for i, d in inputs.items()}
        self._out = {out_names[i]: d for i, d in outputs.items()}
        self._shapes = {d["index"]: tuple(int(s) for s in d["shape"]) for d in self._in.values()}
        self._quantization = {
            name: q for name, d in {**self._in, **self._out}.items() if (q := _quantization(d)) is not None
        }
        if self.context.auto_complete:
            for name, q in self._quantization.items():
                self.config.parameters[QUANTIZATION_PREFIX + name].string_value = json.dumps(q)

    def signature(self) -> tuple[list[ModelIO], list[ModelIO]] | None:
        return [self._io(n, d) for n, d in self._in.items()], [self._io(n, d) for n, d in self._out.items()]

    def _io(self, name: str, detail: Mapping[str, Any]) -> ModelIO:
        try:
            dtype = from_numpy(np.dtype(detail["dtype"]))
        except (TypeError, InvalidArgumentError):
            raise ModelLoadError(
                f"'{name}' has TFLite type {detail['dtype']}, which Kiln does not serve"
            ) from None
        shape = detail.get("shape_signature")
        if shape is None or len(shape) != len(detail["shape"]):
            shape = detail["shape"]
        return ModelIO(name, dtype, tuple(int(d) if d >= 0 else -1 for d in shape))

    def settings(self) -> dict[str, object]:
        try:
            from ai_edge_litert import __version__ as version
        except ImportError:  # pragma: no cover
            version = "?"
        out: dict[str, object] = {"runtime": f"ai-edge-litert {version}", "device": "CPU"}
        if hasattr(self, "_threads"):
            out["intra_op_threads"] = self._threads
            out["names"] = self._naming
        if getattr(self, "_quantization", None):
            out["quantization"] = self._quantization
        return out

    def quantization(self) -> dict[str, dict[str, Any]]:
        """Scale and zero point of each quantised input/output, by name."""
        return dict(self._quantization)

    def execute(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        it = self._interpreter
        try:
            with self._lock:  # one interpreter per instance: not thread-safe
                resized = False
                for name, array in inputs.items():
                    index = self._in[name]["index"]
                    if self._shapes[index] != array.shape:
                        it.resize_tensor_input(index, list(array.shape), strict=True)
                        self._shapes[index] = tuple(array.shape)
                        resized = True
                if resized:
                    it.allocate_tensors()
                for name, array in inputs.items():
                    it.set_tensor(self._in[name]["index"], np.ascontiguousarray(array))
                it.invoke()
                return {name: it.get_tensor(self._out[name]["index"]) for name in outputs}
        except (ValueError, RuntimeError) as e:
            text = str(e)
            if any(w in text.lower() for w in ("shape", "dimension", "dim ", "type")):
                raise InvalidArgumentError(f"model rejected the request: {text}") from None
            raise InternalError(f"model execution failed: {text}") from None

    def unload(self) -> None:
        self.__dict__.pop("_interpreter", None)


def _quantization(detail: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"scale", "zero_point"}`` of a quantised tensor (lists plus ``axis`` when per channel), else None."""
    params = detail.get("quantization_parameters") or {}
    scales = [float(s) for s in params.get("scales", [])]
    zero_points = [int(z) for z in params.get("zero_points", [])]
    if not scales:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        if not scale:
            return None
        return {"scale": float(scale), "zero_point": int(zero_point)}
    if len(scales) == 1:
        return {"scale": scales[0], "zero_point": zero_points[0] if zero_points else 0}
    return {"scale": scales, "zero_point": zero_points, "axis": int(params.get("quantized_dimension", 0))}
