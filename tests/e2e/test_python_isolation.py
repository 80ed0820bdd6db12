"""Process isolation for Python models: a worker per instance (another pid), crashes and hangs that make the model
UNAVAILABLE with a reason and restart it while other models keep serving, and EXECUTION_ENV_PATH environments."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servers import KilnProcess, wait_until

MODEL = """
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            action = int(x.reshape(-1)[0])
            if action == 1:
                os._exit(3)  # a crash: the worker process dies
            if action == 2:
                time.sleep(60)  # a hang
            big = np.full(x.shape[:1] + (1 << 16,), float(os.getpid()), np.float32)  # 256 KiB: shared memory
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("PID", big)]))
        return out
"""

ENV_MODEL = """
import numpy as np
import kiln_env_marker  # importable only inside the model's EXECUTION_ENV_PATH
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        where = np.array([[kiln_env_marker.WHERE.encode()]], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("WHERE", where)]) for _ in requests]
"""

CONFIG = """backend: "python" max_batch_size: 4
parameters {{ key: "KILN_ISOLATION" value: {{ string_value: "process" }} }}
parameters {{ key: "KILN_EXECUTE_TIMEOUT_S" value: {{ string_value: "2" }} }}
{extra}
input [{{ name: "X" data_type: TYPE_FP32 dims: [1] }}]
output [{{ name: "PID" data_type: TYPE_FP32 dims: [65536] }}]
"""

ENV_CONFIG = """backend: "python" max_batch_size: 4
parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{path}" }} }}
input [{{ name: "X" data_type: TYPE_FP32 dims: [1] }}]
output [{{ name: "WHERE" data_type: TYPE_STRING dims: [1] }}]
"""


def _environment(root: Path) -> Path:
    """A real venv of its own (its own site-packages with a marker module), seeing this venv's packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    (site / "kiln_env_marker.py").write_text("import sys\nWHERE = sys.prefix\n")
    (site / "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnProcess, Path]]:
    repo = tmp_path_factory.mktemp("isolation")
    env = _environment(tmp_path_factory.mktemp("envs") / "venv")
    packed = env.parent / "packed.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        archive.add(env, arcname=".")
    for name, code, config in (
        ("worker", MODEL, CONFIG.format(extra="")),
        ("other", MODEL, CONFIG.format(extra="")),
        ("in_env", ENV_MODEL, ENV_CONFIG.format(path=env)),
        ("in_packed_env", ENV_MODEL, ENV_CONFIG.format(path=packed)),
    ):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.pbtxt").write_text(config)
    proc = KilnProcess([repo], "--strict-readiness", "false", log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc, env
    assert proc.stop() == 0, proc.log()


def _x(value: float) -> list[httpclient.InferInput]:
    x = httpclient.InferInput("X", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[value]], np.float32))
    return [x]


def _pid(client: httpclient.InferenceServerClient, model: str) -> int:
    out = client.infer(model, _x(0)).as_numpy("PID")
    assert out.shape == (1, 65536) and (out == out[0, 0]).all()  # came back whole through shared memory
    return int(out[0, 0])


def test_each_instance_runs_in_its_own_process(server: tuple[KilnProcess, Path]) -> None:
    proc, _ = server
    client = httpclient.InferenceServerClient(proc.http_url)
    pid = _pid(client, "worker")
    assert proc.proc is not None and pid != proc.proc.pid and pid != _pid(client, "other")
    assert client.get_model_config("worker")["backend"] == "python"


@pytest.mark.parametrize(("action", "why"), [(1, "exited"), (2, "did not return within 2 s")])
def test_a_crash_or_a_hang_fails_the_request_and_the_worker_restarts(
    server: tuple[KilnProcess, Path], action: int, why: str
) -> None:
    proc, _ = server
    client = httpclient.InferenceServerClient(proc.http_url, network_timeout=30)
    before = _pid(client, "worker")
    with pytest.raises(InferenceServerException, match=why) as e:
        client.infer("worker", _x(action))
    assert e.value.status() == "503"
    other = _pid(client, "other")  # other models are unharmed, the server serves on
    assert other and client.is_server_live()
    wait_until(lambda: client.is_model_ready("worker"), 30, "the worker to restart")
    assert _pid(client, "worker") != before
    assert "restart" in proc.log()


def test_a_dead_worker_is_reported_until_it_is_back(server: tuple[KilnProcess, Path]) -> None:
    proc, _ = server
    client = httpclient.InferenceServerClient(proc.http_url)
    os.kill(_pid(client, "other"), 9)  # killed from outside
    seen: dict[str, str] = {}

    def reported() -> bool:  # polled: the restart follows within about a second
        row = next(m for m in client.get_model_repository_index() if m["name"] == "other")
        seen.update(row)
        return row["state"] == "UNAVAILABLE"

    wait_until(reported, 10, "the index to report the crash")
    assert "exit code -9" in seen["reason"] and "restarting" in seen["reason"]
    wait_until(lambda: client.is_model_ready("other"), 30, "the worker to restart")
    assert _pid(client, "other") > 0


@pytest.mark.parametrize("model", ["in_env", "in_packed_env"])
def test_execution_env_path_runs_the_model_in_that_environment(
    server: tuple[KilnProcess, Path], model: str
) -> None:
    proc, env = server
    client = httpclient.InferenceServerClient(proc.http_url)
    where = client.infer(model, _x(0)).as_numpy("WHERE")[0, 0].decode()  # the worker's sys.prefix
    if model == "in_env":
        assert where == str(env)
    else:  # unpacked once into a cache keyed by the archive's content
        assert Path(where).name.startswith("kiln-env-") and (Path(where) / "bin" / "python").exists()
