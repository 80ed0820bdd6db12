"""The ``kiln serve`` that ``kiln tune`` measures: a subprocess on free 127.0.0.1 ports, explicit model control.

The server serves the model folder's repository (its parent folder) but loads only the model being tuned; each
candidate is loaded through the repository API with its config as an override (``parameters.config``), so
nothing is written into the user's folder and each candidate replaces the previous one the way a hot reload
does in production.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from kiln.config.schema import model_config_pb2
from kiln.errors import InvalidArgumentError, KilnError, UnavailableError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TuneServer:
    """One ``python -m kiln serve --model-control-mode explicit`` for the model folder ``model_dir``."""

    def __init__(self, model_dir: Path, log_path: Path, python: str = sys.executable) -> None:
        self.model_dir = model_dir.resolve()
        self.name = self.model_dir.name
        self.log_path = log_path
        self.http_port, self.grpc_port = free_port(), free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self._base = f"http://127.0.0.1:{self.http_port}"
        self.args = [
            python, "-m", "kiln", "serve",
            "--model-repository", str(self.model_dir.parent),
            "--model-control-mode", "explicit",
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--allow-metrics", "false",
            "--exit-timeout-secs", "5",
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> TuneServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self._proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_live(self._proc, time.monotonic() + timeout_s, timeout_s)
        except BaseException:  # not up (or interrupted while starting): never leave it running
            self.stop()
            raise
        return self

    def _wait_live(self, proc: subprocess.Popen[bytes], deadline: float, timeout_s: float) -> None:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UnavailableError(f"kiln serve exited with {proc.returncode}: {self.log_tail()}")
            try:
                self._request("GET", "/v2/health/live", timeout=1.0)
                return
            except (OSError, KilnError):
                time.sleep(0.1)
        raise UnavailableError(f"kiln serve did not come up within {timeout_s:.0f} s: {self.log_tail()}")

    def load(self, config: model_config_pb2.ModelConfig | None = None, timeout_s: float = 300.0) -> None:
        """(Re)load the model, with ``config`` instead of its config.pbtxt when given; a failure raises with the
        server's reason."""
        body: dict[str, Any] = {}
        if config is not None:
            body["parameters"] = {"config": json_format.MessageToJson(config)}
        self._request("POST", f"/v2/repository/models/{self.name}/load", body, timeout=timeout_s)

    def config(self) -> model_config_pb2.ModelConfig:
        """The config the server runs (auto-completed)."""
        text = json.dumps(self._request("GET", f"/v2/models/{self.name}/config"))
        return json_format.Parse(text, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", f"/v2/models/{self.name}")

    def _request(self, method: str, path: str, body: object = None, timeout: float = 30.0) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except ValueError:
                pass
            raise InvalidArgumentError(str(detail)) from None
        return json.loads(text) if text else {}

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        self._proc = None

    def __enter__(self) -> TuneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
