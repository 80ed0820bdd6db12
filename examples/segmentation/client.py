"""Segment text with a model served by ``kiln serve``: a per-pixel text probability, coloured and blended.

    python examples/segmentation/client.py [-m text_segmenter] [--side 736] [--pipeline]
        [-i http|grpc] [-u URL] [-o OUT_DIR] IMAGE...

Each IMAGE is a file or ``skimage:NAME`` (``skimage:text``). The image is resized so its short side is
``--side`` (both sides rounded to multiples of 32, as the DB network needs) and INCEPTION-scaled; the returned
probability map is resized back to the image, coloured (dark blue = background, yellow = text), blended 50/50
over the image and written to ``OUT_DIR/<image>_segmentation.png``. With ``--pipeline``, the encoded image goes
to the server-side pipeline (the ``segment_text`` ensemble), which does the resizing, scaling and mapping back.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from kiln.vision import read, save_png
from kiln.vision.cli import client_parser, output_path, parse_client_args, run
from kiln.vision.images import encoded
from kiln.vision.remote import Remote
from kiln.vision.segmentation import blend, colourise
from kiln.vision.tasks import SEGMENTER_SIDE, TEXT_THRESHOLD, segmentation_input, segmentation_output
from kiln.vision.zoo import SEGMENT_PIPELINE, SEGMENTER


def segment(
    remote: Remote, image: np.ndarray, *, model: str = SEGMENTER, side: int = SEGMENTER_SIDE
) -> np.ndarray:
    """The probability that each pixel of ``image`` (``(H, W, 3)`` uint8) is text: ``(H, W)`` float32."""
    batch, placement = segmentation_input(image, side)
    out = remote.infer(model, {"image": batch}, ["probability"])
    return segmentation_output(out["probability"], placement)


def segment_server_side(remote: Remote, image: str, *, pipeline: str = SEGMENT_PIPELINE) -> np.ndarray:
    """The same, with pre- and post-processing in the server: the encoded image goes to the ``pipeline``
    ensemble, the per-pixel probability comes back at the image's size."""
    data = np.array([encoded(image)], dtype=np.object_)
    return remote.infer(pipeline, {"IMAGE": data}, ["PROBABILITY"])["PROBABILITY"]


def segment_and_blend(args: argparse.Namespace) -> None:
    with Remote(args.url, args.protocol) as remote:
        for name in args.images:
            image = read(name)
            if args.pipeline:
                probability = segment_server_side(remote, name, pipeline=args.model)
            else:
                probability = segment(remote, image, model=args.model, side=args.side)
            overlay = blend(image, colourise(probability))
            path = save_png(overlay, output_path(args.output_dir, name, "segmentation"))
            text = float((probability > TEXT_THRESHOLD).mean())
            print(
                f"Image '{name}': {text:.1%} of the pixels are text (probability > {TEXT_THRESHOLD}) -> {path}"
            )


def main(argv: list[str] | None = None) -> int:
    p = client_parser(__doc__.splitlines()[0], SEGMENTER)
    p.add_argument(
        "--side", type=int, default=SEGMENTER_SIDE, help="short side of the model input (PP-OCR's 736)"
    )
    args = parse_client_args(p, argv, SEGMENTER, SEGMENT_PIPELINE)
    if args.side < 32:
        p.error("--side must be at least 32")
    if args.pipeline and args.side != SEGMENTER_SIDE:
        p.error(f"--side is the client-side pre-processing's; the pipeline uses {SEGMENTER_SIDE}")
    return run(lambda: segment_and_blend(args))


if __name__ == "__main__":
    sys.exit(main())
