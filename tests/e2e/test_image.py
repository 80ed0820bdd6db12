"""The container image (deploy/Containerfile): built with buildah, then run with buildah for real.

Opt-in, as building takes minutes and needs root, buildah and debootstrap:
``KILN_IMAGE_TEST=1 .venv/bin/python -m pytest tests/e2e/test_image.py``. ``KILN_IMAGE_REUSE=1`` skips the
build and tests the image already in build/image/storage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from kiln import __version__
from kiln.examples import models, write_model
from servers import free_port, free_ports, wait_until

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("KILN_IMAGE", f"localhost/kiln:{__version__}")
BUILDAH = [
    "buildah",
    "--root", str(ROOT / "build/image/storage"),
    "--runroot", str(ROOT / "build/image/run"),
    "--storage-driver", "vfs",
]  # fmt: skip
KILN_UID = 10001

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("KILN_IMAGE_TEST") != "1", reason="set KILN_IMAGE_TEST=1 to build the image"
    ),
    pytest.mark.timeout(1800),
]


def buildah(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def image() -> str:
    assert shutil.which("buildah"), "needs buildah (apt-get install -y buildah debootstrap)"
    if os.environ.get("KILN_IMAGE_REUSE") != "1":
        start = time.monotonic()
        subprocess.run(
            ["bash", "deploy/build-image.sh"], cwd=ROOT, check=True, env={**os.environ, "KILN_IMAGE": IMAGE}
        )
        print(f"image built in {time.monotonic() - start:.0f}s")
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    name = f"kiln-test-{os.getpid()}"
    buildah("from", "--pull-never", "--name", name, image)
    yield name
    buildah("rm", name)


def run_in(container: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [*BUILDAH, "run", "--isolation", "chroot", "--network", "host", container, "--", *command]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_image_config(image: str) -> None:
    inspected = json.loads(buildah("inspect", "--type", "image", image))
    config = inspected["Docker"]["config"]
    assert config["User"] == f"{KILN_UID}:{KILN_UID}"
    assert config["Entrypoint"] == ["kiln"]
    assert config["Cmd"][:3] == ["serve", "--model-repository", "/models"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "8002/tcp"}
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    assert len(inspected["Docker"]["rootfs"]["diff_ids"]) == 1  # FROM scratch, one layer, no wheelhouse left
    print(buildah("images", image))


def test_kiln_help_runs_as_the_kiln_user(container: str) -> None:
    helped = run_in(container, "kiln", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage: kiln" in helped.stdout and "serve" in helped.stdout
    ident = run_in(container, "id", "-u")
    assert ident.stdout.strip() == str(KILN_UID)
    python = run_in(
        container, "python", "-c", "import sys, kiln; print(sys.version_info[:2], kiln.__version__)"
    )
    assert python.stdout.strip() == f"(3, 11) {__version__}", python.stderr


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kiln_server_pid(buildah_pid: int) -> int | None:
    for pid in _descendants(buildah_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"python" in cmdline[0] and any(arg.endswith(b"/kiln") for arg in cmdline[1:2]):
            return pid
    return None


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _add_sub_inputs(module: object, a: np.ndarray) -> list[object]:
    inputs = [
        module.InferInput("INPUT0", list(a.shape), "FP32"),
        module.InferInput("INPUT1", list(a.shape), "FP32"),
    ]  # type: ignore[attr-defined]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    return inputs


def test_serves_a_mounted_repository(image: str, container: str, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "add_sub", models.add_sub(["batch", 4]), None)  # no config.pbtxt: auto-completed
    os.chmod(tmp_path, 0o755)
    for path in repo.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    http_port, grpc_port, metrics_port = free_ports(3)
    log = tmp_path / "serve.log"
    cmd = [
        *BUILDAH, "run", "--isolation", "chroot", "--network", "host", "-v", f"{repo}:/models:ro", container, "--",
        "kiln", "serve", "--model-repository", "/models", "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: _ready(f"127.0.0.1:{http_port}") or proc.poll() is not None, 120, "readiness")
        assert proc.poll() is None, log.read_text()
        server_pid = _kiln_server_pid(proc.pid)
        assert server_pid is not None, "no kiln serve process under buildah run"
        assert _uid(server_pid) == KILN_UID

        a = np.arange(8, dtype=np.float32).reshape(2, 4)
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        result = http.infer("add_sub", _add_sub_inputs(httpclient, a))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - 1)
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert grpc.is_server_ready()
        np.testing.assert_array_equal(
            grpc.infer("add_sub", _add_sub_inputs(grpcclient, a)).as_numpy("OUTPUT0"), a + 1
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'nv_inference_request_success{model="add_sub",version="1"} 2' in metrics
        assert "nv_inference_queue_duration_us{" in metrics
        # the image's own HEALTHCHECK command, run in the container next to the server (on this test's port)
        healthcheck = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"][
            "Healthcheck"
        ]
        assert healthcheck["Test"][0] == "CMD"
        probe = [arg.replace(":8000/", f":{http_port}/") for arg in healthcheck["Test"][1:]]
        assert run_in(container, *probe).returncode == 0
        down = run_in(container, *(arg.replace(f":{http_port}/", f":{free_port()}/") for arg in probe))
        assert down.returncode != 0  # and it fails where nothing listens

        os.kill(server_pid, signal.SIGTERM)  # graceful stop: kiln exits 0, and so does buildah run
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
