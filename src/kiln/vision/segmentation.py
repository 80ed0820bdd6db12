"""Segmentation post-processing: colour a mask and blend it over the image."""

from __future__ import annotations

import numpy as np

from kiln.vision.images import ImageError, to_rgb

# A perceptual ramp from dark blue (0) through green to yellow (1), like matplotlib's viridis at 5 stops.
RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def colourise(probabilities: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` map of values in [0, 1] (e.g. per-pixel probabilities) -> ``(H, W, 3)`` uint8 colours."""
    p = np.asarray(probabilities, np.float32)
    if p.ndim != 2:
        raise ImageError(f"expected an (H, W) probability map, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ImageError("the probability map has NaN or infinite values")
    t = np.clip(p, 0.0, 1.0) * (len(RAMP) - 1)
    lo = np.minimum(t.astype(np.int64), len(RAMP) - 2)
    frac = (t - lo)[..., None]
    return np.rint(RAMP[lo] * (1 - frac) + RAMP[lo + 1] * frac).astype(np.uint8)


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * overlay``, both ``(H, W, 3)`` uint8 of the same size."""
    image, overlay = to_rgb(image), to_rgb(overlay)
    if image.shape != overlay.shape:
        raise ImageError(f"image {image.shape} and overlay {overlay.shape} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ImageError(f"alpha must be in [0, 1], got {alpha}")
    out = image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha
    return np.rint(out).astype(np.uint8)
