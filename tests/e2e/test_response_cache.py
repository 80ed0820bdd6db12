"""The response cache on a real server: a repeated request is answered from it (the model does not run again),
statistics and metrics count hits and misses, and models or servers that cannot use it are refused clearly."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from kiln.examples import models, write_model
from servers import KilnProcess

CACHED = """name: "cached"
backend: "onnxruntime"
max_batch_size: 8
response_cache { enable: true }
"""
STREAM = """name: "cached_stream"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
response_cache { enable: true }
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cache")
    write_model(repo, "cached", models.add_sub(["batch", 4]), CACHED)
    stream = repo / "cached_stream"
    (stream / "1").mkdir(parents=True)
    (stream / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def execute(self, requests):\n        pass\n"
    )
    (stream / "config.pbtxt").write_text(STREAM)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    proc = KilnProcess(
        [repo], "--cache-config", "local,size=1048576", "--strict-readiness", "false",
        log_dir=tmp_path_factory.mktemp("logs"),
    ).start()  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.log()


def _infer(server: KilnProcess, value: float) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.full((1, 4), value, np.float32)
    inputs = [httpclient.InferInput(f"INPUT{i}", [1, 4], "FP32") for i in (0, 1)]
    for t in inputs:
        t.set_data_from_numpy(a)
    return client.infer("cached", inputs).as_numpy("OUTPUT0")


def test_a_repeated_request_is_answered_from_the_cache(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    np.testing.assert_array_equal(_infer(server, 1.0), np.full((1, 4), 2.0))
    np.testing.assert_array_equal(_infer(server, 1.0), np.full((1, 4), 2.0))  # from the cache
    np.testing.assert_array_equal(_infer(server, 2.0), np.full((1, 4), 4.0))  # other inputs: computed
    stats = client.get_inference_statistics("cached")["model_stats"][0]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 3
    assert inference["cache_hit"]["count"] == 1 and inference["cache_miss"]["count"] == 2
    assert stats["execution_count"] == 2 and stats["inference_count"] == 2  # the hit ran nothing
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'nv_cache_num_hits_per_model{model="cached",version="1"} 1' in text
    assert 'nv_cache_num_misses_per_model{model="cached",version="1"} 2' in text


def test_a_decoupled_model_cannot_use_the_cache(server: KilnProcess) -> None:
    rows = {
        r["name"]: r for r in httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    assert rows["cached_stream"]["state"] == "UNAVAILABLE"
    assert "response_cache cannot serve a decoupled or sequence model" in rows["cached_stream"]["reason"]


def test_without_a_server_cache_the_model_is_refused(repo: Path, tmp_path: Path) -> None:
    with KilnProcess([repo], "--strict-readiness", "false", log_dir=tmp_path) as proc:
        rows = {
            r["name"]: r for r in httpclient.InferenceServerClient(proc.http_url).get_model_repository_index()
        }
    assert "start kiln serve with --cache-config local,size=BYTES" in rows["cached"]["reason"]
