"""TensorFlow (SavedModel, GraphDef) and TFLite models served by a real ``kiln serve`` and called through
tritonclient over HTTP and gRPC: auto-completed configs, UINT8 NHWC images, dynamic batching, the detector's
reshaped output, an INT8 TFLite model's scale/zero point in its config, and a wrong datatype refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import tf_models
from servers import KilnProcess

DETECTOR = tf_models.DETECTOR_CONFIG
MODULES = [httpclient, grpcclient]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("tf_repo")
    tf_models.save_classifier(repo / "tf_classifier" / "1" / "model.savedmodel")
    (repo / "tf_classifier" / "config.pbtxt").write_text(
        'platform: "tensorflow_savedmodel"\nmax_batch_size: 8\n'
        "dynamic_batching { max_queue_delay_microseconds: 20000 }\n"
        'parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "2" } }\n'
    )
    tf_models.write_detector_graphdef(repo / "tf_detector" / "1" / "model.graphdef")
    (repo / "tf_detector" / "config.pbtxt").write_text(DETECTOR)
    tf_models.write_tflite(repo / "tflite_dense" / "1" / "model.tflite")  # no config: auto-completed
    tf_models.write_tflite(repo / "tflite_int8" / "1" / "model.tflite", int8=True)
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs"))
    proc.start(timeout=120)
    yield proc
    assert proc.stop() == 0, proc.log()


def client(server: KilnProcess, module: Any) -> Any:
    return module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)


def model_config(c: Any, name: str) -> dict[str, Any]:
    if isinstance(c, httpclient.InferenceServerClient):
        return c.get_model_config(name)
    return c.get_model_config(name, as_json=True)["config"]


def tensor(module: Any, name: str, value: np.ndarray, datatype: str) -> Any:
    t = module.InferInput(name, list(value.shape), datatype)
    t.set_data_from_numpy(value)
    return t


@pytest.mark.parametrize("module", MODULES)
def test_metadata_names_each_format(server: KilnProcess, module: Any) -> None:
    c = client(server, module)
    platforms = {}
    for name in ("tf_classifier", "tf_detector", "tflite_dense"):
        md = c.get_model_metadata(name)
        platforms[name] = md["platform"] if module is httpclient else md.platform
    assert platforms == {
        "tf_classifier": "tensorflow_savedmodel",
        "tf_detector": "tensorflow_graphdef",
        "tflite_dense": "tflite",
    }


@pytest.mark.parametrize("module", MODULES)
def test_savedmodel_uint8_images_batch_dynamically(server: KilnProcess, module: Any) -> None:
    c = client(server, module)
    config = model_config(c, "tf_classifier")
    assert [i["name"] for i in config["input"]] == ["image"]  # auto-completed from the signature
    batches = [
        np.random.default_rng(i).integers(0, 256, (1 + i % 3, 4, 4, 3), dtype=np.uint8) for i in range(8)
    ]

    def one(images: np.ndarray) -> np.ndarray:
        result = client(server, module).infer("tf_classifier", [tensor(module, "image", images, "UINT8")])
        return result.as_numpy("scores")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, batches))
    for images, scores in zip(batches, results, strict=True):
        np.testing.assert_allclose(scores, tf_models.classifier_scores(images), rtol=1e-5)


@pytest.mark.parametrize("module", MODULES)
def test_graphdef_detector_answers_with_the_configured_shapes(server: KilnProcess, module: Any) -> None:
    images = np.random.default_rng(5).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    result = client(server, module).infer("tf_detector", [tensor(module, "image_tensor", images, "UINT8")])
    assert result.as_numpy("detection_boxes").shape == (2, 4, 4)
    np.testing.assert_allclose(
        result.as_numpy("detection_scores"), tf_models.detector_scores(images), rtol=1e-5
    )
    np.testing.assert_array_equal(result.as_numpy("num_detections"), [[4.0], [4.0]])  # reshape [] -> dims [1]


@pytest.mark.parametrize("module", MODULES)
def test_tflite_float_and_int8(server: KilnProcess, module: Any) -> None:
    c = client(server, module)
    x = np.random.default_rng(1).uniform(-1, 1, (3, 4)).astype(np.float32)
    y = c.infer("tflite_dense", [tensor(module, "x", x, "FP32")]).as_numpy("y")
    np.testing.assert_allclose(y, tf_models.dense_reference(x), rtol=1e-5, atol=1e-6)
    params = model_config(c, "tflite_int8")["parameters"]
    qx = json.loads(params["quantization:x"]["string_value"])
    qy = json.loads(params["quantization:y"]["string_value"])
    x_int = np.clip(np.round(x / qx["scale"]) + qx["zero_point"], -128, 127).astype(np.int8)
    y_int = c.infer("tflite_int8", [tensor(module, "x", x_int, "INT8")]).as_numpy("y")
    dequantised = (y_int.astype(np.float32) - qy["zero_point"]) * qy["scale"]
    np.testing.assert_allclose(dequantised, tf_models.dense_reference(x), atol=0.05)


@pytest.mark.parametrize("module", MODULES)
def test_wrong_datatype_is_refused_clearly(server: KilnProcess, module: Any) -> None:
    images = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(
        InferenceServerException, match=r"data-type is 'FP32', but model 'tf_classifier' expects 'UINT8'"
    ):
        client(server, module).infer("tf_classifier", [tensor(module, "image", images, "FP32")])
