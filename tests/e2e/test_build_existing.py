"""kiln build into a model folder the user already configured: the merged config keeps their settings, the
labels file is copied in, and kiln serve loads the result and classifies with the labels."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from build_models import conv_net, save, write_samples
from kiln.builder import BuildOptions, CalibrationOptions, Precision, build
from servers import KilnProcess

USER_CONFIG = """
name: "classifier"
backend: "onnxruntime"
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 16, 16 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 700 }
parameters { key: "user_note" value: { string_value: "hand-written" } }
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    work = tmp_path_factory.mktemp("build_existing")
    source = save(conv_net(), work, "conv.onnx")
    write_samples(work / "cal", "x", (3, 16, 16), 300)
    model_dir = work / "repo" / "classifier"
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(USER_CONFIG)
    (work / "names.txt").write_text("\n".join(f"class_{i}" for i in range(10)) + "\n")
    result = build(
        BuildOptions(
            source=source, output=model_dir, precision=Precision.INT8,
            calibration=CalibrationOptions(data=work / "cal"), labels=work / "names.txt",
            benchmark=False, progress=False,
        )
    )  # fmt: skip
    assert result.accuracy.samples >= 100 and result.manifest["config_changes"]
    server = KilnProcess([work / "repo"], "--exit-on-error", log_dir=work).start()
    yield server
    assert server.stop() == 0, server.log()


def test_merged_config_is_served_with_the_users_settings(served: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(served.http_url)
    assert client.is_model_ready("classifier")
    config = client.get_model_config("classifier")
    assert config["instance_group"][0]["count"] == 2
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 700
    assert config["parameters"]["user_note"]["string_value"] == "hand-written"
    assert config["output"][0]["label_filename"] == "names.txt"
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = httpclient.InferRequestedOutput("logits", class_count=1)
    top = client.infer("classifier", [inp], outputs=[out]).as_numpy("logits")
    assert top.shape == (2, 1)
    assert all(row[0].decode().split(":")[-1].startswith("class_") for row in top)
