"""The trace extension's parts on their own: --trace-config parsing, run-time changes, sampling, the trace file,
the per-model fallback rules, and the timestamps built from a request's measured durations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kiln.errors import InvalidArgumentError
from kiln.scheduling import Batch
from kiln.tracing import TraceConfig, TraceManager, TraceValues
from kiln.tracing.config import parse_changes
from kiln.tracing.context import CURRENT
from kiln.tracing.files import TraceFile
from kiln.tracing.trace import Sampler, timestamps


def test_trace_config_takes_tritons_syntax() -> None:
    config = TraceConfig.parse(
        ["level=TIMESTAMPS", "rate=10", "count=5", "triton,file=/tmp/t.json", "triton,log-frequency=50"]
    )
    assert config.values == TraceValues(("TIMESTAMPS",), 10, 5, 50, "/tmp/t.json")
    otel = TraceConfig.parse(
        ["mode=opentelemetry", "level=TIMESTAMPS", "opentelemetry,url=http://c:4318/v1/traces",
         "opentelemetry,resource=service.version=2", "opentelemetry,bsp_schedule_delay=10"]
    )  # fmt: skip
    assert otel.mode == "opentelemetry" and otel.otel.url == "http://c:4318/v1/traces"
    assert dict(otel.otel.resource) == {"service.name": "triton-inference-server", "service.version": "2"}
    assert TraceConfig.parse([]).values == TraceValues()  # off, rate 1000, count -1


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["colour=red"], "unknown setting 'colour'"),
        (["triton,url=x"], "unknown setting 'url' in the triton section"),
        (["zipkin,url=x"], "unknown trace mode 'zipkin'"),
        (["opentelemetry,bsp=1"], "unknown opentelemetry setting"),
        (["mode=jaeger"], "mode must be triton or opentelemetry"),
        (["level=TENSORS", "triton,file=x"], "TENSORS is not supported"),
        (["level=TIMESTAMPS"], "needs a trace file"),
        (["level=TIMESTAMPS", "rate=0", "triton,file=x"], "rate must be non-zero"),
        (["count=-2"], "out of range"),
        (["rate=often"], "expected an integer"),
        (["level"], "expected [MODE,]SETTING=VALUE"),
    ],
)
def test_trace_config_refuses_what_it_does_not_know(specs: list[str], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TraceConfig.parse(specs)


def test_changes_parse_strings_lists_and_clears() -> None:
    config = TraceConfig.parse(["triton,file=/tmp/t.json"])
    current = config.values
    doc = {"trace_level": ["TIMESTAMPS"], "trace_rate": "5", "trace_count": None, "trace_file": "/tmp/t.json",
           "trace_mode": "triton"}  # fmt: skip
    assert parse_changes(doc, current, config) == {"level": ("TIMESTAMPS",), "rate": 5, "count": None}
    assert parse_changes({"trace_level": ["OFF"]}, current, config) == {"level": ()}
    with pytest.raises(InvalidArgumentError, match="OFF must be given alone"):
        parse_changes({"trace_level": ["OFF", "TIMESTAMPS"]}, current, config)
    with pytest.raises(InvalidArgumentError, match="must be a list"):
        parse_changes({"trace_level": "TIMESTAMPS"}, current, config)


def test_the_sampler_takes_every_nth_request_until_the_count_is_used() -> None:
    sampler = Sampler(TraceValues(("TIMESTAMPS",), rate=3, count=2), None, propagated=False)
    hits = [sampler.sample(forced=False) for _ in range(12)]
    assert [i for i, hit in enumerate(hits) if hit] == [2, 5] and sampler.exhausted
    off = Sampler(TraceValues((), rate=1), None, propagated=True)
    assert not off.sample(forced=True)  # level OFF traces nothing, even a propagated context
    otel = Sampler(TraceValues(("TIMESTAMPS",), rate=0), None, propagated=True)
    assert [otel.sample(forced=False), otel.sample(forced=True)] == [False, True]


def test_the_trace_file_is_a_json_list_after_every_write(tmp_path: Path) -> None:
    file = TraceFile(str(tmp_path / "t.json"))
    file.append(['{"id":1}'])
    assert json.loads((tmp_path / "t.json").read_text()) == [{"id": 1}]
    file.append(['{"id":2},{"id":2,"timestamps":[]}'])
    assert [r["id"] for r in json.loads((tmp_path / "t.json").read_text())] == [1, 2, 2]
    file.write_indexed(['{"id":3}'])
    file.write_indexed(['{"id":4}'])
    assert json.loads((tmp_path / "t.json.1").read_text()) == [{"id": 4}]


def test_timestamps_are_ordered_and_an_ensemble_has_no_compute_ones() -> None:
    timing = Batch(1, queue_ns=50, input_ns=10, infer_ns=100, output_ns=5)
    stamps = timestamps(1000, 1020, timing, 1300, compute=True)
    assert [n for n, _ in stamps] == ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
                                      "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]  # fmt: skip
    assert [ns for _, ns in stamps] == [1000, 1020, 1070, 1080, 1180, 1185, 1300]
    assert [n for n, _ in timestamps(0, 1, timing, 9, compute=False)] == [
        "REQUEST_START",
        "QUEUE_START",
        "REQUEST_END",
    ]
    assert max(ns for _, ns in timestamps(0, 1, timing, 60, compute=True)) == 60  # never past the end


def _model(name: str, platform: str = "") -> SimpleNamespace:
    return SimpleNamespace(name=name, version=1, config=SimpleNamespace(platform=platform))


def test_model_settings_fall_back_and_the_core_check_follows_them(tmp_path: Path) -> None:
    manager = TraceManager(TraceConfig.parse([f"triton,file={tmp_path / 't.json'}", "rate=1"]))
    core = SimpleNamespace(tracing=None, tracer=None)
    manager.attach(core)  # type: ignore[arg-type]
    assert core.tracer is None  # level OFF everywhere: the core's one check skips tracing
    manager.update("m", {"trace_level": ["TIMESTAMPS"]})
    assert core.tracer is manager and manager.get("m")["trace_level"] == ["TIMESTAMPS"]
    manager.update("", {"trace_rate": "7"})
    assert manager.get("m")["trace_rate"] == "7"  # a field the model did not set follows the global one
    manager.update("m", {"trace_level": None})
    assert manager.get("m") == manager.get("") and core.tracer is None
    with pytest.raises(InvalidArgumentError, match="unknown trace setting"):
        manager.update("", {"rate": "1"})


def test_a_traced_request_and_its_child_are_written_together(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    manager = TraceManager(
        TraceConfig.parse([f"triton,file={path}", "level=TIMESTAMPS", "rate=1", "count=1"])
    )
    request, work = SimpleNamespace(id="x"), SimpleNamespace(trace=None)
    parent = manager.begin(request, _model("ens", "ensemble"), work, 10)
    assert parent is not None and CURRENT.get() is parent and work.trace is parent
    child = manager.begin(SimpleNamespace(id="x"), _model("step"), SimpleNamespace(trace=None), 20)
    assert child is not None and child.parent is parent
    child.end(20, 25, Batch(1, 1, 1, 1, 1))
    assert CURRENT.get() is parent
    parent.end(10, 15, None)
    assert CURRENT.get() is None
    records = json.loads(path.read_text())  # the count is used up: written at once
    assert records[0] == {"id": 1, "model_name": "ens", "model_version": 1, "request_id": "x"}
    assert {"id": 2, "model_name": "step", "model_version": 1, "request_id": "x", "parent_id": 1} in records
    assert manager.begin(request, _model("ens"), work, 30) is None


def test_triton_mode_does_not_import_opentelemetry() -> None:
    code = (
        "import sys; from kiln.tracing import TraceConfig, TraceManager;"
        "TraceManager(TraceConfig.parse(['level=TIMESTAMPS', 'triton,file=/dev/null']));"
        "import kiln.server, kiln.http.app, kiln.grpc.servicer;"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
