"""In-process Python models measured fast run on the server's event loop (in a greenlet: a BLS call switches to
the loop instead of blocking it), and everything else stays on worker threads. Real server, real clients: the
models report the thread they ran on, so the tests see which way each request went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import KilnProcess

BLS = """
import json
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = pb_utils.MetricFamily("kiln_test_bls_calls", "BLS calls", pb_utils.MetricFamily.COUNTER)
        self.kept = []

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if json.loads(request.parameters()).get("helper"):
                box = []  # the call made by a thread of the model's own, which execute waits for
                helper = threading.Thread(target=lambda: box.append(self.double(x)))
                helper.start()
                helper.join()
                answer = box[0]
            else:
                answer = self.double(x)
            if answer.has_error():
                out.append(pb_utils.InferenceResponse(error=answer.error()))
                continue
            n = pb_utils.Tensor("N", np.array([3], np.int32))
            streamed = pb_utils.InferenceRequest(model_name="count_py", inputs=[n], requested_output_names=["OUT"])
            total = sum(int(r.output_tensors()[0].as_numpy()[0])
                        for r in streamed.exec(decoupled=True) if r.output_tensors())
            metric = self.calls.Metric(labels={"kind": "bls"})  # labelled with the model running now
            metric.increment(1)
            self.kept.append(metric)  # a metric lives as long as its object
            thread = np.array([threading.current_thread().name.encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(answer, "OUTPUT0"),
                pb_utils.Tensor("STREAMED", np.array([total], np.int32)),
                pb_utils.Tensor("THREAD", thread),
            ]))
        return out

    def double(self, x):
        inputs = [pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)]
        call = pb_utils.InferenceRequest(model_name="add_sub_onnx", inputs=inputs, requested_output_names=["OUTPUT0"])
        return call.exec()
"""

COUNT = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i + 1], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

SLOW = """
import json
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.seconds = float(json.loads(args["model_config"])["parameters"]["SLEEP_S"]["string_value"])

    def execute(self, requests):
        time.sleep(self.seconds)
        thread = np.array([threading.current_thread().name.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("THREAD", thread)]) for _ in requests]
"""

BLS_CONFIG = """backend: "python" max_batch_size: 0
input [{ name: "IN" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }, { name: "STREAMED" data_type: TYPE_INT32 dims: [1] },
        { name: "THREAD" data_type: TYPE_STRING dims: [1] }]
"""
SLOW_CONFIG = """backend: "python" max_batch_size: 0
input [{{ name: "IN" data_type: TYPE_FP32 dims: [4] }}]
output [{{ name: "THREAD" data_type: TYPE_STRING dims: [1] }}]
parameters {{ key: "SLEEP_S" value: {{ string_value: "{seconds}" }} }}
"""
CONFIGS = {
    "bls_a_py": (BLS, BLS_CONFIG),
    "bls_b_py": (BLS, BLS_CONFIG),
    "helper_py": (BLS, BLS_CONFIG),
    "count_py": (
        COUNT,
        """backend: "python" max_batch_size: 0
