"""The bundled example repository, generated on demand (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto

from kiln.examples import models

EXAMPLE_VERSION = "1"  # bump when the generated repository changes

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


def build_example_repository(repo: Path) -> Path:
    """Write the example repository: add_sub, image_classifier (+labels), and string_identity (no config:
    auto-completed from the model file)."""
    repo.mkdir(parents=True, exist_ok=True)
    write_model(repo, "add_sub", models.add_sub(["batch", 16]), ADD_SUB_CONFIG)
    classifier_dir = write_model(repo, "image_classifier", models.image_classifier(), CLASSIFIER_CONFIG)
    (classifier_dir / "labels.txt").write_text("\n".join(CIFAR10_LABELS) + "\n")
    write_model(
        repo, "string_identity", models.identity(TensorProto.STRING, ["batch", 1], "string_identity"), None
    )
    (repo / ".kiln-example").write_text(EXAMPLE_VERSION)
    return repo


def default_repository() -> Path:
    """The example repository in the user's cache, (re)generated when missing or out of date."""
    base = Path(
        os.environ.get("KILN_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln"
    )
    repo = base / "example-repository"
    marker = repo / ".kiln-example"
    if not marker.exists() or marker.read_text().strip() != EXAMPLE_VERSION:
        build_example_repository(repo)
    return repo
