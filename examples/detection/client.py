"""Detect document-layout regions (text, title, figure, table, ...) with a model served by ``kiln serve``.

    python examples/detection/client.py [-m layout_detector] [-t 0.5] [--iou 0.5] [--stretch]
        [-i http|grpc] [-u URL] [-o OUT_DIR] IMAGE...

Each IMAGE is a file or ``skimage:NAME`` (``skimage:page``). The image is letterboxed (or, with
``--stretch``, resized) to the model's 800x608 input and ImageNet-normalised; the PicoDet outputs are decoded
into boxes, filtered by score, reduced by per-class NMS, mapped back onto the original image and drawn there;
the result is written to ``OUT_DIR/<image>_detections.png`` and each box printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kiln.vision import Scaling, fit, read, save_png, scale, to_nchw
from kiln.vision.cli import client_parser, output_path, run
from kiln.vision.detection import Detection, decode_picodet, draw_detections, multiclass_nms
from kiln.vision.remote import Remote
from kiln.vision.zoo import DETECTOR, DETECTOR_SIZE, DETECTOR_STRIDES


def read_labels(path: Path | None) -> list[str]:
    """Class names from a labels file (one a line), or from the installed model's own metadata."""
    if path is not None:
        return path.read_text(encoding="utf-8").splitlines()
    from kiln.vision.zoo import layout_labels

    return layout_labels()


def detect(
    remote: Remote,
    image: np.ndarray,
    labels: list[str],
    *,
    model: str = DETECTOR,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    letterbox: bool = True,
) -> list[Detection]:
    """The detections in ``image`` (``(H, W, 3)`` uint8), best first, in the image's coordinates."""
    resized, placement = fit(image, DETECTOR_SIZE, letterbox=letterbox, fill=255)
    batch = to_nchw([scale(resized, Scaling.IMAGENET)])
    names = [f"{kind}_s{s}" for kind in ("scores", "boxes") for s in DETECTOR_STRIDES]
    out = remote.infer(model, {"image": batch}, names)
    scores = [out[f"scores_s{s}"][0] for s in DETECTOR_STRIDES]
    distributions = [out[f"boxes_s{s}"][0] for s in DETECTOR_STRIDES]
    boxes, class_scores = decode_picodet(scores, distributions, DETECTOR_SIZE, DETECTOR_STRIDES)
    if class_scores.shape[1] != len(labels):
        raise ValueError(
            f"the model scores {class_scores.shape[1]} classes but there are {len(labels)} labels"
        )
    kept = multiclass_nms(boxes, class_scores, score_threshold=score_threshold, iou_threshold=iou_threshold)
    mapped = placement.boxes_to_source(boxes[[i for i, _, _ in kept]]) if kept else np.zeros((0, 4))
    return [
        Detection(tuple(float(v) for v in box), score, c, labels[c])  # type: ignore[arg-type]
        for box, (_, score, c) in zip(mapped, kept, strict=True)
    ]


def detect_and_draw(args: argparse.Namespace) -> None:
    labels = read_labels(args.labels)
    with Remote(args.url, args.protocol) as remote:
        for name in args.images:
            image = read(name)
            found = detect(
                remote,
                image,
                labels,
                model=args.model,
                score_threshold=args.score_threshold,
                iou_threshold=args.iou,
                letterbox=not args.stretch,
            )
            path = save_png(draw_detections(image, found), output_path(args.output_dir, name, "detections"))
            print(f"Image '{name}': {len(found)} detections -> {path}")
            for d in found:
                print(f"    {d}")


def main(argv: list[str] | None = None) -> int:
    p = client_parser(__doc__.splitlines()[0], DETECTOR)
    p.add_argument("-t", "--score-threshold", type=float, default=0.5)
    p.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold")
    p.add_argument("--stretch", action="store_true", help="resize without keeping the aspect ratio")
    p.add_argument("--labels", type=Path, help="labels file (default: the installed model's class names)")
    args = p.parse_args(argv)
    return run(lambda: detect_and_draw(args))


if __name__ == "__main__":
    sys.exit(main())
