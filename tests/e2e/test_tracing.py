"""Tracing on a real server: Triton's trace files (timestamps, rate, count, log frequency), the trace extension
over HTTP and gRPC at run time (global and per model, clearing), parent and child traces of ensemble steps and
BLS calls, and OpenTelemetry spans sent to a collector the test serves (the caller's traceparent as parent)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from ensemble_repos import CHAIN, write_add_sub, write_ensemble, write_python
from servers import KilnProcess, wait_until

pytestmark = pytest.mark.timeout(180)

STAMPS = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END", "REQUEST_END"]  # fmt: skip

# BLS: OUT = add_sub(IN, IN).OUTPUT0, the call traced as the request's child (Triton's trace=request.trace())
BLS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            call = pb_utils.InferenceRequest(
                model_name="add_sub", requested_output_names=["OUTPUT0"],
                inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)], trace=request.trace())
            out = pb_utils.get_output_tensor_by_name(call.exec(), "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]))
        return responses
"""
# the same call without trace=: Triton traces it as a request of its own, not as the caller's child
BLS_UNTRACED = BLS.replace(", trace=request.trace())", ")")
assert BLS_UNTRACED != BLS
BLS_CONFIG = """max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("trace-repo")
    write_add_sub(repo, "add_sub")
    write_ensemble(repo, "chain", CHAIN.format(name="chain", mbs=8, first="add_sub", second="add_sub"))
    write_python(repo, "bls", BLS, BLS_CONFIG)
    write_python(repo, "bls_untraced", BLS_UNTRACED, BLS_CONFIG)
    return repo


def _inputs(module: Any, names: tuple[str, ...]) -> list[Any]:
    inputs = [module.InferInput(n, [1, 4], "FP32") for n in names]
    for t in inputs:
        t.set_data_from_numpy(np.ones((1, 4), np.float32))
    return inputs


def _add_sub(client: Any, n: int = 1, **kw: Any) -> None:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    for _ in range(n):
        client.infer("add_sub", _inputs(module, ("INPUT0", "INPUT1")), **kw)


def _traces(path: Path) -> dict[int, dict[str, Any]]:
    """Triton's trace file -> {id: {model_name, ..., "stamps": {name: ns}, "order": [names]}}."""
    traces: dict[int, dict[str, Any]] = {}
    for record in json.loads(path.read_text()):
        trace = traces.setdefault(record["id"], {"stamps": {}, "order": []})
        for stamp in record.pop("timestamps", []):
            trace["stamps"][stamp["name"]] = stamp["ns"]
            trace["order"].append(stamp["name"])
        trace.update({k: v for k, v in record.items() if k != "id"})
    return traces


def _ordered(trace: dict[str, Any], names: list[str]) -> None:
    assert trace["order"] == names
    values = [trace["stamps"][n] for n in names]
    assert values == sorted(values) and values[0] > 0


