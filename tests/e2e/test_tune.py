"""kiln tune for real: a kiln serve subprocess, the gRPC load generator, a small search space, short windows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from google.protobuf import text_format

from build_models import mlp, save
from kiln.cli.main import main
from kiln.config.schema import model_config_pb2

# the user's config: a GPU instance group this CPU host cannot run, and fields tune must keep
USER_CONFIG = """name: "mlp"
backend: "onnxruntime"
max_batch_size: 8
version_policy { latest { num_versions: 1 } }
instance_group [ { name: "mine" count: 1 kind: KIND_GPU } ]
parameters { key: "custom_note" value: { string_value: "keep me" } }
"""
SMALL = [
    "--instances", "1,2", "--threads", "auto,1", "--max-batch-sizes", "4,8", "--preferred", "none,max",
    "--delays-us", "off,0,500", "--duration", "0.4", "--warmup", "0.1", "--max-concurrency", "8", "--no-progress",
]  # fmt: skip


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "repo" / "mlp"
    save(mlp(), folder / "1", "model.onnx")
    (folder / "config.pbtxt").write_text(USER_CONFIG)
    return folder


def test_tune_writes_the_best_config_within_budget(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    code = main(["tune", str(model_dir), "--latency-budget-ms", "50", "--max-minutes", "0.75",
                 "--output-dir", str(out), "--write", *SMALL])  # fmt: skip
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert elapsed < 60
    doc = json.loads((out / "points.json").read_text())
    points = doc["points"]
    chosen = [p for p in points if p["chosen"]]
    assert len(chosen) == 1 and chosen[0]["within_budget"] and chosen[0]["p99_ms"] <= 50
    # the winner: the best confirmed score (the lower of two measurements at the best concurrency)
    configs = doc["configs"]
    (winner,) = [c for c in configs if c["chosen"]]
    confirmed = [c for c in configs if c["confirmation_within_budget"]]
    assert confirmed and winner in confirmed
    assert winner["final_score"] == max(c["final_score"] for c in confirmed)
    assert winner["final_score"] == min(winner["score"], winner["confirmation_throughput"])
    unconfirmed = {c["config"] for c in configs if c["confirmation_throughput"] is None}
    others = [p["throughput"] for p in points if p["within_budget"] and p["config"] in unconfirmed]
    assert chosen[0]["throughput"] >= max(others, default=0.0)  # the top configs were the ones confirmed
    assert len({p["label"] for p in points}) >= 3  # several configs measured
    assert {p["concurrency"] for p in points} >= {1, 2}  # several concurrencies
    # the user's KIND_GPU config cannot load here: its row says why, and the candidates ran on the CPU
    as_given = [p for p in points if p["label"] == "as given"]
    assert as_given and "KIND_GPU" in as_given[0]["first_error"]
    written = (model_dir / "config.pbtxt").read_text()
    assert "KIND_GPU" not in written and "KIND_CPU" in written
    config = text_format.Parse(written, model_config_pb2.ModelConfig())
    assert config.parameters["custom_note"].string_value == "keep me"
    assert config.version_policy.latest.num_versions == 1
    assert config.instance_group[0].name == "mine"
    assert config.max_batch_size in (4, 8)
    assert (out / "config.pbtxt.orig").read_text() == USER_CONFIG
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "| **chosen** |" in (out / "points.md").read_text() or "**chosen**" in (out / "points.md").read_text()
    )
    assert "chosen:" in captured.out


def test_an_impossible_budget_fails_clearly(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (model_dir / "config.pbtxt").read_text()
    code = main(["tune", str(model_dir), "--latency-budget-ms", "0.001", "--max-minutes", "0.3",
                 "--output-dir", str(tmp_path / "out"), "--write", *SMALL])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "no configuration kept p99 within 0.001 ms" in " ".join(err.split())
    assert (model_dir / "config.pbtxt").read_text() == before  # nothing written
    assert (tmp_path / "out" / "points.json").exists()  # what was measured is still reported


def test_bad_arguments_are_clear(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(model_dir), "--latency-budget-ms", "10", "--preferred", "max/3"]) == 1
    assert "--preferred" in capsys.readouterr().err
    assert main(["tune", str(model_dir.parent / "nope"), "--latency-budget-ms", "10"]) == 1
    assert "not a model folder" in capsys.readouterr().err


def test_sigterm_stops_the_server_tune_started(model_dir: Path, tmp_path: Path) -> None:
    """kiln tune killed with SIGTERM takes its kiln serve down with it (no orphan left listening)."""
    import signal
    import subprocess
    import sys

    from servers import wait_until

    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "tune", str(model_dir), "--latency-budget-ms", "50", "--max-minutes", "1",
         "--output-dir", str(tmp_path / "out"), *SMALL],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip

    def children() -> list[int]:
        path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    try:
        wait_until(lambda: children(), timeout=30, what="kiln tune to start its kiln serve")
        serve = children()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in serve:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid), timeout=15,
                   what=f"kiln serve {pid} to exit")  # fmt: skip


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "gone"
