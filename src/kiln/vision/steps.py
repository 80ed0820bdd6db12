"""The example tasks' pre- and post-processing as server-side pipeline steps: each step maps a request's
input arrays (and its parameters) to output arrays, calling the same :mod:`kiln.vision.tasks` functions the
example clients call. :func:`model_py` writes the Triton ``model.py`` that serves a step with the Python
backend, so the three tasks run as ensembles: image bytes in, labels / boxes / a mask out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kiln.vision.images import ImageError, load_image
from kiln.vision.preprocess import Placement
from kiln.vision.tasks import (
    TEXT_THRESHOLD,
    classification_input,
    detection_input,
    detection_output,
    segmentation_input,
    segmentation_output,
)

Arrays = dict[str, np.ndarray]
Step = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], Arrays]


def _images(encoded: np.ndarray) -> list[np.ndarray]:
    """A BYTES tensor of encoded images (any shape; one image per element) -> RGB arrays."""
    flat = encoded.reshape(-1)
    if flat.size == 0:
        raise ImageError("no image in the request")
    return [load_image(bytes(item)) for item in flat]


def _one_image(encoded: np.ndarray) -> np.ndarray:
    images = _images(encoded)
    if len(images) != 1:
        raise ImageError(f"this step takes one image per request, got {len(images)}")
    return images[0]


def _number(parameters: Mapping[str, Any], key: str, default: float) -> float:
    value = parameters.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"request parameter '{key}' must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"request parameter '{key}' must be a number, got {value!r}") from None


def classification_preprocess(inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> Arrays:
    """``IMAGE`` [batch, 1] BYTES -> ``input`` [batch, 3, 224, 224] FP32."""
    return {"input": np.stack([classification_input(image) for image in _images(inputs["IMAGE"])])}


def detection_preprocess(inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> Arrays:
    """``IMAGE`` [1] BYTES -> ``image`` [1, 3, 800, 608] FP32 and ``PLACEMENT`` [8] FP64."""
    tensor, placement = detection_input(_one_image(inputs["IMAGE"]))
    return {"image": tensor, "PLACEMENT": placement.to_array()}


class DetectionPostprocess:
    """The detector's outputs and ``PLACEMENT`` -> ``BOXES`` [n, 4] FP32 (x1, y1, x2, y2 in the image),
    ``SCORES`` [n] FP32, ``CLASSES`` [n] INT32, ``LABELS`` [n] BYTES. Request parameters ``score_threshold``
    and ``iou_threshold`` (default 0.5) reach it through the ensemble."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels

    def __call__(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> Arrays:
        found = detection_output(
            inputs,
            Placement.from_array(inputs["PLACEMENT"]),
            self.labels,
            _number(parameters, "score_threshold", 0.5),
            _number(parameters, "iou_threshold", 0.5),
        )
        return {
            "BOXES": np.array([d.box for d in found], np.float32).reshape(-1, 4),
            "SCORES": np.array([d.score for d in found], np.float32),
            "CLASSES": np.array([d.class_id for d in found], np.int32),
            "LABELS": np.array([d.label.encode() for d in found], np.object_),
        }


def segmentation_preprocess(inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> Arrays:
    """``IMAGE`` [1] BYTES -> ``image`` [1, 3, H, W] FP32 and ``PLACEMENT`` [8] FP64."""
    tensor, placement = segmentation_input(_one_image(inputs["IMAGE"]))
    return {"image": tensor, "PLACEMENT": placement.to_array()}


def segmentation_postprocess(inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> Arrays:
    """``probability`` [1, 1, H, W] and ``PLACEMENT`` -> ``PROBABILITY`` [h, w] FP32 per pixel of the image and
    ``MASK`` [h, w] BOOL (text where the probability is above ``text_threshold``, default 0.3)."""
    probability = segmentation_output(inputs["probability"], Placement.from_array(inputs["PLACEMENT"]))
    threshold = _number(parameters, "text_threshold", TEXT_THRESHOLD)
    return {"PROBABILITY": probability, "MASK": probability > threshold}


def make_step(name: str, model_dir: str | Path) -> Step:
    """The step called ``name``; ``model_dir`` is the step model's folder (labels live there)."""
    if name == "detection_postprocess":
        labels = (Path(model_dir) / "labels.txt").read_text(encoding="utf-8").splitlines()
        return DetectionPostprocess(labels)
    steps: dict[str, Step] = {
        "classification_preprocess": classification_preprocess,
        "detection_preprocess": detection_preprocess,
        "segmentation_preprocess": segmentation_preprocess,
        "segmentation_postprocess": segmentation_postprocess,
    }
    if name not in steps:
        raise ValueError(
            f"no pipeline step '{name}'; the steps are {sorted([*steps, 'detection_postprocess'])}"
        )
    return steps[name]


def model_py(step: str) -> str:
    """The ``model.py`` that serves step ``step`` with the Python backend (Triton's API, unchanged)."""
    return f'''"""Kiln's {step} step (kiln.vision.steps) as a Triton Python model."""

import json

import triton_python_backend_utils as pb_utils

from kiln.errors import InvalidArgumentError
from kiln.vision.steps import make_step


class TritonPythonModel:
    def initialize(self, args):
        self.step = make_step({step!r}, args["model_repository"])

    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {{tensor.name(): tensor.as_numpy() for tensor in request.inputs()}}
            try:
                outputs = self.step(inputs, json.loads(request.parameters()))
            except (ValueError, InvalidArgumentError) as e:  # not an image, a bad parameter: the client's
                error = pb_utils.TritonError(getattr(e, "message", str(e)), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
'''
