"""The messages Triton's clients and tests match on: every row of docs/decisions.md's table, triggered over HTTP
and gRPC against a real server, must appear in Kiln's message."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from repos import write_python_model
from sequence_repos import SIMPLE_SEQUENCE
from servers import KilnProcess, wait_until

DECISIONS = Path(__file__).resolve().parents[2] / "docs" / "decisions.md"
ADD_SUB = 'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{extra}\n'
DECOUPLED_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def table() -> dict[str, str]:
    """case -> Triton's text, from the "Messages clients match on" table."""
    section = DECISIONS.read_text().split("## Messages clients match on", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([a-z-]+) \| `(.+?)`", section, re.MULTILINE)
    return dict(rows)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    repo = tmp_path_factory.mktemp("messages")
    write_model(repo, "add_sub", models.add_sub(["batch", 16]), ADD_SUB.format(name="add_sub", extra=""))
    write_model(repo, "unloaded", models.add_sub(["batch", 16]), ADD_SUB.format(name="unloaded", extra=""))
    small = models.add_sub(["batch", 4])
    full = "dynamic_batching { max_queue_delay_microseconds: 2000000 default_queue_policy { max_queue_size: 1 } }"
    write_model(repo, "queue_of_one", small, ADD_SUB.format(name="queue_of_one", extra=full))
    timeout = ("dynamic_batching { max_queue_delay_microseconds: 2000000 default_queue_policy { timeout_action: "
               "REJECT default_timeout_microseconds: 100000 } }")  # fmt: skip
    write_model(repo, "queue_timeout", small, ADD_SUB.format(name="queue_timeout", extra=timeout))
    write_model(repo, "simple_sequence", models.sequence_controls(), SIMPLE_SEQUENCE)
    write_python_model(repo, "decoupled", DECOUPLED_PY)
    args = ("--model-control-mode", "explicit", "--load-model", "*")
    with KilnProcess([repo], *args, log_dir=tmp_path_factory.mktemp("logs")) as proc:
        httpclient.InferenceServerClient(proc.http_url).unload_model("unloaded")
        handle = shm.create_shared_memory_region("region", "/kiln-messages-region", 64)
        try:
            httpclient.InferenceServerClient(proc.http_url).register_system_shared_memory(
                "region", "/kiln-messages-region", 64
            )
            yield proc
        finally:
            shm.destroy_shared_memory_region(handle)


def _inputs(module: Any, a: np.ndarray, b: np.ndarray, dtype: str = "FP32") -> list[Any]:
    x, y = (
        module.InferInput("INPUT0", list(a.shape), dtype),
        module.InferInput("INPUT1", list(b.shape), "FP32"),
    )
    x.set_data_from_numpy(a)
    y.set_data_from_numpy(b)
    return [x, y]


ONE = np.ones((1, 16), np.float32)
SMALL = np.ones((1, 4), np.float32)


def _unknown_io(module: Any, client: Any, which: str) -> None:
    if which == "input":
        extra = module.InferInput("BOGUS", [1, 16], "FP32")
        extra.set_data_from_numpy(ONE)
        client.infer("add_sub", [*_inputs(module, ONE, ONE), extra])
    else:
        client.infer("add_sub", _inputs(module, ONE, ONE), outputs=[module.InferRequestedOutput("BOGUS")])


def _sequence(module: Any, client: Any, corr: int) -> None:
    x = module.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.ones((1, 1), np.int32))
    client.infer("simple_sequence", [x], sequence_id=corr)


def _decoupled(module: Any, client: Any) -> None:
    n = module.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.ones(1, np.int32))
    client.infer("decoupled", [n])


def _queue_full(module: Any, client: Any, server: KilnProcess) -> None:
    url = server.http_url if module is httpclient else server.grpc_url
    first = threading.Thread(target=lambda: module.InferenceServerClient(url).infer(
        "queue_of_one", _inputs(module, SMALL, SMALL)))  # fmt: skip
    first.start()  # waits in the queue for company (2 s), so the queue holds one request
    try:
        wait_until(lambda: _pending(server, "queue_of_one") == 1, what="the first request to be queued")
        client.infer("queue_of_one", _inputs(module, SMALL, SMALL))
    finally:
        first.join(10)


