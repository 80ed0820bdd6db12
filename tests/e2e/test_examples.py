"""The three vision examples end to end: prepare the pretrained models into a repository, serve it with a real
``kiln serve``, run each client on real images (scikit-image's samples) over HTTP and gRPC."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.vision import zoo

if not zoo.classifier_available() or importlib.util.find_spec("skimage") is None:
    pytest.skip(
        "the vision examples need the examples extra: make setup (pip install '.[examples]')",
        allow_module_level=True,
    )

from images import png_header_only
from kiln.vision import load_image, sample
from kiln.vision.remote import Remote
from servers import KilnProcess, free_ports

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967


def load_client(task: str) -> ModuleType:
    """``examples/<task>/client.py`` as a module (once)."""
    name = f"kiln_example_{task}_client"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / task / "client.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def vision_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("vision")
    zoo.write_all(repo)
    return repo


@pytest.fixture(scope="session")
def vision_server(vision_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnProcess]:
    proc = KilnProcess([vision_repo], log_dir=tmp_path_factory.mktemp("vision-logs")).start()
    yield proc
    assert proc.stop() == 0, proc.log()


def remote(server: KilnProcess, protocol: str) -> Remote:
    return Remote(server.http_url if protocol == "http" else server.grpc_url, protocol)


def run_client(task: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / task / "client.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


# --- classification ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classifier_knows_the_cat_and_the_coffee(vision_server: KilnProcess, protocol: str) -> None:
    client = load_client("classification")
    with remote(vision_server, protocol) as r:
        cat, coffee = client.classify(r, ["skimage:chelsea", "skimage:coffee"], top_k=5)
    labels = zoo.imagenet_labels()
    assert len(cat) == len(coffee) == 5
    assert {TABBY, TIGER_CAT, EGYPTIAN_CAT} & {p.index for p in cat[:1]}, cat  # the best guess is a cat
    assert TABBY in {p.index for p in cat}, cat  # Chelsea is a tabby
    assert coffee[0].index == ESPRESSO and coffee[0].score > 0.5, coffee
    for p in cat + coffee:
        assert p.label == labels[p.index] and 0.0 <= p.score <= 1.0
    assert [p.score for p in cat] == sorted((p.score for p in cat), reverse=True)


def test_classifier_batches_and_scalings(vision_server: KilnProcess) -> None:
    """Batches of 2 give the same answers as one big batch; a wrong scaling gives worse answers."""
    client = load_client("classification")
    images = ["skimage:chelsea", "skimage:coffee", "skimage:astronaut"]
    with remote(vision_server, "http") as r:
        big = client.classify(r, images, top_k=3)
        small = client.classify(r, images, top_k=3, batch_size=2)
        unscaled = client.classify(r, ["skimage:coffee"], top_k=1, scaling=client.Scaling.NONE)
    assert [[p.index for p in ps] for ps in big] == [[p.index for p in ps] for ps in small]
    for a, b in zip(big, small, strict=True):
        np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-4)
    assert unscaled[0][0].score < big[1][0].score or unscaled[0][0].index != ESPRESSO


def test_classification_cli_prints_score_index_label(vision_server: KilnProcess) -> None:
    out = run_client(
        "classification", "-u", vision_server.grpc_url, "-i", "grpc", "-c", "3", "skimage:coffee"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Image 'skimage:coffee':" and len(lines) == 4
    assert lines[1].strip().endswith(f"({ESPRESSO}) = {zoo.imagenet_labels()[ESPRESSO]}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"GIF89a but not really an image", "is not an image"),
        (None, "too large: Image size (900000000 pixels)"),
    ],
    ids=["empty", "not-an-image", "huge"],
)
def test_bad_images_get_clear_errors(
    vision_server: KilnProcess, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "bad.png"
    if content is None:  # a valid PNG header claiming 30000x30000 (900 megapixels)
        content = png_header_only(30_000, 30_000)
    path.write_bytes(content)
    for task in ("classification", "detection", "segmentation"):
        out_dir = () if task == "classification" else ("-o", str(tmp_path))
        out = run_client(task, "-u", vision_server.http_url, *out_dir, str(path))
        assert out.returncode == 1 and message in out.stderr and str(path) in out.stderr, (task, out.stderr)
        assert "Traceback" not in out.stderr


def test_unknown_sample_and_model_are_clear_errors(vision_server: KilnProcess) -> None:
    out = run_client("classification", "-u", vision_server.http_url, "skimage:nothing_like_this")
    assert out.returncode == 1 and "not one of scikit-image's sample images" in out.stderr
    out = run_client("classification", "-u", vision_server.http_url, "-m", "no_such_model", "skimage:coffee")
    assert out.returncode == 1 and "no_such_model" in out.stderr and "Traceback" not in out.stderr


# --- detection -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_layout_detector_finds_text_on_the_page(vision_server: KilnProcess, protocol: str) -> None:
    client = load_client("detection")
    page = sample("page")
    with remote(vision_server, protocol) as r:
        found = client.detect(r, page, zoo.layout_labels())
    assert {"text", "title"} & {d.label for d in found}, found
    h, w = page.shape[:2]
    for d in found:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and d.score >= 0.5
    # the biggest text box covers the paragraph: most of the page's width, in its upper half
    text = max(
        (d for d in found if d.label == "text"), key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])
    )
    assert text.box[2] - text.box[0] > 0.6 * w and text.box[1] < h / 2


def test_detection_cli_writes_the_drawn_png(vision_server: KilnProcess, tmp_path: Path) -> None:
    out = run_client("detection", "-u", vision_server.http_url, "-o", str(tmp_path), "skimage:page")
    assert out.returncode == 0, out.stderr
    assert " text [" in out.stdout or " title [" in out.stdout
    drawn = load_image(tmp_path / "page_detections.png")
    page = sample("page")
    assert drawn.shape == page.shape and (drawn != page).any()


# --- segmentation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_text_mask_covers_the_text_more_than_the_background(
    vision_server: KilnProcess, protocol: str
) -> None:
    client = load_client("segmentation")
    image = sample("text")
    with remote(vision_server, protocol) as r:
        probability = client.segment(r, image)
    assert probability.shape == image.shape[:2]
    grey = image[..., 0].astype(np.float32)
    ink = grey < np.percentile(grey, 5)  # the darkest pixels: the handwriting (and some ruled lines)
    paper = grey > np.percentile(grey, 50)  # the brighter half: background
    assert probability[ink].mean() > 3 * probability[paper].mean(), (
        probability[ink].mean(),
        probability[paper].mean(),
    )


def test_segmentation_cli_writes_the_blend(vision_server: KilnProcess, tmp_path: Path) -> None:
    out = run_client(
        "segmentation", "-u", vision_server.grpc_url, "-i", "grpc", "-o", str(tmp_path), "skimage:text"
    )
    assert out.returncode == 0, out.stderr
    assert "of the pixels are text" in out.stdout
    blended = load_image(tmp_path / "text_segmentation.png")
    assert blended.shape == (*sample("text").shape[:2], 3)


# --- the server-side pipelines (ensembles) -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_side_pipelines_match_the_client_side_ones(vision_server: KilnProcess, protocol: str) -> None:
    url = vision_server.http_url if protocol == "http" else vision_server.grpc_url
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "pipelines.py"), "-i", protocol, "-u", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 6 and all(" identical: " in line for line in lines), out.stdout


def test_pipelines_take_parameters_and_refuse_what_is_not_an_image(vision_server: KilnProcess) -> None:
    detection = load_client("detection")
    with remote(vision_server, "http") as r:
        loose = detection.detect_server_side(r, "skimage:page", score_threshold=0.3)
        strict = detection.detect_server_side(r, "skimage:page", score_threshold=0.9)
        assert len(strict) < len(loose)
        assert all(d.score > 0.9 for d in strict)
        with pytest.raises(InferenceServerException, match=r"in ensemble 'classify_image', .*not an image"):
            r.infer("classify_image", {"IMAGE": np.array([[b"not an image"]], np.object_)}, ["probabilities"])
        with pytest.raises(InferenceServerException, match="'score_threshold' must be a number"):
            r.infer(
                "detect_layout", {"IMAGE": np.array([png_bytes("page")], np.object_)}, ["BOXES"],
                parameters={"score_threshold": "high"},
            )  # fmt: skip
    health = httpclient.InferenceServerClient(vision_server.http_url)
    assert health.is_server_ready()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_ensemble_answers_as_triton_s_ensemble_image_client_expects(
    vision_server: KilnProcess, protocol: str
) -> None:
    """What Triton's ``ensemble_image_client.py`` does, step by step: one input in metadata and config, the
    files' bytes as a [batch, 1] ``bytes`` array, every output asked for with ``class_count``, one row of
    ``score:index:label`` per image. (The script itself ran unchanged against this ensemble: docs/ensembles.md.)"""
    import tritonclient.grpc as grpcclient

    module: Any = httpclient if protocol == "http" else grpcclient
    url = vision_server.http_url if protocol == "http" else vision_server.grpc_url
    client = module.InferenceServerClient(url)
    metadata = client.get_model_metadata(zoo.CLASSIFY_PIPELINE)
    config = client.get_model_config(zoo.CLASSIFY_PIPELINE)
    if protocol == "grpc":
        inputs, outputs, max_batch = (
            metadata.inputs,
            [o.name for o in metadata.outputs],
            config.config.max_batch_size,
        )
        assert len(config.config.input) == 1
        name = inputs[0].name
    else:
        inputs, outputs, max_batch = (
            metadata["inputs"],
            [o["name"] for o in metadata["outputs"]],
            config["max_batch_size"],
        )
        assert len(config["input"]) == 1
        name = inputs[0]["name"]
    assert len(inputs) == 1 and max_batch >= 2
    data = np.stack([np.array([png_bytes(n)], dtype=bytes) for n in ("chelsea", "coffee")], axis=0)
    tensor = module.InferInput(name, data.shape, "BYTES")
    if protocol == "http":
        tensor.set_data_from_numpy(data, binary_data=True)
        requested = [module.InferRequestedOutput(o, binary_data=True, class_count=3) for o in outputs]
    else:
        tensor.set_data_from_numpy(data)
        requested = [module.InferRequestedOutput(o, class_count=3) for o in outputs]
    result = client.infer(zoo.CLASSIFY_PIPELINE, [tensor], outputs=requested)
    rows = result.as_numpy(outputs[0])
    assert rows.shape == (2, 3)
    cat = "".join(chr(x) for x in rows[0][0]).split(":")
    assert int(cat[1]) in (TABBY, TIGER_CAT, EGYPTIAN_CAT)
    assert rows[1][0].decode().split(":")[1:] == [str(ESPRESSO), "espresso"]


def png_bytes(name: str) -> bytes:
    from kiln.vision.images import encoded

    return encoded(f"skimage:{name}")


# --- the bundled example repository ---------------------------------------------------------------------------


def test_default_repository_serves_the_real_classifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    with KilnProcess([], log_dir=tmp_path) as server, Remote(server.http_url) as r:
        top = load_client("classification").classify(r, ["skimage:coffee"], top_k=1)
        served = load_client("classification").classify_server_side(r, ["skimage:coffee"], top_k=1)
    assert top[0][0].index == ESPRESSO == served[0][0].index
    repo = tmp_path / "cache" / "example-repository"
    assert (repo / zoo.CLASSIFIER / "labels.txt").read_text().splitlines()[ESPRESSO] == "espresso"
    assert {"add_sub", "image_classifier", "string_identity"} <= {p.name for p in repo.iterdir()}
    assert {zoo.CLASSIFY_PIPELINE, zoo.DETECT_PIPELINE, zoo.SEGMENT_PIPELINE} <= {
        p.name for p in repo.iterdir()
    }


# --- the prepare scripts and `make demo` ----------------------------------------------------------------------


def test_prepare_into_a_file_is_a_clear_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "segmentation" / "prepare.py"), str(not_a_folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_demo_prepares_serves_and_leaves_the_results(tmp_path: Path) -> None:
    ports = {
        f"DEMO_{kind}_PORT": str(p)
        for kind, p in zip(("HTTP", "GRPC", "METRICS"), free_ports(3), strict=True)
    }
    env = {**os.environ, **ports, "PY": sys.executable, "DEMO_DIR": str(tmp_path / "demo")}
    out = subprocess.run(
        ["bash", str(EXAMPLES / "demo.sh")], capture_output=True, text=True, timeout=110, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    results = (tmp_path / "demo" / "results.txt").read_text()
    assert (
        f"({ESPRESSO}) = espresso" in results and " text [" in results and "of the pixels are text" in results
    )
    for png in ("page_detections.png", "text_segmentation.png", "chelsea_classification.png"):
        assert load_image(tmp_path / "demo" / png).size > 0
    assert "shutting down" in (tmp_path / "demo" / "server.log").read_text()  # the server was stopped
