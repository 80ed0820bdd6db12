"""The seed's three ``config.pbtxt`` shapes, written in the classic Triton form, on models of the same I/O built
here, all served by one real ``kiln serve`` and called through tritonclient over HTTP and gRPC:

- classification ONNX with ``reshape`` (Triton's ``densenet_onnx`` layout: ``data_0`` [3, 224, 224] reshaped to
  [1, 3, 224, 224], ``fc6_1`` [1000] reshaped from [1, 1000, 1, 1], with a label file; ``max_batch_size: 0``);
- detection ``tensorflow_graphdef`` (TF object-detection API layout: ``image_tensor`` UINT8 [600, 1024, 3],
  ``detection_boxes`` [100, 4], ``detection_scores`` [100], ``detection_classes`` [100], ``num_detections`` [1]
  with ``reshape { shape: [ ] }``; ``max_batch_size: 1``), skipped without tensorflow;
- segmentation ONNX: ``dims: [3, -1, -1]``, ``reshape { shape: [1, 3, -1, -1] }``, ``max_batch_size: 0`` (output
  [21, -1, -1] reshaped from the model's [1, 21, -1, -1], VOC's 21 classes).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper

from servers import KilnProcess

HAS_TF = importlib.util.find_spec("tensorflow") is not None
MODULES = [httpclient, grpcclient]

CLASSIFICATION = """name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""

DETECTION = """name: "faster_rcnn_inception_v2"
platform: "tensorflow_graphdef"
max_batch_size: 1
input [
  {
    name: "image_tensor"
    data_type: TYPE_UINT8
    format: FORMAT_NHWC
    dims: [ 600, 1024, 3 ]
  }
]
output [
  {
    name: "detection_boxes"
    data_type: TYPE_FP32
    dims: [ 100, 4 ]
  },
  {
    name: "detection_scores"
    data_type: TYPE_FP32
    dims: [ 100 ]
  },
  {
    name: "detection_classes"
    data_type: TYPE_FP32
    dims: [ 100 ]
  },
  {
    name: "num_detections"
    data_type: TYPE_FP32
    dims: [ 1 ]
    reshape { shape: [ ] }
  }
]
"""

SEGMENTATION = """name: "fcn_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {
    name: "input"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, -1, -1 ]
    reshape { shape: [ 1, 3, -1, -1 ] }
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 21, -1, -1 ]
    reshape { shape: [ 1, 21, -1, -1 ] }
  }
]
"""

CLASSES = 1000
SEG_CLASSES = 21
CLS_WEIGHTS = np.linspace(-1.0, 1.0, CLASSES * 3, dtype=np.float32).reshape(CLASSES, 3, 1, 1)
SEG_WEIGHTS = np.linspace(-1.0, 1.0, SEG_CLASSES * 3, dtype=np.float32).reshape(SEG_CLASSES, 3, 1, 1)


def _onnx(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], weights: list[Any]) -> None:
    graph = helper.make_graph(nodes, path.parent.parent.name, inputs, outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def write_classifier(model_dir: Path) -> None:
    """``data_0`` [1, 3, 224, 224] -> global average pool -> 1x1 conv -> ``fc6_1`` [1, 1000, 1, 1]."""
    _onnx(
        model_dir / "1" / "model.onnx",
        [
            helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
            helper.make_node("Conv", ["pooled", "w"], ["fc6_1"]),
        ],
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, CLASSES, 1, 1])],
        [numpy_helper.from_array(CLS_WEIGHTS, "w")],
    )
    (model_dir / "densenet_labels.txt").write_text("".join(f"class_{i}\n" for i in range(CLASSES)))
    (model_dir / "config.pbtxt").write_text(CLASSIFICATION)


def classifier_reference(image: np.ndarray) -> np.ndarray:
    return CLS_WEIGHTS[:, :, 0, 0] @ image.mean(axis=(1, 2))