def test_trace_files_rate_count_and_settings_changed_at_run_time(repo: Path, tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    args = ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
            "--trace-config", f"triton,file={file}"]  # fmt: skip
    with KilnProcess([repo], *args, log_dir=tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        assert http.get_trace_settings() == {
            "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
            "trace_file": str(file), "trace_mode": "triton",
        }  # fmt: skip
        assert "trace" in http.get_server_metadata()["extensions"]
        _add_sub(http, 2, request_id="r")
        _add_sub(grpc)
        # a setting change writes what the old setting collected (log_frequency 0: to the file itself)
        assert http.update_trace_settings(settings={"log_frequency": "2"})["log_frequency"] == "2"
        traces = _traces(file)
        assert len(traces) == 3
        for trace in traces.values():
            assert (trace["model_name"], trace["model_version"]) == ("add_sub", 1)
            _ordered(trace, STAMPS)
        assert sum(t.get("request_id") == "r" for t in traces.values()) == 2
        # gRPC: 1 in 2 requests; log_frequency 2 writes every 2 traces to trace.json.0, .1, ...
        updated = grpc.update_trace_settings(settings={"trace_rate": "2"}, as_json=True)
        assert updated["settings"]["trace_rate"]["value"] == ["2"]
        _add_sub(http, 4)
        wait_until(lambda: Path(f"{file}.0").exists(), 5, "the first indexed trace file")
        assert len(_traces(Path(f"{file}.0"))) == 2
        assert not Path(f"{file}.1").exists()
        # count: one more trace, then none; the used-up count writes at once
        http.update_trace_settings(settings={"trace_rate": "1", "trace_count": "1"})
        _add_sub(http, 3)
        assert http.get_trace_settings()["trace_count"] == "0"
        assert len(_traces(Path(f"{file}.1"))) == 1
        assert len(_traces(file)) == 3  # untouched
        _check_refusals(http)


def _check_refusals(http: httpclient.InferenceServerClient) -> None:
    for settings, message in [
        ({"trace_file": "/tmp/elsewhere.json"}, "trace_file can only be set when the server starts"),
        ({"colour": "blue"}, "unknown trace setting 'colour'"),
        ({"trace_level": ["TENSORS"]}, "TENSORS is not supported"),
        ({"trace_level": ["LOUD"]}, "unknown trace level"),
        ({"trace_rate": "often"}, "expected an integer"),
        ({"trace_count": "-5"}, "out of range"),
        ({"trace_mode": "opentelemetry"}, "can only be set when the server starts"),
    ]:
        with pytest.raises(InferenceServerException, match=message):
            http.update_trace_settings(settings=settings)
    with pytest.raises(InferenceServerException, match="no_such_model"):
        http.get_trace_settings(model_name="no_such_model")


def test_per_model_settings_fall_back_to_the_global_ones_when_cleared(repo: Path, tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    args = ["--trace-config", "level=OFF", "--trace-config", f"triton,file={file}",
            "--trace-config", "triton,log-frequency=1"]  # fmt: skip
    with KilnProcess([repo], *args, log_dir=tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        grpc = grpcclient.InferenceServerClient(proc.grpc_url)
        # tracing only add_sub (every request); its other fields still follow the global setting
        own = http.update_trace_settings("add_sub", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        assert own["trace_level"] == ["TIMESTAMPS"] and own["log_frequency"] == "1"
        assert http.get_trace_settings()["trace_level"] == ["OFF"]
        http.update_trace_settings(settings={"log_frequency": "2"})  # global: the model follows it
        assert http.get_trace_settings("add_sub")["log_frequency"] == "2"
        _add_sub(http, 2)
        wait_until(lambda: Path(f"{file}.0").exists(), 5, "the model's trace file")
        assert [t["model_name"] for t in _traces(Path(f"{file}.0")).values()] == ["add_sub", "add_sub"]
        # gRPC clears the level: the model falls back to the global level (OFF) and traces nothing more
        cleared = grpc.update_trace_settings("add_sub", {"trace_level": None}, as_json=True)
        assert cleared["settings"]["trace_level"]["value"] == ["OFF"]
        http.update_trace_settings("add_sub", {"trace_rate": None})
        assert http.get_trace_settings("add_sub") == http.get_trace_settings()
        _add_sub(http, 3)
        assert not Path(f"{file}.1").exists()


def test_ensemble_steps_and_bls_calls_are_child_traces(repo: Path, tmp_path: Path) -> None:
    file = tmp_path / "trace.json"
    args = ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
            "--trace-config", f"triton,file={file}", "--trace-config", "triton,log-frequency=1"]  # fmt: skip
    with KilnProcess([repo], *args, log_dir=tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        out = http.infer("chain", _inputs(httpclient, ("A", "B"))).as_numpy("TWICE_A")
        np.testing.assert_array_equal(out, np.full((1, 4), 2, np.float32))
        wait_until(lambda: Path(f"{file}.0").exists(), 5, "the ensemble's trace file")
        chain = _traces(Path(f"{file}.0"))
        (parent,) = [i for i, t in chain.items() if t["model_name"] == "chain"]
        _ordered(chain[parent], ["REQUEST_START", "QUEUE_START", "REQUEST_END"])
        steps = [t for t in chain.values() if t.get("parent_id") == parent]
        assert [t["model_name"] for t in steps] == ["add_sub", "add_sub"]
        for step in steps:
            _ordered(step, STAMPS)
            assert chain[parent]["stamps"]["QUEUE_START"] <= step["stamps"]["REQUEST_START"]
            assert step["stamps"]["REQUEST_END"] <= chain[parent]["stamps"]["REQUEST_END"]
        # the BLS model's first executions run on worker threads, later ones on the loop (kiln.bridge): the call
        # is the request's child either way
        for n in range(1, 16):
            http.infer("bls", _inputs(httpclient, ("IN",)))
            wait_until(lambda n=n: Path(f"{file}.{n}").exists(), 5, "the BLS model's trace file")
            bls = _traces(Path(f"{file}.{n}"))
            (caller,) = [i for i, t in bls.items() if t["model_name"] == "bls"]
            assert [t["model_name"] for t in bls.values() if t.get("parent_id") == caller] == ["add_sub"]


def test_a_bls_call_without_the_requests_trace_is_a_trace_of_its_own(repo: Path, tmp_path: Path) -> None:
    """On worker threads and on the event loop alike (the model moves there after its first executions), a BLS
    call made without trace=request.trace() is not linked to the caller's trace."""
    file = tmp_path / "trace.json"
    args = ["--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
            "--trace-config", f"triton,file={file}", "--trace-config", "triton,log-frequency=1"]  # fmt: skip
    calls = 15
    with KilnProcess([repo], *args, log_dir=tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        for _ in range(calls):
            http.infer("bls_untraced", _inputs(httpclient, ("IN",)))

        def written() -> list[dict[str, Any]]:
            found = [t for f in tmp_path.glob("trace.json.*") for t in _traces(f).values()]
            return found if len(found) >= 2 * calls else []

        wait_until(lambda: bool(written()), 10, "the trace files of every caller and callee")
        traces = written()
    assert sorted({t["model_name"] for t in traces}) == ["add_sub", "bls_untraced"]
    assert sum(t["model_name"] == "add_sub" for t in traces) == calls
    assert [t for t in traces if t.get("parent_id") is not None] == []


# -- OpenTelemetry ---------------------------------------------------------------------------------------------
class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP collector: decodes each export request's spans."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Export)
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []


class _Export(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        body = self.rfile.read(int(self.headers["Content-Length"]))
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        server: Any = self.server
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            server.resources.append(attributes)
            for scope in resource_spans.scope_spans:
                server.spans.extend(scope.spans)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


TRACE_ID, SPAN_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def test_opentelemetry_spans_reach_the_collector_under_the_callers_span(
    repo: Path, tmp_path: Path, collector: _Collector
) -> None:
    url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    args = ["--trace-config", "mode=opentelemetry", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=0", "--trace-config", f"opentelemetry,url={url}",
            "--trace-config", "opentelemetry,resource=service.name=kiln-test",
            "--trace-config", "opentelemetry,bsp_schedule_delay=100"]  # fmt: skip
    with KilnProcess([repo], *args, log_dir=tmp_path) as proc:
        http = httpclient.InferenceServerClient(proc.http_url)
        settings = http.get_trace_settings()
        assert (settings["trace_mode"], settings["url"], settings["trace_rate"]) == (
            "opentelemetry",
            url,
            "0",
        )
        _add_sub(http)  # rate 0: only requests carrying a trace context are traced
        header = {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}
        _add_sub(http, headers=header)
        grpc_id = "1" * 32
        _add_sub(
            grpcclient.InferenceServerClient(proc.grpc_url),
            headers={"traceparent": f"00-{grpc_id}-{SPAN_ID}-01"},
        )
        http.infer("chain", _inputs(httpclient, ("A", "B")), headers=header)
        # 3 spans per add_sub request, 2 + 2 x 2 for the ensemble
        wait_until(lambda: len(collector.spans) >= 12, 10, "the spans at the collector")
    assert {r["service.name"] for r in collector.resources} == {"kiln-test"}
    spans = {s.span_id: s for s in collector.spans}
    roots = [s for s in spans.values() if s.name == "InferRequest"]
    assert sorted(s.trace_id.hex() for s in roots) == sorted([TRACE_ID, grpc_id, TRACE_ID])
    assert {s.parent_span_id.hex() for s in roots} == {SPAN_ID}
    for root in roots:
        (model,) = [s for s in spans.values() if s.parent_span_id == root.span_id]
        assert [e.name for e in model.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
        attributes = {a.key: a.value for a in model.attributes}
        assert attributes["triton.model_name"].string_value == model.name
        assert attributes["triton.model_version"].int_value == 1
        children = [s for s in spans.values() if s.parent_span_id == model.span_id]
        if model.name == "add_sub":
            (compute,) = children
            assert compute.name == "compute"
            assert [e.name for e in compute.events] == STAMPS[2:6]
            times = [e.time_unix_nano for e in compute.events]
            assert times == sorted(times) and model.start_time_unix_nano <= times[0]
        else:  # the ensemble: its steps' spans below its own
            assert [s.name for s in children] == ["add_sub", "add_sub"]
            assert all(s.trace_id == root.trace_id for s in children)
