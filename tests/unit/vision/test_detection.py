"""kiln.vision.detection: PicoDet decoding, NMS and drawing."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.vision.detection import Detection, decode_picodet, draw_detections, iou, multiclass_nms, nms


def test_decode_picodet_finds_the_encoded_box() -> None:
    """One cell of the stride-8 level of a 16x16 input, with all probability on bin 2 for each side, is a box
    of center +- 2*8 pixels; its class scores come along."""
    bins, classes = 8, 3
    dist = np.full((4, 4 * bins), -50.0, np.float32)  # 2x2 cells at stride 8
    dist[3].reshape(4, bins)[:, 2] = 50.0  # cell (1, 1), center (12, 12)
    scores = np.zeros((4, classes), np.float32)
    scores[3] = [0.1, 0.9, 0.2]
    tiny = [np.zeros((1, classes), np.float32)], [np.zeros((1, 4 * bins), np.float32)]
    boxes, out_scores = decode_picodet([scores, *tiny[0]], [dist, *tiny[1]], (16, 16), strides=(8, 16))
    np.testing.assert_allclose(boxes[3], [12 - 16, 12 - 16, 12 + 16, 12 + 16], atol=1e-4)
    np.testing.assert_allclose(out_scores[3], [0.1, 0.9, 0.2])
    assert boxes.shape == (5, 4)
    with pytest.raises(ValueError, match="expected 4 cells"):
        decode_picodet([scores[:3], *tiny[0]], [dist[:3], *tiny[1]], (16, 16), strides=(8, 16))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.8, 0.9, 0.5, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 0, 3, 2]
    assert iou(boxes[0], boxes[2:3])[0] == 0.0


def test_multiclass_nms_is_per_class_and_thresholded() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9, 0.0], [0.0, 0.8], [0.3, 0.0]], np.float32)
    # same box, different classes: both kept; the third is under the threshold
    assert multiclass_nms(boxes, scores, score_threshold=0.5) == [
        (0, pytest.approx(0.9), 0),
        (1, pytest.approx(0.8), 1),
    ]
    assert len(multiclass_nms(boxes, scores, score_threshold=0.5, max_detections=1)) == 1


def test_draw_detections_draws_inside_a_copy() -> None:
    pytest.importorskip("PIL", reason="drawing needs Pillow: pip install 'kiln[examples]'")
    image = np.zeros((60, 80, 3), np.uint8)
    drawn = draw_detections(image, [Detection((10, 20, 50, 40), 0.9, 0, "text")])
    assert image.max() == 0 and drawn.shape == image.shape
    assert drawn[30, 10].any() and not drawn[30, 30].any()  # the left edge is drawn, the inside is not
    assert str(Detection((1.4, 2, 3, 4), 0.5, 1, "title")) == "0.500 title [1, 2, 3, 4]"
