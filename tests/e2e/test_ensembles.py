"""Ensembles on a real server: dataflow order, concurrency, batch-dimension adapting, Python and ONNX steps,
what step requests inherit, failing steps, cancellation, decoupled steps, batching across ensemble requests,
statistics and metrics, and the lifecycle (steps loaded first, readiness, reloads with zero failed requests)."""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ensemble_repos import CHAIN, build_ensemble_repository, write_ensemble
from servers import KilnProcess, wait_until


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ensemble_repository(tmp_path_factory.mktemp("ensembles"))


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    proc = KilnProcess([repo], "--strict-readiness", "false", log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _inputs(module: Any, **arrays: np.ndarray) -> list[Any]:
    out = []
    for name, array in arrays.items():
        datatype = {"float32": "FP32", "int32": "INT32"}[str(array.dtype)]
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    return client.get_inference_statistics(model)["model_stats"][0]


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_steps_run_in_dataflow_order_whatever_their_listed_order(server: KilnProcess, module: Any) -> None:
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, np.float32)
    result = client.infer("chain", _inputs(module, A=a, B=b))
    np.testing.assert_array_equal(result.as_numpy("TWICE_A"), 2 * a)
    np.testing.assert_array_equal(result.as_numpy("TWICE_B"), 2 * b)


def test_only_the_requested_outputs_come_back(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.ones((1, 4), np.float32)
    result = client.infer(
        "chain", _inputs(httpclient, A=a, B=a), outputs=[httpclient.InferRequestedOutput("TWICE_B")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["TWICE_B"]
    np.testing.assert_array_equal(result.as_numpy("TWICE_B"), 2 * a)


def test_a_non_batching_step_inside_a_batching_ensemble(server: KilnProcess) -> None:
    """As in Triton: a batch of one loses its batch dimension on the way into the non-batching step; a larger
    batch reaches it unchanged and that step refuses it, naming the ensemble."""
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.arange(4, dtype=np.float32).reshape(1, 4)
    result = client.infer("mixed", _inputs(httpclient, A=a, B=a))
    np.testing.assert_array_equal(result.as_numpy("TWICE_A"), 2 * a)
    assert result.as_numpy("TWICE_A").shape == (1, 4)
    two = np.ones((2, 4), np.float32)
    with pytest.raises(
        InferenceServerException, match="in ensemble 'mixed', unexpected shape for input 'INPUT0'"
    ):
        client.infer("mixed", _inputs(httpclient, A=two, B=two))


def test_independent_steps_run_concurrently(server: KilnProcess) -> None:
    """Two 0.3 s steps that read only the ensemble input overlap in time (each step reports when it ran)."""
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, 4), np.float32)
    result = client.infer("parallel", _inputs(httpclient, X=x))
    (start1, end1), (start2, end2) = result.as_numpy("STAMP1")[0], result.as_numpy("STAMP2")[0]
    assert start1 < end2 and start2 < end1, "the two independent steps ran one after the other"
    np.testing.assert_array_equal(result.as_numpy("SUM"), 2 * x)


def test_python_and_onnx_steps_and_what_a_step_request_inherits(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    y = np.full((1, 4), 3, np.float32)
    result = client.infer(
        "python_then_onnx", _inputs(httpclient, X=x, Y=y), request_id="req-7", sequence_id=42,
        parameters={"tenant": "blue"},
    )  # fmt: skip
    np.testing.assert_array_equal(result.as_numpy("SUM"), 2 * x + y)
    np.testing.assert_array_equal(result.as_numpy("DIFF"), 2 * x - y)
    info = json.loads(result.as_numpy("INFO")[0, 0])
    assert info == {"id": "req-7", "correlation_id": 42, "parameters": {"tenant": "blue"}}
    assert result.get_response()["id"] == "req-7"


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_a_failing_step_fails_the_request_and_no_later_step_starts(server: KilnProcess, module: Any) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url)
    before = _stats(http, "add_sub")["inference_stats"]["success"]["count"]
    x = -np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException, match="in ensemble 'python_then_onnx', negative input"):
        client.infer("python_then_onnx", _inputs(module, X=x, Y=x))
    assert _stats(http, "add_sub")["inference_stats"]["success"]["count"] == before
    ok = client.infer("python_then_onnx", _inputs(module, X=-x, Y=-x))  # the server keeps serving
    np.testing.assert_array_equal(ok.as_numpy("SUM"), 3 * -x)


