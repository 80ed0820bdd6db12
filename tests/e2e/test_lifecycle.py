"""Model lifecycle end to end: control modes, the repository API, hot reload under load, warm-up, security."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import KilnProcess, wait_until

ADD_SUB_CONFIG = 'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'


def sub_add(dims: list[int | str]) -> onnx.ModelProto:
    """Same signature as add_sub, swapped maths: OUTPUT0 = INPUT0 - INPUT1 (tells versions apart)."""
    m = models.add_sub(dims)
    m.graph.node[0].op_type, m.graph.node[1].op_type = "Sub", "Add"
    return m


def add_sub_inputs(mod: Any, value: float = 5.0) -> list[Any]:
    a, b = np.full((1, 4), value, np.float32), np.ones((1, 4), np.float32)
    tensors = [mod.InferInput("INPUT0", [1, 4], "FP32"), mod.InferInput("INPUT1", [1, 4], "FP32")]
    tensors[0].set_data_from_numpy(a)
    tensors[1].set_data_from_numpy(b)
    return tensors


def write_version(repo: Path, name: str, version: int, model: onnx.ModelProto) -> None:
    """Write a version the way a careful deployer does: build it aside, then rename it into place."""
    staging = repo / f".staging-{name}-{version}"
    staging.mkdir()
    onnx.save(model, staging / "model.onnx")
    staging.rename(repo / name / str(version))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("alpha", "beta"):
        write_model(root, name, models.add_sub(["batch", 4]), ADD_SUB_CONFIG.format(name=name))
    return root


def index(client: Any) -> dict[str, dict[str, Any]]:
    rows = client.get_model_repository_index()
    if not isinstance(rows, list):
        rows = [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in rows.models
        ]
    return {r["name"]: r for r in rows}


class Load:
    """A bounded steady load: ``threads`` clients sending add_sub requests until stopped; counts everything."""

    def __init__(self, server: KilnProcess, model: str, threads: int = 3) -> None:
        self.server, self.model, self.stop_flag = server, model, threading.Event()
        self.versions: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        mod = httpclient if i % 2 == 0 else grpcclient
        client = mod.InferenceServerClient(self.server.http_url if i % 2 == 0 else self.server.grpc_url)
        deadline = time.monotonic() + 60
        while not self.stop_flag.is_set() and time.monotonic() < deadline:
            try:
                r = client.infer(self.model, add_sub_inputs(mod))
                resp = r.get_response()
                self.versions.append(resp["model_version"] if isinstance(resp, dict) else resp.model_version)
            except Exception as e:
                self.errors.append(str(e))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)


# -- control modes and the repository API ---------------------------------------------------------------
def test_explicit_mode_loads_only_what_is_asked(repo: Path, tmp_path: Path) -> None:
    args = ["--model-control-mode", "explicit", "--load-model", "alpha"]
    with KilnProcess([repo], *args, log_dir=tmp_path) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        rows = index(http)
        assert rows["alpha"]["state"] == "READY" and rows["beta"]["state"] == "UNAVAILABLE"
        assert http.is_server_ready()
        http.load_model("beta")
        assert grpc.is_model_ready("beta")
        grpc.unload_model("alpha")
        assert not http.is_model_ready("alpha")
        assert index(grpc)["alpha"]["reason"] == "unloaded"
        with pytest.raises(InferenceServerException, match="'alpha' has no available versions: unloaded"):
            http.infer("alpha", add_sub_inputs(httpclient))
        assert http.get_model_repository_index() and index(http)["beta"]["state"] == "READY"
        grpc.load_model("alpha")
        assert http.infer("alpha", add_sub_inputs(httpclient)).as_numpy("OUTPUT0")[0, 0] == 6


def test_load_with_config_override_and_files(repo: Path, tmp_path: Path) -> None:
    with KilnProcess([repo], "--model-control-mode", "explicit", log_dir=tmp_path) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        http.load_model("alpha", config=json.dumps({"backend": "onnxruntime", "max_batch_size": 2}))
        assert http.get_model_config("alpha")["max_batch_size"] == 2
        assert not (repo / "alpha" / "config.pbtxt").read_text().count("max_batch_size: 2")  # nothing written
        files = {"file:3/model.onnx": sub_add(["batch", 4]).SerializeToString()}
        config = json.dumps({"backend": "onnxruntime", "max_batch_size": 4})
        grpc.load_model("uploaded", config=config, files=files)
        result = http.infer("uploaded", add_sub_inputs(httpclient))
        assert result.get_response()["model_version"] == "3"
        assert result.as_numpy("OUTPUT0")[0, 0] == 4  # 5 - 1: the uploaded model, not add_sub


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_repository_api_is_refused_in_mode_none(repo: Path, tmp_path: Path, transport: str) -> None:
    with KilnProcess([repo], log_dir=tmp_path) as server:
        client = (httpclient.InferenceServerClient(server.http_url) if transport == "http"
                  else grpcclient.InferenceServerClient(server.grpc_url))  # fmt: skip
        for call in (lambda: client.load_model("alpha"), lambda: client.unload_model("alpha")):
            with pytest.raises(InferenceServerException, match="model-control-mode none") as err:
                call()
            assert err.value.status() == ("400" if transport == "http" else "StatusCode.FAILED_PRECONDITION")
        assert client.is_model_ready("alpha")


def test_paths_and_names_cannot_escape(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_model(outside, "evil", models.add_sub(["batch", 4]), ADD_SUB_CONFIG.format(name="evil"))
    os.symlink(outside / "evil", repo / "evil")
    args = ["--model-control-mode", "explicit", "--model-upload-max-size", "100000"]
    with KilnProcess([repo], *args, log_dir=tmp_path) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        config = json.dumps({"backend": "onnxruntime", "max_batch_size": 4})
        model = models.add_sub(["batch", 4]).SerializeToString()
        for name, files in [
            ("..", None), ("a/b", None), (".hidden", None),
            ("up", {"file:../escape/1/model.onnx": model}), ("abs", {"file:/tmp/x/1/model.onnx": model}),
            ("dots", {"file:1/../../model.onnx": model}), ("win", {"file:1\\..\\model.onnx": model}),
        ]:  # fmt: skip
            with pytest.raises(InferenceServerException) as err:
                http.load_model(name, config=config, files=files)
            assert err.value.status() in ("400", "404"), (name, str(err.value))
        with pytest.raises(InferenceServerException, match="outside the model repository"):
            http.load_model("evil")
        with pytest.raises(InferenceServerException, match="upload limit"):
            http.load_model("big", config=config, files={"file:1/model.onnx": b"\0" * 200_000})
        assert not (tmp_path / "escape").exists() and not Path("/tmp/x/1/model.onnx").exists()


def test_restricted_repository_api(repo: Path, tmp_path: Path) -> None:
    args = ["--model-control-mode", "explicit", "--load-model", "*",
            "--http-restricted-api", "model-repository:admin-key=s3cret",
            "--grpc-restricted-protocol", "model-repository:admin-key=s3cret"]  # fmt: skip
    with KilnProcess([repo], *args, log_dir=tmp_path) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="restricted") as err:
            http.unload_model("alpha")
        assert err.value.status() == "403"
        with pytest.raises(InferenceServerException, match="restricted") as err:
            grpc.get_model_repository_index(headers={"admin-key": "wrong"})
        assert err.value.status() == "StatusCode.PERMISSION_DENIED"
        http.unload_model("alpha", headers={"admin-key": "s3cret"})
        grpc.load_model("alpha", headers={"admin-key": "s3cret"})
        assert (
            http.infer("alpha", add_sub_inputs(httpclient)).as_numpy("OUTPUT0")[0, 0] == 6
        )  # not restricted


# -- warm-up --------------------------------------------------------------------------------------------
def test_warmup_runs_before_ready_and_a_failing_warmup_fails_the_load(repo: Path, tmp_path: Path) -> None:
    warm = ADD_SUB_CONFIG.format(name="warm") + (
        'model_warmup [ { name: "zeros" batch_size: 2 count: 3 inputs { key: "INPUT0" value: '
        '{ data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } inputs { key: "INPUT1" value: '
        '{ data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "ones.bin" } } } ]\n'
    )
    write_model(repo, "warm", models.add_sub(["batch", 4]), warm)
    (repo / "warm" / "warmup").mkdir()
    (repo / "warm" / "warmup" / "ones.bin").write_bytes(np.ones(8, np.float32).tobytes())
    cold = ADD_SUB_CONFIG.format(name="cold") + (
        'model_warmup [ { name: "wrong_shape" batch_size: 1 inputs { key: "INPUT0" value: '
        '{ data_type: TYPE_FP32 dims: [ 5 ] random_data: true } } inputs { key: "INPUT1" value: '
        "{ data_type: TYPE_FP32 dims: [ 5 ] random_data: true } } } ]\n"
    )
    write_model(repo, "cold", models.add_sub(["batch", 4]), cold)
    with KilnProcess([repo], "--strict-readiness", "false", log_dir=tmp_path) as server:
        rows = index(httpclient.InferenceServerClient(server.http_url))
    assert rows["warm"]["state"] == "READY"
    assert rows["cold"]["state"] == "UNAVAILABLE" and "warm-up 'wrong_shape' failed" in rows["cold"]["reason"]


# -- hot reload with zero failed requests ---------------------------------------------------------------
def test_poll_mode_new_version_under_load_zero_failures(repo: Path, tmp_path: Path) -> None:
    args = ["--model-control-mode", "poll", "--repository-poll-secs", "0.3"]
    with KilnProcess([repo], *args, log_dir=tmp_path) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        with Load(server, "alpha") as load:
            wait_until(lambda: len(load.versions) > 50, timeout=20)
            write_version(repo, "alpha", 2, sub_add(["batch", 4]))
            wait_until(
                lambda: load.versions[-1:] == ["2"] and Counter(load.versions[-30:])["2"] == 30, timeout=20
            )
            # a broken newer version: the old one keeps serving and the reason is reported
            (repo / "alpha" / "3").mkdir()
            (repo / "alpha" / "3" / "model.onnx").write_bytes(b"not a model")
            wait_until(lambda: "reload failed" in index(http)["alpha"]["reason"], timeout=20)
            seen = len(load.versions)
            wait_until(lambda: len(load.versions) > seen + 30, timeout=20)
        # new and removed models are picked up too
        write_model(
            tmp_path / "staging", "gamma", models.add_sub(["batch", 4]), ADD_SUB_CONFIG.format(name="gamma")
        )
        (tmp_path / "staging" / "gamma").rename(repo / "gamma")
        shutil.rmtree(repo / "beta")
        wait_until(lambda: index(http).get("gamma", {}).get("state") == "READY", timeout=20)
        wait_until(lambda: "beta" not in index(http) or index(http)["beta"]["state"] != "READY", timeout=20)
    assert load.errors == [], load.errors[:5]
    assert set(load.versions) == {"1", "2"} and load.versions[-1] == "2"
    assert "INVALID_PROTOBUF" in server.log()


def test_api_reload_under_load_zero_failures(repo: Path, tmp_path: Path) -> None:
    args = ["--model-control-mode", "explicit", "--load-model", "*"]
    with KilnProcess([repo], *args, log_dir=tmp_path) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        with Load(server, "alpha", threads=4) as load:
            wait_until(lambda: len(load.versions) > 50, timeout=20)
            for batching in ("dynamic_batching { max_queue_delay_microseconds: 1000 }", ""):
                config = ADD_SUB_CONFIG.format(name="alpha") + batching
                (repo / "alpha" / "config.pbtxt").write_text(config)
                http.load_model("alpha")
                seen = len(load.versions)
                wait_until(lambda seen=seen: len(load.versions) > seen + 50, timeout=20)
            (repo / "alpha" / "config.pbtxt").write_text("max_batch_size: [")  # broken config
            with pytest.raises(InferenceServerException, match="failed to load"):
                http.load_model("alpha")
            seen = len(load.versions)
            wait_until(lambda: len(load.versions) > seen + 50, timeout=20)
    assert load.errors == [], load.errors[:5]


def test_load_and_unload_parameters_are_checked_once_for_both_transports(repo: Path, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    with KilnProcess(
        [repo], "--model-control-mode", "explicit", "--load-model", "*", log_dir=tmp_path
    ) as server:
        for action, body in (("unload", {"parameters": {"unload_dependents": "yes"}}),
                             ("load", {"parameters": {"config": {"max_batch_size": 2}}})):  # fmt: skip
            req = urllib.request.Request(
                f"http://{server.http_url}/v2/repository/models/alpha/{action}",
                data=json.dumps(body).encode(),
                method="POST",
            )
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=10)
            assert err.value.code == 400
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        request = service_pb2.RepositoryModelLoadRequest(model_name="alpha")
        request.parameters["config"].bool_param = True
        with grpc.insecure_channel(server.grpc_url) as channel:
            with pytest.raises(grpc.RpcError) as rpc_err:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(request, timeout=10)
        assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'config' must be the model config as a JSON string" in rpc_err.value.details()
        assert rpc_err.value.details().startswith(
            "failed to load 'alpha'"
        )  # the prefix Triton's clients match
        with pytest.raises(InferenceServerException, match="failed to load 'alpha': config override"):
            httpclient.InferenceServerClient(server.http_url).load_model("alpha", config="{not json")
        assert grpcclient.InferenceServerClient(server.grpc_url).is_model_ready("alpha")
