"""The three example tasks' pre- and post-processing, in one place: the example clients call these functions
around a model call, and the server-side pipeline steps (:mod:`kiln.vision.steps`) call the very same ones,
so a client-side and a server-side pipeline give identical results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kiln.vision.detection import Detection, decode_picodet, multiclass_nms
from kiln.vision.preprocess import Placement, Scaling, center_crop, fit, scale, to_nchw
from kiln.vision.zoo import CLASSIFIER_SIZE, DETECTOR_SIZE, DETECTOR_STRIDES

SEGMENTER_SIDE = 736  # PP-OCR's short side
SEGMENTER_MAX_SIDE = 2048
TEXT_THRESHOLD = 0.3  # a pixel is text when its probability is above this


def classification_input(image: np.ndarray, scaling: Scaling = Scaling.INCEPTION) -> np.ndarray:
    """An RGB image -> the classifier's ``(3, 224, 224)`` float32 input: short side 256, centre crop, scaled."""
    return to_nchw([scale(center_crop(image, CLASSIFIER_SIZE), scaling)])[0]


def detection_input(image: np.ndarray, letterbox: bool = True) -> tuple[np.ndarray, Placement]:
    """An RGB image -> the detector's ``(1, 3, 800, 608)`` input (letterboxed on white, ImageNet-normalised)
    and where the image went in it."""
    resized, placement = fit(image, DETECTOR_SIZE, letterbox=letterbox, fill=255)
    return to_nchw([scale(resized, Scaling.IMAGENET)]), placement


def detection_output(
    outputs: Mapping[str, np.ndarray],
    placement: Placement,
    labels: Sequence[str],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> list[Detection]:
    """The detector's per-level outputs (``scores_s8`` ... ``boxes_s64``, batch of one) -> detections in the
    image's coordinates, best first, after per-class NMS."""
    scores = [outputs[f"scores_s{s}"][0] for s in DETECTOR_STRIDES]
    distributions = [outputs[f"boxes_s{s}"][0] for s in DETECTOR_STRIDES]
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


def segmentation_size(height: int, width: int, side: int = SEGMENTER_SIDE) -> tuple[int, int]:
    """Scale the short side to ``side`` (the long one at most 2048), both rounded to multiples of 32."""
    ratio = min(side / min(height, width), SEGMENTER_MAX_SIDE / max(height, width))
    return max(32, round(height * ratio / 32) * 32), max(32, round(width * ratio / 32) * 32)


def segmentation_input(image: np.ndarray, side: int = SEGMENTER_SIDE) -> tuple[np.ndarray, Placement]:
    """An RGB image -> the text segmenter's ``(1, 3, H, W)`` input (stretched to multiples of 32, scaled)."""
    resized, placement = fit(image, segmentation_size(image.shape[0], image.shape[1], side), letterbox=False)
    return to_nchw([scale(resized, Scaling.INCEPTION)]), placement


def segmentation_output(probability: np.ndarray, placement: Placement) -> np.ndarray:
    """The segmenter's ``(1, 1, H, W)`` probability map -> one per pixel of the original image."""
    return placement.map_to_source(np.asarray(probability, np.float32).reshape(placement.target))
