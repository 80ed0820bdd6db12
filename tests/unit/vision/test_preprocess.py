"""kiln.vision.preprocess: scaling, batching, centre crop, letterbox/stretch and mapping results back."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL", reason="kiln.vision needs Pillow: pip install 'kiln[examples]'")

from kiln.vision import ImageError, Scaling, center_crop, fit, scale, to_nchw


def test_scalings() -> None:
    image = np.array([[[0, 127, 255]]], np.uint8)
    np.testing.assert_allclose(scale(image, Scaling.INCEPTION), [[[-1.0, 127 / 127.5 - 1, 1.0]]])
    np.testing.assert_allclose(scale(image, Scaling.VGG), [[[-123.0, 10.0, 151.0]]])
    np.testing.assert_allclose(scale(image, Scaling.NONE), [[[0.0, 127.0, 255.0]]])
    imagenet = scale(image, Scaling.IMAGENET)
    np.testing.assert_allclose(imagenet[0, 0, 0], (0 - 0.485) / 0.229, rtol=1e-6)
    assert all(s.dtype == np.float32 for s in (scale(image, x) for x in Scaling))


def test_to_nchw_batches_and_refuses_mixed_sizes() -> None:
    a, b = np.zeros((4, 6, 3), np.float32), np.ones((4, 6, 3), np.float32)
    batch = to_nchw([a, b])
    assert batch.shape == (2, 3, 4, 6) and batch[1].min() == 1 and batch.flags.c_contiguous
    with pytest.raises(ImageError, match="same shape"):
        to_nchw([a, np.zeros((5, 6, 3), np.float32)])


def test_center_crop_keeps_the_middle() -> None:
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255  # a white middle third
    crop = center_crop(image, 32, crop_fraction=1.0)
    assert crop.shape == (32, 32, 3) and crop[:, 1:-1].min() == 255  # only the middle (edges interpolated)


def test_letterbox_pads_and_maps_boxes_back() -> None:
    image = np.full((100, 200, 3), 50, np.uint8)
    out, placement = fit(image, (400, 400), fill=255)
    assert out.shape == (400, 400, 3)
    assert (placement.scale_x, placement.scale_y, placement.pad_x, placement.pad_y) == (2.0, 2.0, 0, 100)
    assert (out[:100] == 255).all() and (out[300:] == 255).all() and (out[100:300] == 50).all()
    # the whole image region in model coordinates maps back to the whole image, and outside is clipped
    back = placement.boxes_to_source(np.array([[0, 100, 400, 300], [-50, 0, 100, 120]]))
    np.testing.assert_allclose(back, [[0, 0, 200, 100], [0, 0, 50, 10]])


def test_stretch_maps_boxes_back() -> None:
    out, placement = fit(np.zeros((50, 100, 3), np.uint8), (200, 100), letterbox=False)
    assert out.shape == (200, 100, 3) and (placement.scale_x, placement.scale_y) == (1.0, 4.0)
    np.testing.assert_allclose(placement.boxes_to_source(np.array([[10, 40, 20, 80]])), [[10, 10, 20, 20]])


def test_map_to_source_cuts_the_padding() -> None:
    _, placement = fit(np.zeros((100, 200, 3), np.uint8), (400, 400))
    model_map = np.zeros((400, 400), np.float32)
    model_map[100:300, :200] = 1.0  # the left half of the image region
    back = placement.map_to_source(model_map)
    assert back.shape == (100, 200)
    assert back[:, :95].min() > 0.99 and back[:, 105:].max() < 0.01
    with pytest.raises(ImageError, match="does not match"):
        placement.map_to_source(np.zeros((10, 10), np.float32))
