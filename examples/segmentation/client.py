"""Segment text with a model served by ``kiln serve``: a per-pixel text probability, coloured and blended.

    python examples/segmentation/client.py [-m text_segmenter] [--side 736] [-i http|grpc] [-u URL]
        [-o OUT_DIR] IMAGE...

Each IMAGE is a file or ``skimage:NAME`` (``skimage:text``). The image is resized so its short side is
``--side`` (both sides rounded to multiples of 32, as the DB network needs) and INCEPTION-scaled; the returned
probability map is resized back to the image, coloured (dark blue = background, yellow = text), blended 50/50
over the image and written to ``OUT_DIR/<image>_segmentation.png``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from kiln.vision import Scaling, fit, read, save_png, scale, to_nchw
from kiln.vision.cli import client_parser, output_path, run
from kiln.vision.remote import Remote
from kiln.vision.segmentation import blend, colourise
from kiln.vision.zoo import SEGMENTER

MAX_SIDE = 2048


def input_size(height: int, width: int, side: int) -> tuple[int, int]:
    """Scale the short side to ``side`` (the long one at most ``MAX_SIDE``), both rounded to multiples of 32."""
    ratio = min(side / min(height, width), MAX_SIDE / max(height, width))
    return max(32, round(height * ratio / 32) * 32), max(32, round(width * ratio / 32) * 32)


def segment(remote: Remote, image: np.ndarray, *, model: str = SEGMENTER, side: int = 736) -> np.ndarray:
    """The probability that each pixel of ``image`` (``(H, W, 3)`` uint8) is text: ``(H, W)`` float32."""
    size = input_size(image.shape[0], image.shape[1], side)
    resized, placement = fit(image, size, letterbox=False)
    out = remote.infer(model, {"image": to_nchw([scale(resized, Scaling.INCEPTION)])}, ["probability"])
    return placement.map_to_source(out["probability"][0, 0])


def segment_and_blend(args: argparse.Namespace) -> None:
    with Remote(args.url, args.protocol) as remote:
        for name in args.images:
            image = read(name)
            probability = segment(remote, image, model=args.model, side=args.side)
            overlay = blend(image, colourise(probability))
            path = save_png(overlay, output_path(args.output_dir, name, "segmentation"))
            text = float((probability > 0.3).mean())
            print(f"Image '{name}': {text:.1%} of the pixels are text (probability > 0.3) -> {path}")


def main(argv: list[str] | None = None) -> int:
    p = client_parser(__doc__.splitlines()[0], SEGMENTER)
    p.add_argument("--side", type=int, default=736, help="short side of the model input (PP-OCR's 736)")
    args = p.parse_args(argv)
    if args.side < 32:
        p.error("--side must be at least 32")
    return run(lambda: segment_and_blend(args))


if __name__ == "__main__":
    sys.exit(main())