def _pending(server: KilnProcess, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.search(
        rf'^nv_inference_pending_request_count{{model="{model}",version="1"}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else -1.0


def _shm_infer(module: Any, client: Any) -> None:
    x, y = _inputs(module, ONE, ONE)
    x.set_shared_memory("nope", 64)
    client.infer("add_sub", [x, y])


def _raw_http(server: KilnProcess, body: bytes, headers: dict[str, str]) -> None:
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/add_sub/infer", body, headers)
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as e:
        raise InferenceServerException(json.loads(e.read())["error"]) from None


def _byte_size(server: KilnProcess) -> None:
    spec = [{"name": n, "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": s}}
            for n, s in (("INPUT0", 60), ("INPUT1", 64))]  # fmt: skip
    header = json.dumps({"inputs": spec}).encode()
    _raw_http(server, header + bytes(124), {"Inference-Header-Content-Length": str(len(header))})


Action = Callable[[Any, Any, KilnProcess], None]
ACTIONS: dict[str, Action] = {
    "unknown-model": lambda m, c, s: c.get_model_metadata("wrong_model_name"),
    "unknown-version": lambda m, c, s: c.get_model_metadata("add_sub", "9"),
    "no-ready-version": lambda m, c, s: c.infer("unloaded", _inputs(m, ONE, ONE)),
    "input-count": lambda m, c, s: c.infer("add_sub", _inputs(m, ONE, ONE)[:1]),
    "unknown-input": lambda m, c, s: _unknown_io(m, c, "input"),
    "unknown-output": lambda m, c, s: _unknown_io(m, c, "output"),
    "shape": lambda m, c, s: c.infer("add_sub", _inputs(m, ONE[:, :15], ONE[:, :15])),
    "datatype": lambda m, c, s: c.infer("add_sub", _inputs(m, ONE.astype(np.int32), ONE, "INT32")),
    "batch-size": lambda m, c, s: c.infer("add_sub", _inputs(m, *[np.ones((9, 16), np.float32)] * 2)),
    "byte-size": lambda m, c, s: _byte_size(s),
    "json": lambda m, c, s: _raw_http(s, b"{not json", {"Content-Type": "application/json"}),
    "decoupled": lambda m, c, s: _decoupled(m, c),
    "load-unknown": lambda m, c, s: c.load_model("wrong_model_name"),
    "load-bad-config": lambda m, c, s: c.load_model(
        "add_sub", config='"parameters": {"config": {{"a": "1"}}}'
    ),
    "load-long-path": lambda m, c, s: c.load_model("add_sub", config="{}", files={"file:" + "A" * 256: b"a"}),
    "sequence-start": lambda m, c, s: _sequence(m, c, 7),
    "sequence-corrid": lambda m, c, s: _sequence(m, c, 0),
    "shm-exists": lambda m, c, s: c.register_system_shared_memory("region", "/kiln-messages-region", 64),
    "shm-status-unknown": lambda m, c, s: c.get_system_shared_memory_status("nope"),
    "shm-infer-unknown": lambda m, c, s: _shm_infer(m, c),
    "queue-full": lambda m, c, s: _queue_full(m, c, s),
    "queue-timeout": lambda m, c, s: c.infer("queue_timeout", _inputs(m, SMALL, SMALL)),
}
HTTP_ONLY = {"byte-size", "json"}  # raw bodies; gRPC's byte-size text is checked in test_bad_requests


def test_every_row_has_an_action() -> None:
    assert set(table()) == set(ACTIONS)


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
@pytest.mark.parametrize("case", sorted(ACTIONS))
def test_message_carries_triton_text(server: KilnProcess, module: Any, case: str) -> None:
    if module is grpcclient and case in HTTP_ONLY:
        pytest.skip("an HTTP body case")
    text = table()[case]
    client = module.InferenceServerClient(server.http_url if module is httpclient else server.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        ACTIONS[case](module, client, server)
    assert text in err.value.message(), err.value.message()
    assert client.is_server_live()
