"""The server as a process: default repository, readiness, --exit-on-error, busy ports, SIGTERM."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from servers import KilnProcess


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_no_repository_serves_the_bundled_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    with KilnProcess([], log_dir=tmp_path) as server:
        c = httpclient.InferenceServerClient(server.http_url)
        assert c.is_server_ready()
        assert {"add_sub", "image_classifier", "string_identity"} <= {
            m["name"] for m in c.get_model_repository_index()
        }
        a = np.ones((1, 16), np.float32)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for i in inputs:
            i.set_data_from_numpy(a)
        np.testing.assert_array_equal(c.infer("add_sub", inputs).as_numpy("OUTPUT0"), a * 2)
    assert (tmp_path / "cache" / "example-repository" / "add_sub" / "config.pbtxt").exists()


def test_strict_readiness_and_failed_model_keep_others_serving(
    test_repo: Path, broken_repo: Path, tmp_path: Path
) -> None:
    with KilnProcess([broken_repo], log_dir=tmp_path) as server:  # strict readiness is the default
        assert status(f"http://{server.http_url}/v2/health/live") == 200
        assert status(f"http://{server.http_url}/v2/health/ready") == 400
        assert status(f"http://{server.http_url}/v2/models/garbage_file/ready") == 400


def test_exit_on_error_stops_with_the_reason(broken_repo: Path, tmp_path: Path) -> None:
    server = KilnProcess([broken_repo], "--exit-on-error", "true", log_dir=tmp_path).start(wait=False)
    try:
        assert server.wait_exit(60) == 1
    finally:
        server.stop()
    assert "--exit-on-error" in server.log() and "garbage_file" in server.log()


def _startup_failure(server: KilnProcess) -> str:
    """Start ``server``, which must exit with status 1 before serving; its log."""
    server.start(wait=False)
    try:
        assert server.wait_exit(60) == 1
    finally:
        server.stop()
    return server.log()


@pytest.mark.parametrize(("flag", "what"), [("--http-port", "HTTP"), ("--grpc-port", "gRPC")])
def test_a_busy_port_is_one_clear_line_before_any_model_loads(
    test_repo: Path, tmp_path: Path, flag: str, what: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = KilnProcess([test_repo], log_dir=tmp_path)
        server.args[server.args.index(flag) + 1] = str(port)
        log = _startup_failure(server)
    assert f"cannot listen for {what} on 127.0.0.1:{port}" in log
    assert "loaded model" not in log and "chttp2" not in log  # no model loaded, no gRPC C-core log


def test_two_servers_on_one_port_is_a_clear_startup_error(test_repo: Path, tmp_path: Path) -> None:
    """Two sockets bound with SO_REUSEADDR and not yet listening may share a port on Linux: without the check,
    HTTP and gRPC both "listened" on one port and every HTTP client got gRPC's frames."""
    server = KilnProcess([test_repo], log_dir=tmp_path)
    server.args[server.args.index("--grpc-port") + 1] = str(server.http_port)
    log = _startup_failure(server)
    assert f"the HTTP and gRPC servers cannot share port {server.http_port}" in log
    assert "loaded model" not in log


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    server = KilnProcess([tmp_path / "nope"], log_dir=tmp_path).start(wait=False)
    try:
        assert server.wait_exit(60) == 1
    finally:
        server.stop()
    assert "does not exist" in server.log()


def test_sigterm_exits_zero(test_repo: Path, tmp_path: Path) -> None:
    server = KilnProcess([test_repo], "--allow-grpc", "false", log_dir=tmp_path).start()
    assert server.stop() == 0
    assert "shutting down" in server.log()
