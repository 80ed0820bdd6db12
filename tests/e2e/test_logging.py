"""Logging on a real server: Triton's flags, the logging extension over HTTP and gRPC (read and change at run
time, observed in the log file), and one access line per inference request at --log-verbose 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import KilnProcess, wait_until


def _infer(client: httpclient.InferenceServerClient) -> None:
    a = np.ones((1, 4), np.float32)
    inputs = [httpclient.InferInput(f"INPUT{i}", [1, 4], "FP32") for i in (0, 1)]
    for t in inputs:
        t.set_data_from_numpy(a)
    client.infer("add_sub", inputs)


def test_log_settings_change_at_run_time_and_show_in_the_log_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add_sub", models.add_sub(["batch", 4]), None)
    log_file = tmp_path / "kiln.log"
    args = ["--log-file", str(log_file), "--log-format", "json", "--log-verbose", "1"]
    with KilnProcess([repo], *args, log_dir=tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        settings = http.get_log_settings()
        assert settings == {
            "log_file": str(log_file), "log_info": True, "log_warning": True, "log_error": True,
            "log_verbose_level": 1, "log_format": "json",
        }  # fmt: skip
        _infer(http)
        wait_until(lambda: "HTTP infer model=add_sub" in log_file.read_text(), 5, "the access line")
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        access = next(r for r in lines if r["logger"] == "kiln.access")
        assert "status=200" in access["message"] and "client=127.0.0.1:" in access["message"]
        # change at run time over gRPC: no verbose, no info; the next request writes no access line
        grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        updated = grpc.update_log_settings({"log_verbose_level": 0, "log_info": False}, as_json=True)
        assert updated["settings"]["log_verbose_level"]["uint32_param"] == 0
        before = log_file.read_text().count("kiln.access")
        _infer(http)
        assert log_file.read_text().count("kiln.access") == before
        assert http.get_log_settings()["log_info"] is False
        with pytest.raises(InferenceServerException, match="log_file can only be set when the server starts"):
            http.update_log_settings({"log_file": "/tmp/elsewhere.log"})
        with pytest.raises(InferenceServerException, match="log_format' must be one of"):
            http.update_log_settings({"log_format": "xml"})
        with pytest.raises(InferenceServerException, match="unknown log setting"):
            http.update_log_settings({"colour": True})
        assert "logging" in http.get_server_metadata()["extensions"]
