"""``kiln bench`` on every framework backend through the one runtime family: TorchScript (inputs from the
config.pbtxt, the runtime cannot tell them), TFLite and a TensorFlow SavedModel (from their signatures)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

KILN = [sys.executable, "-m", "kiln", "bench", "--duration", "0.3", "--warmup", "0.1", "--threads", "1"]


def _bench(target: Path) -> str:
    out = subprocess.run([*KILN, str(target)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "throughput" in out.stdout and "intra_op_threads 1" in out.stdout, out.stdout
    return out.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the torch extra")
def test_bench_runs_a_torchscript_model_folder(tmp_path: Path) -> None:
    from torch_models import write_torchscript

    folder = write_torchscript(tmp_path, "add_sub")
    assert "torchscript" in _bench(folder)


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="needs the tflite extra")
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="the test model is built with TF")
def test_bench_runs_tflite_and_savedmodel_files(tmp_path: Path) -> None:
    from tf_models import save_classifier, write_tflite

    assert "quantization" in _bench(write_tflite(tmp_path / "int8.tflite", int8=True))
    assert "tensorflow" in _bench(save_classifier(tmp_path / "model.savedmodel")).lower()
