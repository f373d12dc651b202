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


def _one(name: str, class_id: int, box, size=(128, 128), mask: bool = False) -> sv.Detections:
    height, width = size
    masks = None
    if mask:
        masks = np.zeros((1, height, width), bool)
        x1, y1, x2, y2 = (int(v) for v in box)
        masks[0, y1:y2, x1:x2] = True
    return sv.Detections(
        xyxy=np.array([box], np.float32),
        mask=masks,
        confidence=np.array([0.9], np.float32),
        class_id=np.array([class_id]),
        data={"class_name": np.array([name])},
    )


def _box_edge_colour(image: np.ndarray, box) -> np.ndarray:
    x1, y1, _, y2 = (int(v) for v in box)
    return image[(y1 + y2) // 2, x1].astype(int)  # the middle of the left edge


@pytest.mark.parametrize(("name", "channel"), [("blue square", 2), ("red circle", 0)])
def test_a_class_that_names_a_colour_is_drawn_in_it(name, channel):
    canvas = np.full((128, 128, 3), 128, np.uint8)
    box = (40, 60, 90, 110)
    for class_id in (0, 3):  # whatever its place in the prompt
        edge = _box_edge_colour(annotate(canvas, _one(name, class_id, box)), box)
        assert edge[channel] == edge.max() and edge[channel] - np.sort(edge)[1] > 100, edge


def test_a_class_keeps_its_colour_across_prompts():
    canvas = np.full((128, 128, 3), 128, np.uint8)
    box = (40, 60, 90, 110)
    first = _box_edge_colour(annotate(canvas, _one("potted plant", 0, box)), box)
    again = _box_edge_colour(annotate(canvas, _one("potted plant", 5, box)), box)
    np.testing.assert_array_equal(first, again)


def test_lines_and_labels_scale_with_the_image():
    small = annotate(np.zeros((128, 128, 3), np.uint8), _one("cat", 0, (30, 40, 100, 120)))
    big_box = (1500, 2000, 4500, 3900)
    big = annotate(np.zeros((4000, 6000, 3), np.uint8), _one("cat", 0, big_box, (4000, 6000)))
    small_line = int((small[80, 25:40].sum(axis=1) > 0).sum())
    big_line = int((big[3000, 1450:1600].sum(axis=1) > 0).sum())
    assert small_line <= 3 and big_line >= 3 * small_line, (small_line, big_line)
    # the label above the box: taller text on the big image
    small_label = int((small[:40, 35].sum(axis=1) > 0).sum())  # just right of the box's left
    big_label = int((big[:2000, 1520].sum(axis=1) > 0).sum())
    assert big_label > 5 * small_label, (small_label, big_label)


def test_a_label_at_the_top_edge_stays_inside_the_image():
    canvas = np.zeros((128, 128, 3), np.uint8)
    drawn = annotate(canvas, _one("cat", 0, (10, 0, 60, 40)))
    assert drawn[0:3, 10:40].any()  # the label is drawn inside the image, not cut away above