def test_bad_requests_get_the_ensemble_s_own_checks(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException, match="missing"):
        client.infer("chain", _inputs(httpclient, A=x))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
        big = np.ones((9, 4), np.float32)
        client.infer("chain", _inputs(httpclient, A=big, B=big))


def test_cancelling_the_request_stops_the_steps_still_to_come(server: KilnProcess) -> None:
    """The client gives up while the slow first step runs: the second step never runs."""
    http = httpclient.InferenceServerClient(server.http_url)
    before = _stats(http, "add_sub_nobatch")["inference_stats"]
    impatient = httpclient.InferenceServerClient(server.http_url, network_timeout=0.1, connection_timeout=0.1)
    x = np.ones((1, 4), np.float32)
    with pytest.raises(Exception):  # noqa: B017 - the client's own timeout, whatever its type
        impatient.infer("slow_then_onnx", _inputs(httpclient, X=x))

    def slow_step_done() -> bool:
        return _stats(http, "slow_then_onnx")["inference_stats"]["fail"]["count"] >= 1

    wait_until(slow_step_done, 5, "the cancelled ensemble request failing")
    after = _stats(http, "add_sub_nobatch")["inference_stats"]
    assert after["success"]["count"] == before["success"]["count"]
    assert after["fail"]["count"] == before["fail"]["count"]


def test_a_decoupled_step_makes_the_ensemble_stream_its_responses(server: KilnProcess) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    assert http.get_model_config("fan_out")["model_transaction_policy"]["decoupled"] is True
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    y = np.full((1, 4), 10, np.float32)
    client.async_stream_infer(
        "fan_out", _inputs(grpcclient, N=np.array([[3]], np.int32), Y=y), enable_empty_final_response=True
    )
    sums = []
    while True:
        result, error = answers.get(timeout=10)
        assert error is None, error
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
        sums.append(float(result.as_numpy("SUM")[0, 0]))
    client.stop_stream()
    assert sorted(sums) == [10.0, 11.0, 12.0]
    with pytest.raises(InferenceServerException, match="decoupled"):
        http.infer("fan_out", _inputs(httpclient, N=np.array([[1]], np.int32), Y=y))


def test_step_models_batch_across_concurrent_ensemble_requests(server: KilnProcess) -> None:
    """The first step's model waits up to 300 ms for company: four concurrent ensemble requests reach it as
    fewer executions than requests."""
    http = httpclient.InferenceServerClient(server.http_url)
    x = np.ones((1, 4), np.float32)

    def call(_: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(server.http_url)
        return client.infer("batching", _inputs(httpclient, A=x, B=x)).as_numpy("TWICE_A")

    with ThreadPoolExecutor(4) as pool:
        for out in pool.map(call, range(4)):
            np.testing.assert_array_equal(out, 2 * x)
    stats = _stats(http, "add_sub_batched")
    assert stats["inference_count"] == 4
    assert stats["execution_count"] < 4


def test_statistics_and_metrics_for_the_ensemble_and_each_step(server: KilnProcess) -> None:
    """As Triton reports ensembles: one success and one execution per request, the compute times summed over
    the steps; and each step model's own statistics count the step requests."""
    http = httpclient.InferenceServerClient(server.http_url)
    ensemble_before = _stats(http, "chain")
    step_before = _stats(http, "add_sub")["inference_stats"]["success"]["count"]
    x = np.ones((2, 4), np.float32)
    for _ in range(3):
        http.infer("chain", _inputs(httpclient, A=x, B=x))
    ensemble = _stats(http, "chain")
    assert (
        ensemble["inference_stats"]["success"]["count"]
        == ensemble_before["inference_stats"]["success"]["count"] + 3
    )
    assert ensemble["inference_count"] == ensemble_before["inference_count"] + 6  # batch of 2
    assert ensemble["execution_count"] == ensemble_before["execution_count"] + 3
    assert (
        ensemble["inference_stats"]["compute_infer"]["ns"]
        > ensemble_before["inference_stats"]["compute_infer"]["ns"]
    )
    assert _stats(http, "add_sub")["inference_stats"]["success"]["count"] == step_before + 6  # two steps each
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="chain",version="1"}' in text
    assert 'nv_inference_request_success{model="add_sub",version="1"}' in text


