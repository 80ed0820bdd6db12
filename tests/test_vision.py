"""kiln.vision on its own: image loading and its errors, scaling, letterbox/resize and mapping back, PicoDet
decoding, NMS, colouring and blending, PNG writing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="kiln.vision needs Pillow: pip install 'kiln[examples]'")
from PIL import Image

from kiln.errors import ErrorCode
from kiln.vision import ImageError, Scaling, center_crop, fit, load_image, save_png, scale, to_nchw, to_rgb
from kiln.vision.detection import Detection, decode_picodet, draw_detections, iou, multiclass_nms, nms
from kiln.vision.segmentation import RAMP, blend, colourise


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


NOISE_PNG = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data): enough to test the size check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- loading and its errors -------------------------------------------------------------------------------


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


# --- scaling and resizing ----------------------------------------------------------------------------------


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


# --- detection -----------------------------------------------------------------------------------------------


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
    image = np.zeros((60, 80, 3), np.uint8)
    drawn = draw_detections(image, [Detection((10, 20, 50, 40), 0.9, 0, "text")])
    assert image.max() == 0 and drawn.shape == image.shape
    assert drawn[30, 10].any() and not drawn[30, 30].any()  # the left edge is drawn, the inside is not
    assert str(Detection((1.4, 2, 3, 4), 0.5, 1, "title")) == "0.500 title [1, 2, 3, 4]"


# --- segmentation --------------------------------------------------------------------------------------------


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
