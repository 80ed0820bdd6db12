"""``kiln build --target ncnn`` (pnnx) writes a repository entry that a real ``kiln serve`` answers through
tritonclient with the ONNX source's names and results, batched by dynamic batching; ``kiln bench`` runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.examples import models
from servers import KilnProcess

KILN = [sys.executable, "-m", "kiln"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnProcess, Path, Path]]:
    work = tmp_path_factory.mktemp("ncnn_e2e")
    source = work / "cnn.onnx"
    onnx.save(models.image_classifier(num_classes=10, size=32), str(source))
    repo = work / "repo"
    command = [*KILN, "build", str(source), "-o", str(repo / "cnn"), "--target", "ncnn"]
    out = subprocess.run(
        [*command, "--threads", "2", "--no-benchmark", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in (repo / "cnn" / "1").iterdir()) == [
        "build.json",
        "model.bin",
        "model.param",
    ]
    config = (repo / "cnn" / "config.pbtxt").read_text()
    assert 'backend: "ncnn"' in config and '"num_threads"' in config
    server = KilnProcess([repo], "--exit-on-error", log_dir=work).start()
    yield server, source, repo / "cnn"
    assert server.stop() == 0, server.log()


def test_built_ncnn_model_answers_over_http_and_grpc(built: tuple[KilnProcess, Path, Path]) -> None:
    server, source, _ = built
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": x})[
        0
    ]
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.is_model_ready("cnn")
    config = http.get_model_config("cnn")
    assert config["backend"] == "ncnn" and config["max_batch_size"] == 8
    meta = http.get_model_metadata("cnn")
    assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [("input", [-1, 3, 32, 32])]
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = http.infer("cnn", [inp]).as_numpy("probabilities")
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    ginp = grpcclient.InferInput("input", [1, 3, 32, 32], "FP32")
    ginp.set_data_from_numpy(x[:1])
    np.testing.assert_allclose(
        grpc.infer("cnn", [ginp]).as_numpy("probabilities"), got[:1], rtol=1e-5, atol=1e-6
    )
    bad = httpclient.InferInput("input", [1, 3, 16, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        http.infer("cnn", [bad])


def test_kiln_bench_runs_the_ncnn_folder(built: tuple[KilnProcess, Path, Path]) -> None:
    _, _, folder = built
    bench = [*KILN, "bench", "--duration", "0.3", "--warmup", "0.1", "--threads", "1", "--batch", "2"]
    out = subprocess.run([*bench, str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "throughput" in out.stdout and "ncnn " in out.stdout and "num_threads 1" in out.stdout, out.stdout
