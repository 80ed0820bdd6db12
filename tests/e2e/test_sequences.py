"""Stateful serving on a real server: the sequence batcher's direct and oldest strategies, control tensors,
implicit state, idle timeouts, Triton's errors, over HTTP, unary gRPC and gRPC streaming."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.examples import vad
from sequence_repos import build_sequence_repository
from servers import KilnProcess

VALUES = [11, 7, 5, 3, 2, 0, 1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = build_sequence_repository(tmp_path_factory.mktemp("sequences"))
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs")).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _int_input(module: Any, value: int) -> list[Any]:
    tensor = module.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], np.int32))
    return [tensor]


def _fp_input(module: Any, value: float) -> list[Any]:
    tensor = module.InferInput("INPUT", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], np.float32))
    return [tensor]


def _run_sequence(client: Any, module: Any, model: str, corr: int | str, values: list[int]) -> list[int]:
    out = []
    for i, v in enumerate(values):
        result = client.infer(
            model, _int_input(module, v), sequence_id=corr, sequence_start=i == 0,
            sequence_end=i == len(values) - 1,
        )  # fmt: skip
        out.append(int(result.as_numpy("OUTPUT")[0, 0]))
    return out


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_simple_sequence_with_integer_and_string_ids(server: KilnProcess, module: Any) -> None:
    """Triton's quick-start semantics: OUTPUT = READY * (INPUT + START)."""
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url)
    assert _run_sequence(client, module, "simple_sequence", 1000, [0, *VALUES]) == [1, *VALUES]
    negated = [-v for v in VALUES]
    assert _run_sequence(client, module, "simple_sequence", "abc-123", [100, *negated]) == [101, *negated]


