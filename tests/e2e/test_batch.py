"""kiln batch end to end: the local executor on every dataset kind (outputs equal the model run directly), bad
rows recorded while the job finishes, resume skipping finished shards, the CLI, and the Ray Data executor on a
real two-node local cluster (started with ``ray start`` on 127.0.0.1, stopped by the fixture)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from build_models import conv_net
from kiln.batch import BatchOptions, OutputFormat, Preprocessing, read_output, run_batch
from kiln.examples import models, write_model

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = 40


def _pyarrow_usable() -> str:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        return str(e)
    return ""


PYARROW_MISSING = _pyarrow_usable()
needs_pyarrow = pytest.mark.skipif(bool(PYARROW_MISSING), reason=f"pyarrow unusable: {PYARROW_MISSING}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch_repo")
    write_model(root, "add_sub", models.add_sub(["batch", 4]),
                'max_batch_size: 8\ndynamic_batching { preferred_batch_size: [ 4 ] }\n')  # fmt: skip
    write_model(root, "conv", conv_net(size=16), "max_batch_size: 16\n")
    return root


def _direct(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((ROWS, 4)).astype(np.float32), rng.standard_normal((ROWS, 4)).astype(
        np.float32
    )


def _options(repo: Path, model: str, data: Path, out: Path, **kw: object) -> BatchOptions:
    return BatchOptions(repository=repo, model=model, input=data, output=out, progress=False, **kw)  # type: ignore[arg-type]


def _check_add_sub(repo: Path, out: Path, a: np.ndarray, b: np.ndarray) -> None:
    got = read_output(out)
    want = _direct(repo, "add_sub", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(got["OUTPUT0"], want["OUTPUT0"])
    np.testing.assert_array_equal(got["OUTPUT1"], want["OUTPUT1"])


def test_npz_folder(repo: Path, tmp_path: Path) -> None:
    a, b = _rows()
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "a.npz", INPUT0=a[:25], INPUT1=b[:25])
    np.savez(data / "b.npz", INPUT0=a[25:], INPUT1=b[25:])
    summary = run_batch(
        _options(repo, "add_sub", data, tmp_path / "out", shard_size=16, output_format=OutputFormat.NPY)
    )
    assert (summary.rows, summary.succeeded, summary.failures, summary.shards) == (ROWS, ROWS, [], 3)
    assert summary.batch_size == 4  # the config's preferred batch size
    _check_add_sub(repo, tmp_path / "out", a, b)
    assert read_output(tmp_path / "out")["row_id"][25] == "b.npz:0"


def test_per_input_npy(repo: Path, tmp_path: Path) -> None:
    a, b = _rows(1)
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "INPUT0.npy", a)
    np.save(data / "INPUT1.npy", b)
    run_batch(_options(repo, "add_sub", data, tmp_path / "out", output_format=OutputFormat.NPY, batch_size=8))
    _check_add_sub(repo, tmp_path / "out", a, b)


def test_npy_stack_one_input(repo: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(2).random((ROWS, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    run_batch(_options(repo, "conv", tmp_path / "x.npy", tmp_path / "out", output_format=OutputFormat.NPY))
    np.testing.assert_allclose(read_output(tmp_path / "out")["logits"], _direct(repo, "conv", {"x": x})["logits"],
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_csv_with_column_mapping_and_bad_rows(repo: Path, tmp_path: Path) -> None:
    a, b = _rows(3)
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "left", "right"])
        for i in range(ROWS):
            writer.writerow([f"k{i}", " ".join(map(repr, a[i].tolist())), json.dumps(b[i].tolist())])
        writer.writerow(["short", "1 2 3", "1 2 3 4"])  # 3 values for a [4] input
        writer.writerow(["text", "a b c d", "1 2 3 4"])
    summary = run_batch(_options(repo, "add_sub", path, tmp_path / "out", output_format=OutputFormat.NPY,
                                 columns={"INPUT0": "left", "INPUT1": "right"}, id_column="key"))  # fmt: skip
    assert summary.succeeded == ROWS
    reasons = {f.row_id: f.reason for f in summary.failures}
    assert set(reasons) == {"short", "text"}
    assert "shape [3] does not fit dims [4]" in reasons["short"]
    assert "not a number" in reasons["text"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert {line["row_id"] for line in lines} == {"short", "text"}
    got = read_output(tmp_path / "out")
    assert list(got["row_id"][:2]) == ["k0", "k1"]
    np.testing.assert_allclose(got["OUTPUT0"], a + b, rtol=1e-6)


@needs_pyarrow
def test_parquet_in_and_out_with_a_wrong_shape(repo: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = _rows(4)
    left = [row.tolist() for row in a]
    left[7] = [1.0, 2.0]  # a wrong shape: recorded, the job goes on
    pq.write_table(pa.table({"INPUT0": left, "INPUT1": [row.tolist() for row in b]}), tmp_path / "in.parquet")
    summary = run_batch(_options(repo, "add_sub", tmp_path / "in.parquet", tmp_path / "out", shard_size=16))
    assert [(f.row_id, f.index) for f in summary.failures] == [("7", 7)]
    got = read_output(tmp_path / "out")
    keep = np.arange(ROWS) != 7
    assert list(got["row_id"]) == [str(i) for i in range(ROWS) if i != 7]
    want = _direct(repo, "add_sub", {"INPUT0": a[keep], "INPUT1": b[keep]})
    np.testing.assert_array_equal(got["OUTPUT1"], want["OUTPUT1"])
    assert pq.read_schema(tmp_path / "out" / "part-00000.parquet").metadata[b"kiln.model"] == b"add_sub"


def _images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(5)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (12 + i % 9, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _expected_images(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as im:
            x = np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
        arrays.append(x.transpose(2, 0, 1))
    return np.stack(arrays)


def test_image_folder_with_an_undecodable_image(repo: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "images", 30)
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    summary = run_batch(_options(repo, "conv", tmp_path / "images", out, shard_size=8,
                                 output_format=OutputFormat.NPY, preprocessing=Preprocessing.UNIT))  # fmt: skip
    assert (summary.succeeded, [f.row_id for f in summary.failures]) == (30, ["broken.png"])
    assert "cannot decode image" in summary.failures[0].reason
    got = read_output(out)
    assert list(got["row_id"]) == [p.name for p in paths]
    want = _direct(repo, "conv", {"x": _expected_images(paths)})["logits"]
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-6)


def test_images_need_a_preprocessing(repo: Path, tmp_path: Path) -> None:
    from kiln.errors import InvalidArgumentError

    _images(tmp_path / "images", 2)
    with pytest.raises(InvalidArgumentError, match="none is recorded for this model"):
        run_batch(_options(repo, "conv", tmp_path / "images", tmp_path / "out"))


def test_resume_skips_finished_shards(repo: Path, tmp_path: Path) -> None:
    a, b = _rows(6)
    data = tmp_path / "data.npz"
    np.savez(data, INPUT0=a, INPUT1=b)
    out = tmp_path / "out"
    first = run_batch(_options(repo, "add_sub", data, out, shard_size=8, output_format=OutputFormat.NPY))
    assert first.shards == 5
    marker = out / "part-00000" / "OUTPUT0.npy"
    np.save(marker, np.full((8, 4), 7.0, np.float32))  # a finished shard is never run again
    for shard in ("part-00002", "part-00004"):  # as if the job had been killed before these
        for f in (out / shard).iterdir():
            f.unlink()
        (out / shard).rmdir()
    (out / ".part-00004.tmp-1-dead").mkdir()  # what a kill during a write leaves
    second = run_batch(_options(repo, "add_sub", data, out, shard_size=8, output_format=OutputFormat.NPY))
    assert (second.shards_skipped, second.rows) == (3, 16)
    assert not list(out.glob(".part-*"))
    got = read_output(out)
    assert (got["OUTPUT0"][:8] == 7.0).all()
    np.testing.assert_array_equal(got["OUTPUT0"][8:], (a + b)[8:])
    np.testing.assert_array_equal(got["OUTPUT1"], a - b)


def test_another_job_in_the_output_folder_is_refused(repo: Path, tmp_path: Path) -> None:
    from kiln.errors import FailedPreconditionError

    a, b = _rows(7)
    np.savez(tmp_path / "data.npz", INPUT0=a, INPUT1=b)
    out = tmp_path / "out"
    run_batch(_options(repo, "add_sub", tmp_path / "data.npz", out, output_format=OutputFormat.NPY))
    with pytest.raises(FailedPreconditionError, match="differs in shard_size"):
        run_batch(
            _options(
                repo, "add_sub", tmp_path / "data.npz", out, shard_size=5, output_format=OutputFormat.NPY
            )
        )
    summary = run_batch(_options(repo, "add_sub", tmp_path / "data.npz", out, shard_size=5, overwrite=True,
                                 output_format=OutputFormat.NPY))  # fmt: skip
    assert (summary.shards, summary.shards_skipped) == (8, 0)
    _check_add_sub(repo, out, a, b)


def test_cli_runs_and_resumes(repo: Path, tmp_path: Path) -> None:
    a, b = _rows(8)
    np.savez(tmp_path / "data.npz", INPUT0=a, INPUT1=b)
    command = [sys.executable, "-m", "kiln", "batch", str(repo / "add_sub"), "--input", str(tmp_path / "data.npz"),
               "--output", str(tmp_path / "out"), "--format", "npy", "--shard-size", "10", "--no-progress"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr
    assert "kiln batch: add_sub version 1 (local)" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert "skipping 4 finished shards of 4" in second.stderr
    _check_add_sub(repo, tmp_path / "out", a, b)
    missing = subprocess.run([*command[:4], str(repo / "nope"), *command[5:]], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert missing.returncode == 1 and "model 'nope' not found" in missing.stderr


# -- Ray Data on a real two-node local cluster -----------------------------------------------------------------


# Ray (2.60) resolves --node-ip-address 127.0.0.1 to the machine's outward address and listens on every
# interface; so the cluster runs in a network namespace of its own with only loopback up (and a PID namespace,
# so that `ray stop` there stops this cluster only): inside it, 127.0.0.1 is the only address there is.
LOOPBACK_ONLY = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]


def _namespaces_usable() -> str:
    """'' when this process may make a loopback-only network namespace (root, or unprivileged user namespaces)."""
    probe = subprocess.run([*LOOPBACK_ONLY, "ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                           timeout=30, check=False)  # fmt: skip
    return "" if probe.returncode == 0 else (probe.stderr.strip() or f"exit {probe.returncode}")


def _two_node_job(repo: Path, images: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Head and worker (one CPU and one ``kiln_slot`` each) and `kiln batch --ray` on them, all inside the
    namespaces; the cluster is stopped before the namespace goes."""
    bin_dir = Path(sys.executable).parent
    common = "--node-ip-address 127.0.0.1 --num-cpus 1 --resources '{\"kiln_slot\": 1}' --disable-usage-stats"
    batch = [str(bin_dir / "kiln"), "batch", "--model-repository", str(repo), "--model", "conv",
             "--input", str(images), "--output", str(out), "--shard-size", "16", "--batch-size", "4",
             "--preprocessing", "unit", "--no-progress", "--ray", "127.0.0.1:6379", "--ray-concurrency", "2",
             "--ray-num-cpus", "0.5", "--ray-threads", "1", "--ray-resources", "kiln_slot=1"]  # fmt: skip
    script = f"""set -e
ip link set lo up
trap '{bin_dir / "ray"} stop --force >/dev/null 2>&1' EXIT
{bin_dir / "ray"} start --head --port 6379 --include-dashboard=false {common} >/dev/null
{bin_dir / "ray"} start --address 127.0.0.1:6379 {common} >/dev/null
{" ".join(f"'{a}'" for a in batch)}
"""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([*LOOPBACK_ONLY, "bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=240, check=False)  # fmt: skip


@pytest.mark.timeout(300)
def test_ray_executor_on_two_nodes(repo: Path, tmp_path: Path) -> None:
    if PYARROW_MISSING:
        pytest.skip(f"Ray Data needs pyarrow, unusable here: {PYARROW_MISSING}")
    why = _namespaces_usable()
    if why:
        pytest.skip(f"cannot make a loopback-only network namespace for the Ray cluster: {why}")
    paths = _images(tmp_path / "images", 48)
    (tmp_path / "images" / "zz_broken.jpg").write_bytes(b"nothing")
    common = {"shard_size": 16, "batch_size": 4, "preprocessing": Preprocessing.UNIT}
    local = run_batch(_options(repo, "conv", tmp_path / "images", tmp_path / "local", **common))
    job = _two_node_job(repo, tmp_path / "images", tmp_path / "ray")
    assert job.returncode == 0, job.stdout + job.stderr  # a bad row is recorded; the job finishes
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["executor"] == "ray"
    assert (summary["succeeded"], [f["row_id"] for f in summary["failures"]]) == (48, ["zz_broken.jpg"])
    nodes = {worker.split("/")[0] for worker in summary["workers"]}
    assert len(nodes) == 2, summary["workers"]  # one actor per node (each asks for the node's only kiln_slot)
    got, want = read_output(tmp_path / "ray"), read_output(tmp_path / "local")
    assert list(got["row_id"]) == list(want["row_id"]) == [p.name for p in paths]
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-6)
    assert [(f.row_id, f.reason) for f in local.failures] == [
        (f["row_id"], f["reason"]) for f in summary["failures"]
    ]
