"""kiln.vision.segmentation: colouring probability maps and blending."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.vision import ImageError
from kiln.vision.segmentation import RAMP, blend, colourise


def test_colourise_ramps_and_checks_its_input() -> None:
    colours = colourise(np.array([[0.0, 1.0, 2.0, -1.0]]))
    np.testing.assert_array_equal(colours[0], RAMP[[0, -1, -1, 0]].astype(np.uint8))
    with pytest.raises(ImageError, match=r"\(H, W\)"):
        colourise(np.zeros((2, 2, 2)))
    with pytest.raises(ImageError, match="NaN"):
        colourise(np.array([[np.nan]]))


def test_blend_is_half_and_half() -> None:
    a, b = np.full((2, 2, 3), 100, np.uint8), np.full((2, 2, 3), 200, np.uint8)
    assert (blend(a, b) == 150).all() and (blend(a, b, 0.0) == 100).all()
    with pytest.raises(ImageError, match="differ in size"):
        blend(a, np.zeros((3, 2, 3), np.uint8))
    with pytest.raises(ImageError, match="alpha"):
        blend(a, b, 1.5)