def write_segmenter(model_dir: Path) -> None:
    """``input`` [1, 3, H, W] -> 1x1 conv -> ``output`` [1, 21, H, W] (H, W dynamic)."""
    _onnx(
        model_dir / "1" / "model.onnx",
        [helper.make_node("Conv", ["input", "w"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, SEG_CLASSES, "height", "width"])],
        [numpy_helper.from_array(SEG_WEIGHTS, "w")],
    )
    (model_dir / "config.pbtxt").write_text(SEGMENTATION)


def segmenter_reference(image: np.ndarray) -> np.ndarray:
    return np.einsum("kc,chw->khw", SEG_WEIGHTS[:, :, 0, 0], image)


def write_detector(model_dir: Path) -> None:
    """A frozen GraphDef with the TF object-detection API's I/O: ``image_tensor`` UINT8 [b, 600, 1024, 3] ->
    ``detection_boxes`` [b, 100, 4], ``detection_scores`` [b, 100], ``detection_classes`` [b, 100],
    ``num_detections`` [b] (the channel means of each image spread over the 100 slots)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([None, 600, 1024, 3], tf.uint8, name="image_tensor")])
    def detect(image_tensor: tf.Tensor) -> list[tf.Tensor]:
        means = tf.reduce_mean(tf.cast(image_tensor, tf.float32), axis=[1, 2]) / 255.0  # [b, 3]
        batch = tf.shape(image_tensor)[0]
        ramp = tf.range(100, dtype=tf.float32)[None, :] / 100.0  # [1, 100]
        scores = tf.reduce_mean(means, axis=1, keepdims=True) * (1.0 - ramp)  # [b, 100]
        boxes = tf.tile(scores[:, :, None], [1, 1, 4])
        classes = tf.tile(tf.range(1, 101, dtype=tf.float32)[None, :], [batch, 1])
        return [
            tf.identity(boxes, name="detection_boxes"),
            tf.identity(scores, name="detection_scores"),
            tf.identity(classes, name="detection_classes"),
            tf.identity(tf.cast(tf.fill([batch], 100), tf.float32), name="num_detections"),
        ]

    frozen = convert_variables_to_constants_v2(detect.get_concrete_function())
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.graphdef").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    (model_dir / "config.pbtxt").write_text(DETECTION)


def detector_scores(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(axis=(0, 1)).mean() / 255.0 * (1.0 - np.arange(100) / 100.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("seed_repo")
    write_classifier(repo / "densenet_onnx")
    write_segmenter(repo / "fcn_onnx")
    if HAS_TF:
        write_detector(repo / "faster_rcnn_inception_v2")
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs"))
    proc.start(timeout=120)
    yield proc
    assert proc.stop() == 0, proc.log()


def client(server: KilnProcess, module: Any) -> Any:
    return module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)


def tensor(module: Any, name: str, value: np.ndarray, datatype: str) -> Any:
    t = module.InferInput(name, list(value.shape), datatype)
    t.set_data_from_numpy(value)
    return t


def metadata(c: Any, name: str) -> dict[str, Any]:
    if isinstance(c, httpclient.InferenceServerClient):
        return c.get_model_metadata(name)
    return c.get_model_metadata(name, as_json=True)


def _shapes(entries: list[dict[str, Any]]) -> dict[str, list[int]]:
    return {e["name"]: [int(d) for d in e["shape"]] for e in entries}


@pytest.mark.parametrize("module", MODULES)
def test_every_seed_model_is_ready_with_the_metadata_a_client_reads(server: KilnProcess, module: Any) -> None:
    c = client(server, module)
    index = {
        m["name"]: m for m in httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    expected = {"densenet_onnx", "fcn_onnx"} | ({"faster_rcnn_inception_v2"} if HAS_TF else set())
    assert {n: m["state"] for n, m in index.items()} == dict.fromkeys(expected, "READY"), index
    cls = metadata(c, "densenet_onnx")
    assert _shapes(cls["inputs"]) == {"data_0": [3, 224, 224]}
    assert _shapes(cls["outputs"]) == {"fc6_1": [1000]}
    seg = metadata(c, "fcn_onnx")
    assert _shapes(seg["inputs"]) == {"input": [3, -1, -1]}
    assert _shapes(seg["outputs"]) == {"output": [21, -1, -1]}
    if HAS_TF:
        det = metadata(c, "faster_rcnn_inception_v2")
        assert det["platform"] == "tensorflow_graphdef"
        assert _shapes(det["inputs"]) == {"image_tensor": [-1, 600, 1024, 3]}
        assert _shapes(det["outputs"]) == {
            "detection_boxes": [-1, 100, 4],
            "detection_scores": [-1, 100],
            "detection_classes": [-1, 100],
            "num_detections": [-1, 1],
        }


@pytest.mark.parametrize("module", MODULES)
def test_classification_answers_fc6_1_and_top_classes_with_labels(server: KilnProcess, module: Any) -> None:
    c = client(server, module)
    image = np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)
    want = classifier_reference(image)
    result = c.infer("densenet_onnx", [tensor(module, "data_0", image, "FP32")])
    scores = result.as_numpy("fc6_1")
    assert scores.shape == (1000,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-5)
    # what the seed's image_client asks for: the top classes as "score:index:label"
    top = c.infer(
        "densenet_onnx",
        [tensor(module, "data_0", image, "FP32")],
        outputs=[module.InferRequestedOutput("fc6_1", class_count=3)],
    ).as_numpy("fc6_1")
    assert top.shape == (3,)
    entries = [b.decode().split(":") for b in top]
    best = np.argsort(-want)[:3]
    assert [int(i) for _, i, _ in entries] == best.tolist()
    assert [label for _, _, label in entries] == [f"class_{i}" for i in best]
    np.testing.assert_allclose([float(s) for s, _, _ in entries], want[best], rtol=1e-4)


@pytest.mark.parametrize("module", MODULES)
def test_segmentation_answers_any_image_size_without_a_batch_dimension(
    server: KilnProcess, module: Any
) -> None:
    c = client(server, module)
    rng = np.random.default_rng(1)
    for height, width in ((32, 48), (17, 5)):
        image = rng.random((3, height, width), dtype=np.float32)
        out = c.infer("fcn_onnx", [tensor(module, "input", image, "FP32")]).as_numpy("output")
        assert out.shape == (21, height, width)
        np.testing.assert_allclose(out, segmenter_reference(image), rtol=1e-4, atol=1e-5)
        labels = out.argmax(axis=0)  # what a segmentation client draws
        assert labels.shape == (height, width)


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (the tensorflow extra)")
@pytest.mark.parametrize("module", MODULES)
def test_detection_answers_four_outputs_for_a_uint8_nhwc_image(server: KilnProcess, module: Any) -> None:
    c = client(server, module)
    image = np.random.default_rng(2).integers(0, 256, (1, 600, 1024, 3), dtype=np.uint8)
    result = c.infer("faster_rcnn_inception_v2", [tensor(module, "image_tensor", image, "UINT8")])
    boxes = result.as_numpy("detection_boxes")
    scores = result.as_numpy("detection_scores")
    classes = result.as_numpy("detection_classes")
    count = result.as_numpy("num_detections")
    assert boxes.shape == (1, 100, 4) and scores.shape == (1, 100) and classes.shape == (1, 100)
    assert count.shape == (1, 1) and count.tolist() == [[100.0]]  # dims [1], the model's [b] reshaped
    np.testing.assert_allclose(scores[0], detector_scores(image[0]), rtol=1e-4)
    np.testing.assert_allclose(boxes[0], np.repeat(scores[0][:, None], 4, axis=1))
    assert classes[0].tolist() == list(map(float, range(1, 101)))