model_transaction_policy { decoupled: true }
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]
""",
    ),
    "slow_py": (SLOW, SLOW_CONFIG.format(seconds=0.003)),  # over the 1 ms threshold
    "waiting_py": (SLOW, SLOW_CONFIG.format(seconds=0.0003)),  # under it, but asleep most of its time
}
LOOP_THREAD = "MainThread"  # kiln serve runs its event loop on the main thread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("inline_repo")
    for name, (code, config) in CONFIGS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(code)
        (repo / name / "config.pbtxt").write_text(config)
    write_model(
        repo, "add_sub_onnx", models.add_sub([4]), 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    )
    proc = KilnProcess([repo], log_dir=tmp_path_factory.mktemp("logs"))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()


def _infer(client: Any, model: str, x: np.ndarray, **kwargs: Any) -> Any:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    tensor = module.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], **kwargs)


def _thread(result: Any) -> str:
    return result.as_numpy("THREAD")[0].decode()


@pytest.mark.parametrize("module", [httpclient, grpcclient])
def test_a_fast_bls_model_moves_onto_the_loop_and_answers_the_same(server: KilnProcess, module: Any) -> None:
    client = module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)
    model = "bls_a_py" if module is httpclient else "bls_b_py"  # each starts fresh here
    threads = []
    for i in range(30):
        x = np.full(4, i, np.float32)
        result = _infer(client, model, x)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)  # the BLS call into ONNX
        assert result.as_numpy("STREAMED")[0] == 6  # a decoupled BLS stream: 1 + 2 + 3
        threads.append(_thread(result))
    assert threads[0] != LOOP_THREAD  # measured on worker threads first
    assert threads[-1] == LOOP_THREAD, threads  # then, fast, on the loop


def test_concurrent_models_on_the_loop_keep_their_own_metric_labels(server: KilnProcess) -> None:
    """Two models' executions interleave on the loop's one thread (each waits for its BLS calls): the custom
    metric each creates after its calls carries its own model label."""
    counts = {"bls_a_py": 0, "bls_b_py": 0}

    def one(model: str) -> str:
        return _thread(
            _infer(httpclient.InferenceServerClient(server.http_url), model, np.ones(4, np.float32))
        )

    def scrape() -> dict[str, float]:
        with urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        values = {}
        for model in counts:
            label = f'kiln_test_bls_calls{{kind="bls",model="{model}",version="1"}} '
            values[model] = next((float(s[len(label) :]) for s in lines if s.startswith(label)), 0.0)
        return values

    before = scrape()
    for model in counts:  # past the measured runs, onto the loop
        for _ in range(12):
            one(model)
            counts[model] += 1
    with ThreadPoolExecutor(8) as pool:
        work = [m for m in counts for _ in range(40)]
        threads = list(pool.map(one, work))
    for model in work:
        counts[model] += 1
    assert threads.count(LOOP_THREAD) > len(threads) // 2
    after = scrape()
    assert {m: after[m] - before[m] for m in counts} == counts


def test_a_model_waiting_for_its_own_thread_s_bls_call_never_deadlocks(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    x = np.ones(4, np.float32)
    for _ in range(15):  # onto the loop
        last = _infer(client, "helper_py", x)
    assert _thread(last) == LOOP_THREAD
    # now its execute, on the loop, waits for a thread that needs the loop: the thread gives up after a second
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match="now runs on worker threads, retry"):
        _infer(client, "helper_py", x, parameters={"helper": True})
    assert time.monotonic() - start < 10
    for _ in range(15):  # and from then on it runs on worker threads, where the same call works
        result = _infer(client, "helper_py", x, parameters={"helper": True})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert _thread(result) != LOOP_THREAD
    assert _thread(_infer(client, "helper_py", x)) != LOOP_THREAD


def test_a_slow_model_stays_on_worker_threads(server: KilnProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    threads = {_thread(_infer(client, "slow_py", np.ones(4, np.float32))) for _ in range(20)}
    assert LOOP_THREAD not in threads


def test_a_model_that_mostly_waits_goes_back_to_worker_threads(server: KilnProcess) -> None:
    """0.3 ms of sleep is under the threshold, so it runs on the loop for a while (from its 9th execution); its
    CPU time there is a small part of the time it holds the loop, so after 8-12 executions there it goes back to
    worker threads, where the loop runs meanwhile, for 32 executions before it is tried on the loop again."""
    client = httpclient.InferenceServerClient(server.http_url)
    threads = [_thread(_infer(client, "waiting_py", np.ones(4, np.float32))) for _ in range(46)]
    assert LOOP_THREAD in threads[8:20], threads
    assert LOOP_THREAD not in threads[28:46], threads


def test_inline_execution_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "bls_py" / "1").mkdir(parents=True)
    (tmp_path / "bls_py" / "1" / "model.py").write_text(BLS)
    off = 'parameters { key: "inline_execution_threshold_us" value: { string_value: "0" } }\n'
    (tmp_path / "bls_py" / "config.pbtxt").write_text(BLS_CONFIG + off)
    (tmp_path / "count_py" / "1").mkdir(parents=True)
    (tmp_path / "count_py" / "1" / "model.py").write_text(COUNT)
    (tmp_path / "count_py" / "config.pbtxt").write_text(CONFIGS["count_py"][1])
    write_model(
        tmp_path, "add_sub_onnx", models.add_sub([4]), 'platform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    )
    with KilnProcess([tmp_path], log_dir=tmp_path) as proc:
        client = httpclient.InferenceServerClient(proc.http_url)
        threads = {_thread(_infer(client, "bls_py", np.ones(4, np.float32))) for _ in range(20)}
    assert LOOP_THREAD not in threads
