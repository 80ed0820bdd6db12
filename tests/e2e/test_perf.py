"""kiln bench as a library: statistics, --compare, artifacts by file or repository folder, JSON and PNG."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from build_models import mlp, save, transformer_block, write_samples
from kiln.builder import BuildOptions, CalibrationOptions, Precision, build
from kiln.cli.main import main
from kiln.errors import InvalidArgumentError
from kiln.examples import models, write_model
from kiln.perf import BenchOptions, LatencyStats, bench
from kiln.perf.report import print_results, results_json, write_histogram, write_json
from servers import KilnProcess


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("perf")
    source = save(mlp(), work, "mlp.onnx")
    write_samples(work / "cal", "features", (32,), 520)  # 20 % held out: above the gate's minimum of 100
    common = {"benchmark": False, "progress": False, "calibration": CalibrationOptions(data=work / "cal")}
    build(BuildOptions(source=source, output=work / "repo" / "fp32", threads=1, **common))  # type: ignore[arg-type]
    build(BuildOptions(source=source, output=work / "repo" / "int8", precision=Precision.INT8, **common))  # type: ignore[arg-type]
    save(transformer_block(), work, "block.onnx")
    return work


def test_latency_stats_are_ordered_percentiles() -> None:
    stats = LatencyStats.from_latencies([i / 1000 for i in range(1, 101)], batch=4)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(100.0)
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput == pytest.approx(4 * 100 / sum(i / 1000 for i in range(1, 101)))


def test_bench_one_artifact_by_folder_and_file(repo: Path) -> None:
    (by_folder,) = bench(
        BenchOptions(artifacts=(repo / "repo" / "fp32",), iterations=30, warmup_s=0.01, batch=4)
    )
    assert by_folder.latency.iterations == 30
    assert by_folder.threads == 1  # from the generated config.pbtxt
    assert by_folder.settings["intra_op_threads"] == 1 and by_folder.settings["inter_op_threads"] == 1
    assert by_folder.settings["providers"] == ["CPUExecutionProvider"]
    assert str(by_folder.settings["runtime"]).startswith("onnxruntime ")
    assert by_folder.batch == 4 and by_folder.latency.throughput > 0
    assert by_folder.size_mb > 0 and by_folder.peak_memory_mb >= 0
    (by_file,) = bench(
        BenchOptions(artifacts=(repo / "repo" / "fp32" / "1" / "model.onnx",), duration_s=0.2, warmup_s=0.01)
    )
    assert by_file.latency.total_s >= 0.2 and by_file.threads >= 1
    assert by_file.latency.throughput <= by_file.latency.iterations / by_file.latency.total_s + 1e-6


def test_compare_alternates_and_reports_ratios(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = BenchOptions(
        artifacts=(repo / "repo" / "fp32", repo / "repo" / "int8"), iterations=40, warmup_s=0.01, rounds=4
    )
    a, b = bench(options)
    assert a.latency.iterations == 40 and b.latency.iterations == 40
    doc = results_json([a, b])
    ratio = doc["ratios_b_over_a"]["throughput"]  # type: ignore[index]
    assert ratio == pytest.approx(b.latency.throughput / a.latency.throughput)
    print_results([a, b])
    out = capsys.readouterr().out
    assert "B / A" in out and "p99" in out and "throughput" in out
    assert "intra_op_threads" in out and "graph_optimization ORT_ENABLE_ALL" in out
    write_json([a, b], tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert len(saved["results"][0]["latency"]["latencies_ms"]) == 40
    assert saved["results"][1]["settings"] == b.settings
    if importlib.util.find_spec("matplotlib") is not None:
        write_histogram([a, b], tmp_path / "h.png")
        assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dynamic_dims_need_shapes(repo: Path) -> None:
    block = repo / "block.onnx"
    with pytest.raises(InvalidArgumentError, match="--shapes"):
        bench(BenchOptions(artifacts=(block,), iterations=2))
    (result,) = bench(BenchOptions(artifacts=(block,), iterations=5, warmup_s=0.01, batch=2,
                                   shapes={"hidden": (1, 7, 32)}))  # fmt: skip
    assert result.latency.iterations == 5
    np.savez(
        repo / "inputs.npz", hidden=np.ones((3, 9, 32), np.float32)
    )  # real inputs, repeated to the batch
    (loaded,) = bench(BenchOptions(artifacts=(block,), iterations=3, warmup_s=0.01, batch=4,
                                   input_data=repo / "inputs.npz"))  # fmt: skip
    assert loaded.latency.iterations == 3
    np.savez(repo / "wrong.npz", other=np.ones((1, 9, 32), np.float32))
    with pytest.raises(InvalidArgumentError, match="no array named 'hidden'"):
        bench(BenchOptions(artifacts=(block,), iterations=1, input_data=repo / "wrong.npz"))
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        bench(BenchOptions(artifacts=(repo / "nope",)))


# ORT models whose thread settings come from different places: cores / instances, a parameter, both ORT knobs
SERVED = {
    "two_instances": "instance_group [ { count: 2 kind: KIND_CPU } ]",
    "one_thread": 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }',
    "tuned": 'parameters { key: "inter_op_thread_count" value: { string_value: "2" } }\n'
    "optimization { graph { level: -1 } }",
    "defaults": "",
}
_LOADED = re.compile(r"loaded model '(\w+)' version \d+ \(onnxruntime: (\{.*\})\)")


def _served_settings(server: KilnProcess, names: set[str], timeout: float = 60.0) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = {m[1]: ast.literal_eval(m[2]) for m in _LOADED.finditer(server.log())}
        if names <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_bench_runs_a_model_as_serve_does(tmp_path: Path) -> None:
    """kiln bench on a repository model reports the thread and optimisation settings kiln serve loads it with."""
    repo = tmp_path / "repo"
    for name, extra in SERVED.items():
        write_model(repo, name, models.add_sub(["batch", 4]), f'name: "{name}"\nmax_batch_size: 8\n{extra}')
    with KilnProcess([repo], "--exit-on-error", log_dir=tmp_path) as server:
        served = _served_settings(server, set(SERVED))
    assert served.keys() == SERVED.keys(), server.log()
    assert served["one_thread"]["intra_op_threads"] == 1
    assert served["tuned"]["inter_op_threads"] == 2
    assert served["tuned"]["graph_optimization"] == "ORT_ENABLE_BASIC"
    keys = ("intra_op_threads", "inter_op_threads", "graph_optimization", "providers")
    for name in SERVED:
        out = tmp_path / f"{name}.json"
        assert (
            main(["bench", str(repo / name), "--iterations", "3", "--warmup", "0", "--json", str(out)]) == 0
        )
        (result,) = json.loads(out.read_text())["results"]
        assert {k: result["settings"][k] for k in keys} == {k: served[name][k] for k in keys}, name
        assert result["threads"] == served[name]["intra_op_threads"]


def _shares(profile: dict) -> float:
    return sum(n["share_percent"] for n in profile["nodes"])


def test_profile_onnxruntime_counts_the_timed_runs_only(repo: Path) -> None:
    (result,) = bench(BenchOptions(artifacts=(repo / "repo" / "fp32",), iterations=25, warmup_s=0.05,
                                   batch=2, profile=True))  # fmt: skip
    profile = result.profile
    assert profile is not None and profile.backend == "onnxruntime"
    assert profile.runs == 25  # warm-up runs are not in the profile
    assert profile.nodes and all(n.calls == 25 for n in profile.nodes)
    assert {n.op_type for n in profile.nodes} & {"Gemm", "MatMul", "FusedGemm", "Relu"}
    doc = profile.to_dict()
    assert _shares(doc) == pytest.approx(100.0, abs=0.01)  # type: ignore[arg-type]
    assert sum(t["share_percent"] for t in doc["op_types"]) == pytest.approx(100.0, abs=0.01)  # type: ignore[index, union-attr]
    top = profile.top(2)
    assert len(top) == min(2, len(profile.nodes)) and top[0].total_us >= top[-1].total_us
    (plain,) = bench(BenchOptions(artifacts=(repo / "repo" / "fp32",), iterations=3, warmup_s=0.0))
    assert plain.profile is None


def test_profile_compare_onnxruntime_and_openvino_side_by_side(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ov = pytest.importorskip("openvino")
    source = repo / "repo" / "fp32" / "1" / "model.onnx"
    xml = tmp_path / "model.xml"
    ov.save_model(ov.convert_model(str(source)), str(xml))
    exported = tmp_path / "profile.json"
    code = main(["bench", "--compare", str(source), str(xml), "--iterations", "20", "--warmup", "0.05",
                 "--batch", "4", "--profile", "--profile-top", "3", "--export-profile", str(exported)])  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    assert "slowest nodes (onnxruntime" in out and "slowest nodes (openvino" in out
    assert "time per op family" in out and "B / A" in out
    doc = json.loads(exported.read_text())
    ort_profile, ov_profile = doc["profiles"]
    assert ort_profile["backend"] == "onnxruntime" and ov_profile["backend"] == "openvino"
    for profile in (ort_profile, ov_profile):
        assert profile["runs"] == 20 and profile["nodes"]
        assert _shares(profile) == pytest.approx(100.0, abs=0.01)
        assert profile["total_ms_per_run"] > 0
    # OpenVINO names the kernel of every node (e.g. brgemm_avx2_f32; the name depends on the CPU's ISA)
    assert all(n["kernel"] for n in ov_profile["nodes"])


def test_profile_of_other_backends_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    param = tmp_path / "model.param"
    param.write_text("7767517\n")
    with pytest.raises(InvalidArgumentError, match="profiling is not supported for the 'ncnn' backend"):
        bench(BenchOptions(artifacts=(param,), iterations=1, profile=True))
    assert main(["bench", str(param), "--profile"]) == 1
    assert "ONNX Runtime (.onnx) and OpenVINO (.xml)" in " ".join(capsys.readouterr().err.split())
