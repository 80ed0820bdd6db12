"""Object detection post-processing: PicoDet/GFL box decoding, non-maximum suppression, drawing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kiln.vision.images import ImageError, _pil, to_rgb

PICODET_STRIDES = (8, 16, 32, 64)


@dataclass(frozen=True)
class Detection:
    """One box in image coordinates (x1, y1, x2, y2), its score and class."""

    box: tuple[float, float, float, float]
    score: float
    class_id: int
    label: str

    def __str__(self) -> str:
        x1, y1, x2, y2 = (round(v) for v in self.box)
        return f"{self.score:.3f} {self.label} [{x1}, {y1}, {x2}, {y2}]"


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def decode_picodet(
    scores: Sequence[np.ndarray],
    distributions: Sequence[np.ndarray],
    input_size: tuple[int, int],
    strides: Sequence[int] = PICODET_STRIDES,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image's PicoDet (GFL) head outputs.

    ``scores[i]`` is ``(cells_i, classes)`` and ``distributions[i]`` is ``(cells_i, 4 * (reg_max + 1))`` for the
    level of stride ``strides[i]``, cells in row-major order over an ``input_size`` (H, W) input. Each side's
    distance is the expectation of a softmax over ``reg_max + 1`` bins, times the stride. Returns ``(N, 4)``
    x1, y1, x2, y2 boxes in input coordinates and their ``(N, classes)`` scores.
    """
    if not (len(scores) == len(distributions) == len(strides)):
        raise ValueError(f"expected {len(strides)} levels of scores and distributions")
    all_boxes, all_scores = [], []
    for score, dist, stride in zip(scores, distributions, strides, strict=True):
        fh, fw = -(-input_size[0] // stride), -(-input_size[1] // stride)
        if score.shape[0] != fh * fw or dist.shape[0] != fh * fw or dist.shape[1] % 4:
            raise ValueError(
                f"stride {stride}: expected {fh * fw} cells, got scores {score.shape} and boxes {dist.shape}"
            )
        bins = dist.shape[1] // 4
        distance = (_softmax(dist.reshape(-1, 4, bins), axis=2) * np.arange(bins)).sum(axis=2) * stride
        ys, xs = np.mgrid[0:fh, 0:fw]
        cx, cy = (xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride
        centers = np.stack([cx, cy, cx, cy], axis=1)
        all_boxes.append(centers + distance * np.array([-1, -1, 1, 1]))
        all_scores.append(score)
    return np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_scores).astype(np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x1, y1, x2, y2 box with each of ``boxes``."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression; the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = order[iou(boxes[best], boxes[order]) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def multiclass_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> list[tuple[int, float, int]]:
    """NMS per class over ``(N, 4)`` boxes with ``(N, classes)`` scores; ``(box index, score, class)`` triples,
    best first, at most ``max_detections``."""
    found: list[tuple[int, float, int]] = []
    for c in range(scores.shape[1]):
        idx = np.flatnonzero(scores[:, c] > score_threshold)
        for k in nms(boxes[idx], scores[idx, c], iou_threshold):
            found.append((int(idx[k]), float(scores[idx[k], c]), c))
    found.sort(key=lambda t: -t[1])
    return found[:max_detections]


PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [128, 128, 0], [0, 128, 128], [170, 110, 40]],
    np.uint8,
)  # fmt: skip


def caption(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``image`` with a dark strip below it holding ``lines`` of text (e.g. a classifier's top-k)."""
    Image = _pil()
    from PIL import ImageDraw

    image = to_rgb(image)
    line_height = 14
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + line_height * len(lines) + 8), (24, 24, 24))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((6, image.shape[0] + 4 + i * line_height), line, fill=(240, 240, 240))
    return np.asarray(canvas)


def draw_detections(image: np.ndarray, detections: Sequence[Detection], width: int = 2) -> np.ndarray:
    """A copy of ``image`` with each detection drawn as a coloured box labelled ``label score``."""
    Image = _pil()
    from PIL import ImageDraw

    canvas = Image.fromarray(to_rgb(image))
    draw = ImageDraw.Draw(canvas)
    for d in detections:
        if not all(np.isfinite(d.box)):
            raise ImageError(f"box {d.box} is not finite")
        colour = tuple(int(v) for v in PALETTE[d.class_id % len(PALETTE)])
        x1, y1, x2, y2 = d.box
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{d.label} {d.score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 2, ty + bottom - top + 2], fill=colour)
        draw.text((x1 + 1, ty), text, fill=(255, 255, 255))
    return np.asarray(canvas)
