"""kiln.vision.images: loading images and its errors, and conversion to RGB."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="kiln.vision needs Pillow: pip install 'kiln[examples]'")
from PIL import Image

from images import png_header_only
from kiln.errors import ErrorCode
from kiln.vision import ImageError, load_image, save_png, to_rgb


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


NOISE_PNG = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_load_round_trips_a_png(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = save_png(image, tmp_path / "sub" / "x.png")
    np.testing.assert_array_equal(load_image(path), image)
    np.testing.assert_array_equal(load_image(path.read_bytes()), image)


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tmp_path / "g.png").write_bytes(png_bytes(grey))
    rgb = load_image(tmp_path / "g.png")
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == grey).all() and (rgb[..., 2] == grey).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1] = 200
    assert to_rgb(rgba).shape == (2, 2, 3) and (to_rgb(rgba)[..., 1] == 200).all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"this is plain text, not a picture\n", "is not an image"),
        (NOISE_PNG[: len(NOISE_PNG) // 2], "truncated or corrupt"),
    ],
    ids=["empty", "not-an-image", "truncated"],
)
def test_bad_files_get_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as err:
        load_image(path)
    assert err.value.code is ErrorCode.INVALID_ARGUMENT and str(path) in err.value.message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_huge_dimensions_are_refused_before_decoding() -> None:
    with pytest.raises(ImageError, match=r"too large: .*10000000000 pixels"):  # Pillow's bomb check first
        load_image(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match="too large: 9000x6000 = 54000000 pixels; the limit is 50000000"):
        load_image(png_header_only(9000, 6000))
    with pytest.raises(ImageError, match="the limit is 100 pixels"):
        load_image(png_bytes(np.zeros((20, 20, 3), np.uint8)), max_pixels=100)


def test_bad_arrays_are_refused() -> None:
    with pytest.raises(ImageError, match="uint8"):
        to_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match="shape"):
        to_rgb(np.zeros((4, 4, 2), np.uint8))
