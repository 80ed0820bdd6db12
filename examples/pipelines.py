"""Compare each task's client-side pipeline with its server-side one (an ensemble) on the same images.

    python examples/pipelines.py [-i http|grpc] [-u URL] [IMAGE...]

Client-side: the client pre-processes, calls the model, post-processes. Server-side: the client sends the
encoded image and the ensemble (Python pre-/post-processing steps around the same ONNX model) does the rest.
Both call the same ``kiln.vision.tasks`` functions, so the results must agree: the same top-5 classes, the
same boxes, the same text probabilities (floats to 1e-4: a batch the server formed differently may round the
last bits differently). Prints one line per task and image; exits 1 if any result differs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from kiln.vision import read
from kiln.vision.cli import run
from kiln.vision.remote import PROTOCOLS, Remote
from kiln.vision.zoo import layout_labels

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-4
DEFAULT_IMAGES = {
    "classification": ["skimage:chelsea", "skimage:coffee", "skimage:astronaut"],
    "detection": ["skimage:page"],
    "segmentation": ["skimage:text", "skimage:page"],
}


def client(task: str) -> ModuleType:
    name = f"kiln_example_{task}_client"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / task / "client.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def compare(remote: Remote, images: dict[str, list[str]]) -> list[tuple[str, str, bool, str]]:
    """``(task, image, identical, detail)`` for every image of every task."""
    rows = []
    c = client("classification")
    local = c.classify(remote, images["classification"], top_k=5)
    served = c.classify_server_side(remote, images["classification"], top_k=5)
    for image, a, b in zip(images["classification"], local, served, strict=True):
        same = [p.index for p in a] == [p.index for p in b]
        diff = max(abs(p.score - q.score) for p, q in zip(a, b, strict=True))
        rows.append(
            (
                "classification",
                image,
                same and diff <= TOLERANCE,
                f"top-5 {a[0].label!r}..., max score diff {diff:.1e}",
            )
        )
    d = client("detection")
    labels = layout_labels()
    for image in images["detection"]:
        a = d.detect(remote, read(image), labels)
        b = d.detect_server_side(remote, image)
        same = [(x.class_id, x.label) for x in a] == [(x.class_id, x.label) for x in b]
        diff = (
            max(
                (float(np.abs(np.subtract(x.box, y.box)).max()) for x, y in zip(a, b, strict=True)),
                default=0.0,
            )
            if same
            else float("inf")
        )
        rows.append(
            (
                "detection",
                image,
                same and diff <= 1e-3,
                f"{len(a)} vs {len(b)} boxes, max box diff {diff:.1e} px",
            )
        )
    s = client("segmentation")
    for image in images["segmentation"]:
        a = s.segment(remote, read(image))
        b = s.segment_server_side(remote, image)
        diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
        rows.append(
            ("segmentation", image, diff <= TOLERANCE, f"{a.shape[1]}x{a.shape[0]} map, max diff {diff:.1e}")
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="*", help="images for every task (default: scikit-image samples per task)")
    p.add_argument("-i", "--protocol", choices=PROTOCOLS, default="http")
    p.add_argument("-u", "--url", help="server address (default 127.0.0.1:8000 for http, :8001 for grpc)")
    args = p.parse_args(argv)
    images = {task: list(args.images) for task in DEFAULT_IMAGES} if args.images else DEFAULT_IMAGES
    failed: list[str] = []

    def body() -> None:
        with Remote(args.url, args.protocol) as remote:
            for task, image, identical, detail in compare(remote, images):
                print(f"{task:15} {image:18} {'identical' if identical else 'DIFFERENT'}: {detail}")
                if not identical:
                    failed.append(f"{task} {image}")

    code = run(body)
    if failed:
        print(f"client-side and server-side results differ: {', '.join(failed)}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
