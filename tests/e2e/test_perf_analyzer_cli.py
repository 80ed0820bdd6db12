"""``kiln perf-analyzer``: NVIDIA's perf_analyzer run with the libraries it needs, against a real Kiln server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cli import perf_analyzer as pa
from kiln.errors import NotFoundError
from servers import KilnProcess


def test_environment_puts_the_cuda_runtime_first(tmp_path: Path) -> None:
    lib = tmp_path / "nvidia" / "cuda_runtime" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.12").write_bytes(b"")
    env = pa.environment({"LD_LIBRARY_PATH": "/opt/x"}, site_dirs=[tmp_path])
    assert env["LD_LIBRARY_PATH"] == f"{lib}:/opt/x"


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"perf_analyzer not found: install tritonclient==2\.50\.0"):
        pa.executable(tmp_path)


def _runnable() -> str:
    try:
        path, env = pa.executable(), pa.environment()
    except NotFoundError as e:
        return e.message
    probe = subprocess.run([str(path), "--version"], env=env, capture_output=True, text=True, timeout=30)
    return "" if "error while loading shared libraries" not in probe.stderr else probe.stderr.strip()


def test_perf_analyzer_measures_a_kiln_model(test_repo: Path, tmp_path: Path) -> None:
    why = _runnable()
    if why:
        pytest.skip(f"perf_analyzer cannot run here (`make bench-setup` makes it): {why}")
    # up to 10 windows: on a busy 2-core machine three in a row are not always within 50 % of each other
    with KilnProcess([test_repo], "--strict-readiness", "false", log_dir=tmp_path) as server:
        out = subprocess.run(
            [sys.executable, "-m", "kiln", "perf-analyzer", "-m", "add_sub", "-u", server.grpc_url, "-i", "grpc",
             "--concurrency-range", "1", "--measurement-interval", "500", "--max-trials", "10", "-s", "50"],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Concurrency: 1, throughput:" in out.stdout, out.stdout