def test_interleaved_sequences_on_one_grpc_stream(server: KilnProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    plans = {1000: [0, *VALUES], 1001: [100, *[-v for v in VALUES]]}
    for i in range(len(VALUES) + 1):
        for corr, values in plans.items():
            client.async_stream_infer(
                "simple_sequence", _int_input(grpcclient, values[i]), request_id=f"{corr}_{i}",
                sequence_id=corr, sequence_start=i == 0, sequence_end=i == len(values) - 1,
            )  # fmt: skip
    got: dict[int, dict[int, int]] = {1000: {}, 1001: {}}
    for _ in range(2 * (len(VALUES) + 1)):
        result, error = answers.get(timeout=10)
        assert error is None, error
        corr, index = result.get_response().id.split("_")
        got[int(corr)][int(index)] = int(result.as_numpy("OUTPUT")[0, 0])
    client.stop_stream()
    assert [got[1000][i] for i in range(8)] == [1, *VALUES]
    assert [got[1001][i] for i in range(8)] == [101, *[-v for v in VALUES]]


def test_dyna_sequence_oldest_strategy_gets_end_and_corrid(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    out = _run_sequence(client, httpclient, "simple_dyna_sequence", 1002, [0, *VALUES])
    assert out == [1, *VALUES[:-1], VALUES[-1] + 1002]  # the END request adds the correlation id


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_triton_s_sequence_errors(server: KilnProcess, module: Any) -> None:
    url = server.http_url if module is httpclient else server.grpc_url
    client = module.InferenceServerClient(url)
    with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID"):
        client.infer("simple_sequence", _int_input(module, 1))
    with pytest.raises(InferenceServerException, match="must specify the START flag on the first request"):
        client.infer("simple_sequence", _int_input(module, 1), sequence_id=4242)
    two = module.InferInput("INPUT", [2, 1], "INT32")
    two.set_data_from_numpy(np.array([[1], [2]], np.int32))
    with pytest.raises(InferenceServerException, match="must specify batch-size 1 due to requirements"):
        client.infer("simple_sequence", [two], sequence_id=4243, sequence_start=True)
    with pytest.raises(InferenceServerException, match="unexpected inference input 'START'"):
        start = module.InferInput("START", [1, 1], "INT32")
        start.set_data_from_numpy(np.array([[1]], np.int32))
        client.infer("simple_sequence", [start], sequence_id=4244, sequence_start=True)
    assert client.is_server_live()


def test_implicit_state_accumulates_and_starts_over(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)

    def run(model: str, corr: int, values: list[float]) -> list[float]:
        return [
            float(
                client.infer(
                    model, _fp_input(httpclient, v), sequence_id=corr, sequence_start=i == 0,
                    sequence_end=i == len(values) - 1,
                ).as_numpy("OUTPUT")[0, 0]
            )
            for i, v in enumerate(values)
        ]  # fmt: skip

    assert run("accumulator", 7, [1, 2, 3, 4]) == [1, 3, 6, 10]
    assert run("accumulator", 7, [5, 5]) == [5, 10]  # a new sequence with the same id starts from zero
    assert run("accumulator_from_file", 8, [1, 2]) == [101, 103]  # initial_state data_file
    assert run("accumulator_oldest", 9, [1, 1, 1]) == [1, 2, 3]


def test_an_idle_sequence_is_released(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    first = client.infer(
        "accumulator_short_idle", _fp_input(httpclient, 1), sequence_id=77, sequence_start=True
    )
    assert float(first.as_numpy("OUTPUT")[0, 0]) == 1
    time.sleep(0.8)  # the model's max_sequence_idle_microseconds is 0.3 s
    with pytest.raises(
        InferenceServerException, match="timeout of the corresponding sequence has been expired"
    ):
        client.infer("accumulator_short_idle", _fp_input(httpclient, 1), sequence_id=77)


def test_oldest_strategy_batches_concurrent_sequences(server: KilnProcess) -> None:
    """Four sequences, each request waiting up to 300 ms for company: executions hold several sequences, and
    each sequence's running sum is its own."""
    http = httpclient.InferenceServerClient(server.http_url)
    before = http.get_inference_statistics("accumulator_oldest")["model_stats"][0]
    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []

    def run(corr: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            results[corr] = [
                float(client.infer(
                    "accumulator_oldest", _fp_input(httpclient, corr), sequence_id=corr, sequence_start=i == 0,
                    sequence_end=i == 2,
                ).as_numpy("OUTPUT")[0, 0])
                for i in range(3)
            ]  # fmt: skip
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(corr,)) for corr in (101, 102, 103, 104)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    assert results == {c: [c, 2.0 * c, 3.0 * c] for c in (101, 102, 103, 104)}
    stats = http.get_inference_statistics("accumulator_oldest")["model_stats"][0]
    assert stats["inference_count"] - before["inference_count"] == 12
    assert stats["execution_count"] - before["execution_count"] < 12
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"])


def test_a_python_model_sees_the_correlation_id_and_flags(server: KilnProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    infos = []
    for i in range(3):
        result = client.infer(
            "sequence_echo",
            _int_input(grpcclient, i),
            sequence_id=555,
            sequence_start=i == 0,
            sequence_end=i == 2,
        )
        infos.append(result.as_numpy("INFO")[0, 0].decode())
    assert infos == ["555 1", "555 0", "555 2"]  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1, END = 2


def test_server_metadata_lists_the_sequence_extension(server: KilnProcess) -> None:
    assert "sequence" in httpclient.InferenceServerClient(server.http_url).get_server_metadata()["extensions"]


def test_a_sequence_model_whose_controls_are_missing_fails_its_load(tmp_path: Path) -> None:
    from kiln.examples import models, write_model

    bad = (
        'name: "bad"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\nsequence_batching { control_input [ '
        '{ name: "GO" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ] }\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
    )
    write_model(tmp_path, "bad", models.sequence_controls(), bad)
    with KilnProcess([tmp_path], "--strict-readiness", "false", log_dir=tmp_path) as proc:
        rows = httpclient.InferenceServerClient(proc.http_url).get_model_repository_index()
    assert "sequence control 'GO' is not in the model file" in rows[0]["reason"]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.skipif(not vad.available(), reason="needs silero-vad (make setup installs it)")
@pytest.mark.parametrize(("protocol", "streams"), [("grpc", 4), ("http", 1)])
def test_silero_vad_streams_equal_the_model_run_in_process(
    server: KilnProcess, protocol: str, streams: int
) -> None:
    """Raw audio chunks under one sequence id per stream; the server threads the model's recurrent state and
    context; every probability equals the shipped model run in process with the state threaded by hand."""
    http = httpclient.InferenceServerClient(server.http_url)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "vad" / "client.py"), "-i", protocol, "-u", url, "-n", str(streams)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("stream ")]
    assert len(lines) == streams and all("same as in process" in line for line in lines), out.stdout
    if streams > 1:  # the oldest strategy batched the concurrent streams
        stats = http.get_inference_statistics("silero_vad")["model_stats"][0]
        assert any(b["batch_size"] > 1 for b in stats["batch_stats"]), stats["batch_stats"]
