"""Classify images with a model served by ``kiln serve``, through the classification extension.

    python examples/classification/client.py [-m efficientnet_lite0] [-s INCEPTION|VGG|NONE] [-c 5] [-b 8]
        [--pipeline] [-i http|grpc] [-u URL] [-o OUT_DIR] IMAGE...

Each IMAGE is a file, or ``skimage:NAME`` for one of scikit-image's sample images (``skimage:chelsea``).
Images are resized (short side 256) and centre-cropped to 224, scaled, batched ``-b`` at a time, and the
server's classification extension returns the top ``-c`` classes, printed as ``score (index) = label``.
With ``--pipeline``, the client sends the encoded images as they are and the server-side pipeline (the
``classify_image`` ensemble) does the pre-processing. With ``-o``, each image is also written there with its
top classes below it (``<image>_classification.png``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.vision import Scaling, read, save_png
from kiln.vision.cli import client_parser, output_path, parse_client_args, run
from kiln.vision.detection import caption
from kiln.vision.images import encoded
from kiln.vision.remote import Remote
from kiln.vision.tasks import classification_input
from kiln.vision.zoo import CLASSIFIER, CLASSIFY_PIPELINE


@dataclass(frozen=True)
class Prediction:
    score: float
    index: int
    label: str

    def __str__(self) -> str:
        return f"{self.score:f} ({self.index}) = {self.label}"


def parse(entry: bytes) -> Prediction:
    """One ``score:index:label`` string of the classification extension."""
    score, index, label = entry.decode().split(":", 2)
    return Prediction(float(score), int(index), label)


def classify(
    remote: Remote,
    images: Sequence[str],
    *,
    model: str = CLASSIFIER,
    scaling: Scaling = Scaling.INCEPTION,
    top_k: int = 5,
    batch_size: int = 8,
) -> list[list[Prediction]]:
    """The top-``top_k`` predictions for each image, in order: pre-processed here, classified by ``model``."""
    if top_k < 1 or batch_size < 1:
        raise ValueError("top-k and batch size must be at least 1")
    tensors = [classification_input(read(image), scaling) for image in images]
    results: list[list[Prediction]] = []
    for start in range(0, len(tensors), batch_size):
        batch = np.stack(tensors[start : start + batch_size])
        out = remote.infer(model, {"input": batch}, ["probabilities"], class_count=top_k)["probabilities"]
        results += [[parse(e) for e in row] for row in out.reshape(len(batch), -1)]
    return results


def classify_server_side(
    remote: Remote,
    images: Sequence[str],
    *,
    pipeline: str = CLASSIFY_PIPELINE,
    top_k: int = 5,
    batch_size: int = 8,
) -> list[list[Prediction]]:
    """The same, with the pre-processing in the server: each request carries the encoded images
    (``IMAGE`` [batch, 1] BYTES) to the ``pipeline`` ensemble."""
    if top_k < 1 or batch_size < 1:
        raise ValueError("top-k and batch size must be at least 1")
    results: list[list[Prediction]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        data = np.array([[encoded(image)] for image in chunk], dtype=np.object_)
        out = remote.infer(pipeline, {"IMAGE": data}, ["probabilities"], class_count=top_k)["probabilities"]
        results += [[parse(e) for e in row] for row in out.reshape(len(chunk), -1)]
    return results


def classify_and_print(args: argparse.Namespace) -> None:
    with Remote(args.url, args.protocol) as remote:
        if args.pipeline:
            results = classify_server_side(
                remote, args.images, pipeline=args.model, top_k=args.classes, batch_size=args.batch_size
            )
        else:
            results = classify(
                remote,
                args.images,
                model=args.model,
                scaling=Scaling(args.scaling),
                top_k=args.classes,
                batch_size=args.batch_size,
            )
    for image, predictions in zip(args.images, results, strict=True):
        print(f"Image '{image}':")
        for prediction in predictions:
            print(f"    {prediction}")
        if args.output_dir is not None:
            lines = [f"{q.score:.3f}  {q.label}" for q in predictions]
            save_png(caption(read(image), lines), output_path(args.output_dir, image, "classification"))


def main(argv: list[str] | None = None) -> int:
    p = client_parser(__doc__.splitlines()[0], CLASSIFIER, output_dir=None)
    p.add_argument("-s", "--scaling", type=str.upper, choices=[s.value for s in Scaling], default="INCEPTION")
    p.add_argument("-c", "--classes", type=int, default=5, help="how many top classes to return")
    p.add_argument("-b", "--batch-size", type=int, default=8, help="images per request")
    args = parse_client_args(p, argv, CLASSIFIER, CLASSIFY_PIPELINE)
    return run(lambda: classify_and_print(args))


if __name__ == "__main__":
    sys.exit(main())
