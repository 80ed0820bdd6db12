"""Classify images with a model served by ``kiln serve``, through the classification extension.

    python examples/classification/client.py [-m efficientnet_lite0] [-s INCEPTION|VGG|NONE] [-c 5] [-b 8]
        [-i http|grpc] [-u URL] [-o OUT_DIR] IMAGE...

Each IMAGE is a file, or ``skimage:NAME`` for one of scikit-image's sample images (``skimage:chelsea``).
Images are resized (short side 256) and centre-cropped to 224, scaled, batched ``-b`` at a time, and the
server's classification extension returns the top ``-c`` classes, printed as ``score (index) = label``.
With ``-o``, each image is also written there with its top classes below it (``<image>_classification.png``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.vision import Scaling, center_crop, read, save_png, scale, to_nchw
from kiln.vision.cli import client_parser, output_path, run
from kiln.vision.detection import caption
from kiln.vision.remote import Remote
from kiln.vision.zoo import CLASSIFIER, CLASSIFIER_SIZE


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
    size: int = CLASSIFIER_SIZE,
) -> list[list[Prediction]]:
    """The top-``top_k`` predictions for each image, in order."""
    if top_k < 1 or batch_size < 1:
        raise ValueError("top-k and batch size must be at least 1")
    tensors = [scale(center_crop(read(image), size), scaling) for image in images]
    results: list[list[Prediction]] = []
    for start in range(0, len(tensors), batch_size):
        batch = to_nchw(tensors[start : start + batch_size])
        out = remote.infer(model, {"input": batch}, ["probabilities"], class_count=top_k)["probabilities"]
        results += [[parse(e) for e in row] for row in out.reshape(len(batch), -1)]
    return results


def classify_and_print(args: argparse.Namespace) -> None:
    with Remote(args.url, args.protocol) as remote:
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
    return run(lambda: classify_and_print(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
