"""The thin CLI of kiln build / kiln bench, and that neither needs torch, openvino or matplotlib to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from build_models import conv_net, save, write_samples
from kiln.cli.main import main

# Runs Python with torch, openvino, nncf and matplotlib made unimportable, as on a machine without the extras.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'openvino', 'nncf', 'matplotlib'}:
            raise ImportError(f'blocked: {name}')
sys.meta_path.insert(0, Block())
"""


def _blocked(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_import_and_help_work_without_optional_runtimes() -> None:
    code = """
import kiln, kiln.builder, kiln.perf, kiln.backends.openvino
from kiln.cli.main import main
for argv in (['--help'], ['build', '--help'], ['bench', '--help']):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, argv
assert not {'torch', 'openvino', 'nncf', 'matplotlib'} & set(sys.modules)
"""
    proc = _blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert "--calibration-method" in proc.stdout and "--compare" in proc.stdout


def test_missing_extras_are_clear_errors(tmp_path: Path) -> None:
    save(conv_net(), tmp_path, "conv.onnx")
    (tmp_path / "model.pt").write_bytes(b"not really torchscript")
    code = """
from kiln.cli.main import main
rc1 = main(['build', 'model.pt', '-o', 'repo/m', '--shapes', 'x:1x3x16x16', '--no-progress'])
rc2 = main(['build', 'conv.onnx', '-o', 'repo/v', '--target', 'openvino', '--no-progress'])
print('RC', rc1, rc2)
"""
    proc = _blocked(code, cwd=tmp_path)
    assert "RC 1 1" in proc.stdout, proc.stderr
    assert "pip install 'kiln[torch]'" in proc.stderr
    assert "pip install 'kiln[openvino]'" in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_cli_build_then_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(conv_net(), tmp_path, "conv.onnx")
    write_samples(tmp_path / "cal", "x", (3, 16, 16), 24)
    repo = tmp_path / "repo"
    common = ["--no-progress", "--no-benchmark", "--min-validation-samples", "0"]
    assert (
        main(["build", str(tmp_path / "conv.onnx"), "-o", str(repo / "fp32"), "--threads", "1", *common]) == 0
    )
    int8 = [
        "build", str(tmp_path / "conv.onnx"), "-o", str(repo / "int8"), "--precision", "int8",
        "--calibration-data", str(tmp_path / "cal"), "--calibration-method", "percentile", "--percentile", "99.9",
        "--keep-fp32", "fc", "--max-batch-size", "4", *common,
    ]  # fmt: skip
    assert main(int8) == 0
    manifest = json.loads((repo / "int8" / "1" / "build.json").read_text())
    options = manifest["options"]
    assert options["precision"] == "int8"
    assert options["calibration"]["method"] == "percentile"
    assert options["calibration"]["percentile"] == 99.9
    assert options["calibration"]["keep_fp32"] == ["fc"]
    assert "max_batch_size: 4" in (repo / "int8" / "config.pbtxt").read_text()
    assert 'key: "intra_op_thread_count"' in (repo / "fp32" / "config.pbtxt").read_text()
    # the gate fails: exit 1, nothing written
    tight = [*int8[:3], str(repo / "tight"), *int8[4:], "--tolerance", "cosine=0.99999999,abs=1e-9"]
    assert main(tight) == 1
    assert not (repo / "tight").exists()
    assert "accuracy gate" in capsys.readouterr().err
    out = tmp_path / "bench.json"
    rc = main(["bench", "--compare", str(repo / "fp32"), str(repo / "int8"), "--iterations", "40",
               "--warmup", "0.05", "--batch", "2", "--json", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 2 and doc["results"][0]["threads"] == 1
    assert doc["ratios_b_over_a"]["throughput"] > 0
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 1
    assert main(["bench"]) == 1


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_build_compare_times_source_and_artifact_and_records_it(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if target == "openvino":
        pytest.importorskip("openvino")
    source = save(conv_net(), tmp_path, "conv.onnx")
    out = tmp_path / "repo" / "conv"
    argv = ["build", str(source), "-o", str(out), "--target", target, "--no-progress", "--no-benchmark"]
    rc = main([*argv, "--compare", "--compare-batch", "2", "--compare-duration", "0.4"])
    assert rc == 0
    record = json.loads((out / "1" / "build.json").read_text())["compare"]
    assert record["batch"] == 2
    assert record["source"]["artifact"] == str(source)
    assert record["artifact"]["backend"] == target
    assert record["source"]["throughput"] > 0 and record["artifact"]["throughput"] > 0
    ratio = record["ratios_artifact_over_source"]["throughput"]
    assert ratio == pytest.approx(record["artifact"]["throughput"] / record["source"]["throughput"])
    printed = capsys.readouterr().out
    assert "kiln bench - batch 2" in printed and "ORT_ENABLE_ALL" in printed
