"""Tests for ``grounded_seg.annotate``: what is drawn where, and which kind of image comes back."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from grounded_seg import annotate

H, W = 60, 80
BOX = (20, 30, 60, 55)  # x1, y1, x2, y2; the mask fills exactly this rectangle

# Well inside the mask: away from the 2 px box outline and from the label above the box.
INSIDE = (slice(35, 50), slice(25, 55))
# Far from box, mask and label (the label sits above the box's top-left corner).
FAR = [(slice(57, 60), slice(0, 80)), (slice(0, 60), slice(0, 15)), (slice(32, 57), slice(66, 80))]


def _image() -> np.ndarray:
    """A 60 x 80 RGB image with a gradient, so that every pixel is not the same."""
    rows = np.arange(H, dtype=np.uint8)[:, None]
    cols = np.arange(W, dtype=np.uint8)[None, :]
    image = np.empty((H, W, 3), np.uint8)
    image[..., 0] = 40 + rows
    image[..., 1] = 90 + cols
    image[..., 2] = 200 - rows
    return image


def _detections(mask_shape: tuple[int, int] = (H, W)) -> sv.Detections:
    x1, y1, x2, y2 = BOX
    mask = np.zeros((1, *mask_shape), bool)
    mask[0, y1:y2, x1:x2] = True
    return sv.Detections(
        xyxy=np.array([BOX], np.float32),
        mask=mask,
        confidence=np.array([0.9], np.float32),
        class_id=np.array([0]),
        data={"class_name": np.array(["cat"])},
    )


def test_array_in_array_out_draws_inside_only():
    image = _image()
    before = image.copy()
    out = annotate(image, _detections())
    assert isinstance(out, np.ndarray)
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    assert out is not image
    # Every pixel inside the mask is tinted.
    assert (out[INSIDE] != image[INSIDE]).any(axis=-1).all()
    # Pixels far from what is drawn are untouched.
    for region in FAR:
        np.testing.assert_array_equal(out[region], image[region])
    # The caller's array is not modified.
    np.testing.assert_array_equal(image, before)


def test_box_outline_is_drawn():
    image = _image()
    out = annotate(image, _detections())
    x1, _y1, x2, y2 = BOX
    bottom_edge = (slice(y2 - 1, y2 + 1), slice(x1 + 5, x2 - 5))
    assert (out[bottom_edge] != image[bottom_edge]).any(axis=-1).all()


def test_bgr_output_is_the_rgb_output_reversed():
    image = _image()
    rgb_out = annotate(image, _detections())
    bgr_in = np.ascontiguousarray(image[..., ::-1])
    bgr_before = bgr_in.copy()
    bgr_out = annotate(bgr_in, _detections(), image_format="BGR")
    assert isinstance(bgr_out, np.ndarray)
    assert bgr_out.shape == (H, W, 3) and bgr_out.dtype == np.uint8
    np.testing.assert_array_equal(bgr_out, rgb_out[..., ::-1])
    np.testing.assert_array_equal(bgr_in, bgr_before)


def test_pil_in_pil_out():
    image = _image()
    pil = Image.fromarray(image)
    out = annotate(pil, _detections())
    assert isinstance(out, Image.Image)
    assert out.mode == "RGB"
    assert out.size == (W, H)
    np.testing.assert_array_equal(np.asarray(out), annotate(image, _detections()))
    np.testing.assert_array_equal(np.asarray(pil), image)  # the caller's image is kept


def test_path_in_pil_out(tmp_path):
    image = _image()
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    before = path.read_bytes()
    for given in (path, str(path)):
        out = annotate(given, _detections())
        assert isinstance(out, Image.Image)
        assert out.mode == "RGB"
        assert out.size == (W, H)
        np.testing.assert_array_equal(np.asarray(out), annotate(image, _detections()))
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["array", "bgr-array", "pil"])
def test_empty_detections_leave_the_image_as_is(kind):
    image = _image()
    if kind == "array":
        out = annotate(image, sv.Detections.empty())
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, image)
    elif kind == "bgr-array":
        bgr = np.ascontiguousarray(image[..., ::-1])
        out = annotate(bgr, sv.Detections.empty(), image_format="BGR")
        np.testing.assert_array_equal(out, bgr)
    else:
        out = annotate(Image.fromarray(image), sv.Detections.empty())
        assert isinstance(out, Image.Image)
        np.testing.assert_array_equal(np.asarray(out), image)


def test_masks_of_the_wrong_size_are_refused():
    image = _image()
    with pytest.raises(ValueError, match=r"\(60, 80\)"):
        annotate(image, _detections(mask_shape=(H, W + 1)))
