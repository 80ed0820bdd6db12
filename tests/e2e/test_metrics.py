"""Metrics on a real server: latency summaries/histograms behind --metrics-config, the dashboard."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

from repos import write_python_model
from servers import KilnProcess


def test_server_exposes_summaries_and_histograms(test_repo: Path, tmp_path: Path) -> None:
    extra = ["--metrics-config", "summary_latencies=true", "--metrics-config", "histogram_latencies=true"]
    with KilnProcess([test_repo], "--strict-readiness", "false", *extra, log_dir=tmp_path) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        a = np.ones((1, 16), np.float32)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for t in inputs:
            t.set_data_from_numpy(a)
        for _ in range(5):
            client.infer("add_sub", inputs)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    lines = [x for x in text.splitlines() if 'model="add_sub"' in x]
    assert any(x.startswith("nv_inference_request_summary_us{") and 'quantile="0.99"' in x for x in lines)
    assert any(x.startswith("nv_inference_queue_summary_us_count{") and x.endswith(" 5") for x in lines)
    assert any(x.startswith("kiln_inference_request_duration_histogram_us_bucket{") and 'le="+Inf"' in x
               and x.endswith(" 5") for x in lines)  # fmt: skip


def test_bad_metrics_config_is_a_startup_error(test_repo: Path, tmp_path: Path) -> None:
    server = KilnProcess([test_repo], "--metrics-config", "bogus", log_dir=tmp_path).start(wait=False)
    try:
        assert server.wait_exit(60) == 1
    finally:
        server.stop()
    assert "KEY=VALUE" in server.log()


def test_grafana_dashboard_only_uses_metrics_the_server_exposes(test_repo: Path, tmp_path: Path) -> None:
    import json
    import re

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs/grafana/kiln-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:nv|process|kiln)_[a-z_]+)", e)}
    extra = ["--metrics-config", "summary_latencies=true", "--metrics-config", "histogram_latencies=true"]
    with KilnProcess([test_repo], "--strict-readiness", "false", *extra, log_dir=tmp_path) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            exposed = {
                line.split("{")[0].split(" ")[0] for line in r.read().decode().splitlines() if line[:1] != "#"
            }
    assert used and used <= exposed, used - exposed


DECOUPLED_PY = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            time.sleep(0.12)  # the first response comes after 120 ms
            for i in range(3):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def test_first_response_histogram_for_decoupled_models(test_repo: Path, tmp_path: Path) -> None:
    """Triton's nv_inference_first_response_histogram_ms: decoupled models only, milliseconds, buckets 100 / 500 /
    2000 / 5000, one observation per request at its first response; parsed by Prometheus' own parser."""
    import queue

    import tritonclient.grpc as grpcclient
    from prometheus_client.parser import text_string_to_metric_families

    repo = tmp_path / "repo"
    write_python_model(repo, "stream_py", DECOUPLED_PY)
    extra = ["--metrics-config", "histogram_latencies=true"]
    with KilnProcess([test_repo, repo], "--strict-readiness", "false", *extra, log_dir=tmp_path) as server:
        results: queue.Queue[object] = queue.Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: results.put(error or result))
        n = grpcclient.InferInput("N", [1], "INT32")
        n.set_data_from_numpy(np.array([3], np.int32))
        for _ in range(2):
            client.async_stream_infer("stream_py", [n])
        got = [results.get(timeout=20) for _ in range(6)]
        client.stop_stream()
        assert all(isinstance(r, grpcclient.InferResult) for r in got), got
        a = np.ones((1, 16), np.float32)
        inputs = [httpclient.InferInput(name, [1, 16], "FP32") for name in ("INPUT0", "INPUT1")]
        for t in inputs:
            t.set_data_from_numpy(a)
        httpclient.InferenceServerClient(server.http_url).infer("add_sub", inputs)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families["nv_inference_first_response_histogram_ms"]
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("model"), s.labels.get("le")): s.value for s in family.samples}
    assert {m for _, m, _ in samples} == {"stream_py"}  # not for the non-decoupled add_sub
    assert samples[("nv_inference_first_response_histogram_ms_count", "stream_py", None)] == 2
    total = samples[("nv_inference_first_response_histogram_ms_sum", "stream_py", None)]
    assert 2 * 120 <= total < 2 * 2000, total
    bounds = [le for name, _, le in samples if name.endswith("_bucket")]
    assert bounds == ["100", "500", "2000", "5000", "+Inf"]  # as Triton (prometheus-cpp) prints them
    assert samples[("nv_inference_first_response_histogram_ms_bucket", "stream_py", "100")] == 0
    assert samples[("nv_inference_first_response_histogram_ms_bucket", "stream_py", "+Inf")] == 2
