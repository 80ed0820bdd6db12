"""Tiny TensorFlow models built by the tests (TF's own save / freeze / convert; nothing downloaded): a UINT8 NHWC
image classifier as a SavedModel (two signatures), a frozen GraphDef detector with the seed's I/O names, and TFLite
conversions of the classifier head (float, and full-integer INT8 quantised). Import only after
``pytest.importorskip("tensorflow")``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

WEIGHTS = np.arange(9, dtype=np.float32).reshape(3, 3) / 10.0  # image channel means -> 3 class scores
DENSE = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3)


class Classifier(tf.Module):
    """``image`` UINT8 [batch, h, w, 3] -> ``scores`` FP32 [batch, 3] (channel means @ WEIGHTS), ``label`` INT64."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.w = tf.Variable(WEIGHTS)
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="image")]
        )
        self.double = tf.function(
            self._double, input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")]
        )

    def _serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        means = tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2])
        scores = tf.matmul(means, self.w)
        return {"scores": scores, "label": tf.argmax(scores, axis=1)}

    def _double(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0}


def classifier_scores(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32).mean(axis=(1, 2)) @ WEIGHTS


def save_classifier(path: Path, height: int = 4, width: int = 4, default: bool = True) -> Path:
    """A SavedModel folder: signatures ``serving_default`` (or ``classify`` when not ``default``) and ``double``."""
    module = Classifier(height, width)
    key = "serving_default" if default else "classify"
    tf.saved_model.save(module, str(path), signatures={key: module.serve, "double": module.double})
    return path


def detector_scores(images: np.ndarray) -> np.ndarray:
    """What the detector's ``detection_scores`` are for a batch: 4 scores per image from its channel means."""
    means = images.astype(np.float32).mean(axis=(1, 2)) / 255.0  # [b, 3]
    return np.concatenate([means, means.mean(axis=1, keepdims=True)], axis=1)


def write_detector_graphdef(path: Path) -> Path:
    """A frozen GraphDef with the seed detector's names: ``image_tensor`` UINT8 [batch, h, w, 3] ->
    ``detection_boxes`` [batch, 4, 4], ``detection_scores`` [batch, 4], ``detection_classes`` [batch, 4],
    ``num_detections`` [batch]; plus a no-op ``init`` for TF_INIT_OPS_FILE."""
    offset = tf.Variable(np.float32(1.0))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="image_tensor")])
    def detect(image_tensor: tf.Tensor) -> list[tf.Tensor]:
        means = tf.reduce_mean(tf.cast(image_tensor, tf.float32), axis=[1, 2]) / 255.0
        scores = tf.concat([means, tf.reduce_mean(means, axis=1, keepdims=True)], axis=1)
        batch = tf.shape(image_tensor)[0]
        boxes = tf.tile(tf.reshape(scores, [-1, 4, 1]), [1, 1, 4])
        classes = tf.tile(tf.range(4, dtype=tf.float32)[None, :], [batch, 1]) + offset
        return [
            tf.identity(boxes, name="detection_boxes"),
            tf.identity(scores, name="detection_scores"),
            tf.identity(classes, name="detection_classes"),
            tf.identity(tf.cast(tf.fill([batch], 4), tf.float32), name="num_detections"),
        ]

    frozen = convert_variables_to_constants_v2(detect.get_concrete_function())
    path.parent.mkdir(parents=True, exist_ok=True)
    graph_def = frozen.graph.as_graph_def()
    init = graph_def.node.add()  # what a TF_INIT_OPS_FILE names (freezing prunes unused ops, so added here)
    init.name, init.op = "init", "NoOp"
    path.write_bytes(graph_def.SerializeToString())
    return path


class Dense(tf.Module):
    """``x`` FP32 [batch, 4] -> ``y`` = relu(x @ DENSE) [batch, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(DENSE)
        self.call = tf.function(self._call, input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])

    def _call(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.nn.relu(tf.matmul(x, self.w))}


def dense_reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ DENSE, 0.0)


def write_tflite(path: Path, int8: bool = False) -> Path:
    """The Dense module through TF's TFLite converter; ``int8``: full-integer quantised with INT8 input/output."""
    module = Dense()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.call.get_concrete_function()], module)
    if int8:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.uniform(-1, 1, (1, 4)).astype(np.float32)] for _ in range(32)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    return path


# the frozen detector's config (write_detector_graphdef): UINT8 NHWC images in, boxes / scores / classes out
DETECTOR_CONFIG = """
platform: "tensorflow_graphdef"
max_batch_size: 2
default_model_filename: "model.graphdef"
input [ { name: "image_tensor" data_type: TYPE_UINT8 dims: [ 6, 8, 3 ] } ]
output [
  { name: "detection_boxes" data_type: TYPE_FP32 dims: [ 4, 4 ] },
  { name: "detection_scores" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "detection_classes" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "num_detections" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }
]
"""