def test_the_index_shows_the_steps_and_a_bad_ensemble_is_reported(server: KilnProcess) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    rows = {r["name"]: r for r in http.get_model_repository_index()}
    assert rows["chain"]["composing_models"] == ["add_sub"]
    assert rows["parallel"]["composing_models"] == ["stamp", "add_sub"]
    assert "composing_models" not in rows["add_sub"]
    assert rows["bad_unmapped"]["state"] == "UNAVAILABLE"
    assert "reads tensor 'nowhere'" in rows["bad_unmapped"]["reason"]
    config = http.get_model_config("chain")
    assert config["platform"] == "ensemble" and config["backend"] == "" and config["instance_group"] == []
    meta = http.get_model_metadata("chain")
    assert meta["platform"] == "ensemble"
    assert [i["name"] for i in meta["inputs"]] == ["A", "B"]


def _explicit_server(repo: Path, log_dir: Path, *models: str) -> KilnProcess:
    args = ["--model-control-mode", "explicit", "--strict-readiness", "false"]
    for model in models:
        args += ["--load-model", model]
    return KilnProcess([repo], *args, log_dir=log_dir).start()


def test_explicit_load_loads_the_steps_and_readiness_follows_them(tmp_path: Path) -> None:
    repo = build_ensemble_repository(tmp_path / "repo")
    proc = _explicit_server(repo, tmp_path, "chain")
    try:
        http = httpclient.InferenceServerClient(proc.http_url)
        loaded = {r["name"] for r in http.get_model_repository_index() if r["state"] == "READY"}
        assert loaded == {"chain", "add_sub"}
        http.load_model("python_then_onnx")  # loads checked_double; add_sub is already there
        assert http.is_model_ready("checked_double")
        http.unload_model("add_sub")
        assert not http.is_model_ready("chain")
        row = next(r for r in http.get_model_repository_index() if r["name"] == "chain")
        assert row["state"] == "UNAVAILABLE" and "add_sub" in row["reason"]
        x = np.ones((1, 4), np.float32)
        with pytest.raises(InferenceServerException, match="in ensemble 'chain'"):
            http.infer("chain", _inputs(httpclient, A=x, B=x))
        http.load_model("add_sub")
        assert http.is_model_ready("chain")
        http.unload_model("python_then_onnx", unload_dependents=True)
        assert not http.is_model_ready("checked_double")
        assert http.is_model_ready("add_sub")  # chain still needs it
    finally:
        assert proc.stop() == 0, proc.log()


def test_a_cycle_of_ensembles_is_refused(tmp_path: Path) -> None:
    repo = build_ensemble_repository(tmp_path / "repo")
    write_ensemble(repo, "loop_a", CHAIN.format(name="loop_a", mbs=8, first="add_sub", second="loop_b"))
    write_ensemble(repo, "loop_b", CHAIN.format(name="loop_b", mbs=8, first="add_sub", second="loop_a"))
    proc = _explicit_server(repo, tmp_path)
    try:
        http = httpclient.InferenceServerClient(proc.http_url)
        with pytest.raises(InferenceServerException, match="circular dependency between ensembles"):
            http.load_model("loop_a")
        assert http.is_server_live()
    finally:
        assert proc.stop() == 0, proc.log()


def test_reloading_a_step_keeps_the_ensemble_serving_with_zero_failures(tmp_path: Path) -> None:
    repo = build_ensemble_repository(tmp_path / "repo")
    proc = _explicit_server(repo, tmp_path, "chain")
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def hammer() -> None:
        nonlocal count
        client = httpclient.InferenceServerClient(proc.http_url)
        x = np.ones((1, 4), np.float32)
        while not done.is_set():
            try:
                out = client.infer("chain", _inputs(httpclient, A=x, B=x)).as_numpy("TWICE_A")
                if not np.array_equal(out, 2 * x):
                    failures.append(f"wrong answer {out}")
                count += 1
            except Exception as e:
                failures.append(str(e))

    try:
        http = httpclient.InferenceServerClient(proc.http_url)
        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            wait_until(lambda: count > 5, 10, "requests flowing")
            for _ in range(3):
                (repo / "add_sub" / "config.pbtxt").write_text(
                    (repo / "add_sub" / "config.pbtxt").read_text() + "\n"
                )  # a changed config: a real reload
                http.load_model("add_sub")
            seen = count
            wait_until(lambda: count > seen + 5, 10, "requests after the reloads")
        finally:
            done.set()
            thread.join(10)
        assert failures == []
        assert count > 10
    finally:
        assert proc.stop() == 0, proc.log()
