"""From an RGB image to a model's input tensor, and from the model's coordinates back to the image's."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.vision.images import ImageError, _pil, to_rgb


class Scaling(enum.Enum):
    """How pixel values are scaled, as in Triton's image_client (``-s``)."""

    INCEPTION = "INCEPTION"  # x / 127.5 - 1, i.e. (x/255 - 0.5) / 0.5: values in [-1, 1]
    VGG = "VGG"  # x - ImageNet's mean RGB (123, 117, 104)
    NONE = "NONE"  # x as float
    IMAGENET = "IMAGENET"  # (x/255 - mean) / std with ImageNet's mean and std per channel (torchvision's)


VGG_MEAN = np.array([123.0, 117.0, 104.0], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def scale(image: np.ndarray, scaling: Scaling) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> float32 scaled as ``scaling`` says."""
    x = to_rgb(image).astype(np.float32)
    if scaling is Scaling.INCEPTION:
        return x / 127.5 - 1.0
    if scaling is Scaling.VGG:
        return x - VGG_MEAN
    if scaling is Scaling.IMAGENET:
        return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return x


def to_nchw(images: Sequence[np.ndarray]) -> np.ndarray:
    """A batch of equal-sized ``(H, W, C)`` arrays as one contiguous float32 ``(N, C, H, W)`` tensor."""
    if not images:
        raise ImageError("no images to batch")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ImageError(f"images in one batch must have the same shape, got {sorted(shapes)}")
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    Image = _pil()
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Resize the short side to ``size / crop_fraction`` and cut the central ``size x size`` square: the
    usual ImageNet evaluation transform (224 from 256)."""
    image = to_rgb(image)
    h, w = image.shape[:2]
    short = round(size / crop_fraction)
    rh, rw = (short, max(size, round(w * short / h))) if h <= w else (max(size, round(h * short / w)), short)
    resized = _resize(image, rh, rw)
    top, left = (rh - size) // 2, (rw - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


@dataclass(frozen=True)
class Placement:
    """Where an image of ``source`` size (H, W) was put inside a model input of ``target`` size: scaled by
    ``scale_x``/``scale_y`` then shifted by ``pad_x``/``pad_y``. Maps model outputs back to the image."""

    source: tuple[int, int]
    target: tuple[int, int]
    scale_x: float
    scale_y: float
    pad_x: int = 0
    pad_y: int = 0

    def to_array(self) -> np.ndarray:
        """The placement as 8 float64 numbers, to travel as a tensor between the steps of a pipeline."""
        return np.array(
            [*self.source, *self.target, self.scale_x, self.scale_y, self.pad_x, self.pad_y], np.float64
        )

    @classmethod
    def from_array(cls, values: np.ndarray) -> Placement:
        v = np.asarray(values, np.float64).reshape(-1)
        if v.size != 8 or not np.isfinite(v).all():
            raise ImageError(f"a placement is 8 finite numbers, got {v.size}")
        return cls(
            (int(v[0]), int(v[1])), (int(v[2]), int(v[3])), float(v[4]), float(v[5]), int(v[6]), int(v[7])
        )

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` x1, y1, x2, y2 boxes in model coordinates -> image coordinates, clipped to the image."""
        out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.source[1])
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.source[0])
        return out

    def map_to_source(self, target_map: np.ndarray) -> np.ndarray:
        """A ``target``-sized float map (e.g. per-pixel probabilities) -> the ``source`` size: the padding is
        cut off and the rest resized back."""
        if target_map.shape[:2] != self.target:
            raise ImageError(
                f"map of shape {target_map.shape[:2]} does not match the input size {self.target}"
            )
        h = round(self.source[0] * self.scale_y)
        w = round(self.source[1] * self.scale_x)
        inner = np.ascontiguousarray(target_map[self.pad_y : self.pad_y + h, self.pad_x : self.pad_x + w])
        Image = _pil()
        resized = Image.fromarray(inner.astype(np.float32), mode="F").resize(
            (self.source[1], self.source[0]), Image.Resampling.BILINEAR
        )
        return np.asarray(resized)


def fit(
    image: np.ndarray, size: tuple[int, int], *, letterbox: bool = True, fill: int = 0
) -> tuple[np.ndarray, Placement]:
    """Resize an RGB image to ``size`` (H, W).

    ``letterbox=True`` keeps the aspect ratio and pads the rest (centred) with ``fill``; ``False`` stretches.
    Returns the ``(H, W, 3)`` uint8 image and the :class:`Placement` that maps results back.
    """
    image = to_rgb(image)
    th, tw = size
    if th <= 0 or tw <= 0:
        raise ImageError(f"target size must be positive, got {size}")
    h, w = image.shape[:2]
    if not letterbox:
        return _resize(image, th, tw), Placement((h, w), (th, tw), tw / w, th / h)
    ratio = min(th / h, tw / w)
    nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
    pad_y, pad_x = (th - nh) // 2, (tw - nw) // 2
    canvas = np.full((th, tw, 3), fill, np.uint8)
    canvas[pad_y : pad_y + nh, pad_x : pad_x + nw] = _resize(image, nh, nw)
    return canvas, Placement((h, w), (th, tw), nw / w, nh / h, pad_x, pad_y)
