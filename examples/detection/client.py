"""Detect document-layout regions (text, title, figure, table, ...) with a model served by ``kiln serve``.

    python examples/detection/client.py [-m layout_detector] [-t 0.5] [--iou 0.5] [--stretch]
        [--pipeline] [-i http|grpc] [-u URL] [-o OUT_DIR] IMAGE...

Each IMAGE is a file or ``skimage:NAME`` (``skimage:page``). The image is letterboxed (or, with
``--stretch``, resized) to the model's 800x608 input and ImageNet-normalised; the PicoDet outputs are decoded
into boxes, filtered by score, reduced by per-class NMS, mapped back onto the original image and drawn there;
the result is written to ``OUT_DIR/<image>_detections.png`` and each box printed.
With ``--pipeline``, the encoded image goes to the server-side pipeline (the ``detect_layout`` ensemble), which does
all of that in the server and returns the boxes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kiln.vision import read, save_png
from kiln.vision.cli import client_parser, output_path, parse_client_args, run
from kiln.vision.detection import Detection, draw_detections
from kiln.vision.images import encoded
from kiln.vision.remote import Remote
from kiln.vision.tasks import detection_input, detection_output
from kiln.vision.zoo import DETECT_PIPELINE, DETECTOR, DETECTOR_STRIDES


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
    batch, placement = detection_input(image, letterbox=letterbox)
    names = [f"{kind}_s{s}" for kind in ("scores", "boxes") for s in DETECTOR_STRIDES]
    out = remote.infer(model, {"image": batch}, names)
    return detection_output(out, placement, labels, score_threshold, iou_threshold)


def detect_server_side(
    remote: Remote,
    image: str,
    *,
    pipeline: str = DETECT_PIPELINE,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> list[Detection]:
    """The same, with pre- and post-processing in the server: the encoded image goes to the ``pipeline``
    ensemble, the thresholds as request parameters; boxes, scores, classes and labels come back."""
    out = remote.infer(
        pipeline,
        {"IMAGE": np.array([encoded(image)], dtype=np.object_)},
        ["BOXES", "SCORES", "CLASSES", "LABELS"],
        parameters={"score_threshold": score_threshold, "iou_threshold": iou_threshold},
    )
    return [
        Detection(tuple(float(v) for v in box), float(score), int(c), label.decode())  # type: ignore[arg-type]
        for box, score, c, label in zip(
            out["BOXES"], out["SCORES"], out["CLASSES"], out["LABELS"], strict=True
        )
    ]


def detect_and_draw(args: argparse.Namespace) -> None:
    labels = read_labels(args.labels)
    with Remote(args.url, args.protocol) as remote:
        for name in args.images:
            image = read(name)
            if args.pipeline:
                found = detect_server_side(
                    remote, name, pipeline=args.model, score_threshold=args.score_threshold,
                    iou_threshold=args.iou,
                )  # fmt: skip
            else:
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
    args = parse_client_args(p, argv, DETECTOR, DETECT_PIPELINE)
    if args.pipeline and args.stretch:
        p.error("--stretch is the client-side pre-processing's; the pipeline letterboxes")
    return run(lambda: detect_and_draw(args))


if __name__ == "__main__":
    sys.exit(main())
