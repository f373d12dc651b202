"""The shapes world: deterministic scenes whose boxes, masks and phrases are exactly right."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from grounded_seg.shapes import (
    COLORS,
    HELD_OUT_SEEDS,
    PHRASES,
    TRAIN_SEEDS,
    export_coco,
    make_scene,
    rle_decode,
    rle_encode,
)


def test_phrases_and_splits():
    assert len(PHRASES) == 20 and PHRASES[0] == "red circle" and PHRASES[-1] == "purple star"
    assert TRAIN_SEEDS.stop <= HELD_OUT_SEEDS.start


def test_scenes_are_deterministic_and_differ_by_seed():
    a, b = make_scene(11), make_scene(11)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.phrases == b.phrases
    assert not np.array_equal(make_scene(12).image, a.image)


@pytest.mark.parametrize("seed", range(40))
def test_objects_are_exact(seed):
    scene = make_scene(seed)
    assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
    assert 1 <= len(scene.objects) <= 4
    union = np.zeros((128, 128), int)
    for obj in scene.objects:
        assert obj.phrase == f"{obj.color} {obj.shape}" and obj.phrase in PHRASES
        ys, xs = np.nonzero(obj.mask)
        # the box is the mask's tight box, x2/y2 exclusive
        np.testing.assert_array_equal(obj.box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        # the mask's pixels carry the shape's colour: closest to its palette entry
        mean = scene.image[obj.mask].mean(axis=0)
        nearest = min(COLORS, key=lambda c: np.abs(np.array(COLORS[c]) - mean).sum())
        assert nearest == obj.color
        union += obj.mask
    assert union.max() <= 1  # shapes never overlap
    background = scene.image[union == 0].astype(int)
    assert np.abs(background[:, 0] - background[:, 2]).mean() < 3  # grey: R ~ B


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_rle_round_trip(seed):
    for obj in make_scene(seed).objects:
        rle = rle_encode(obj.mask)
        assert sum(rle["counts"]) == 128 * 128 and rle["size"] == [128, 128]
        np.testing.assert_array_equal(rle_decode(rle), obj.mask)


def test_rle_known_answer():
    mask = np.array([[0, 1], [1, 1], [0, 0]], bool)  # column-major: 0 1 0 | 1 1 0
    assert rle_encode(mask)["counts"] == [1, 1, 1, 2, 1]
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_export_coco(tmp_path):
    path = export_coco(range(3), tmp_path / "coco")
    data = json.loads(path.read_text())
    assert [c["name"] for c in data["categories"]] == list(PHRASES)
    assert [c["id"] for c in data["categories"]] == list(range(1, 21))
    assert [img["id"] for img in data["images"]] == [0, 1, 2]
    for seed in range(3):
        scene = make_scene(seed)
        image = np.asarray(Image.open(tmp_path / "coco" / "images" / f"{seed:07d}.png"))
        np.testing.assert_array_equal(image, scene.image)
        rows = [a for a in data["annotations"] if a["image_id"] == seed]
        assert len(rows) == len(scene.objects)
        for row, obj in zip(rows, scene.objects, strict=True):
            assert data["categories"][row["category_id"] - 1]["name"] == obj.phrase
            x1, y1, x2, y2 = obj.box.tolist()
            assert row["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert row["area"] == int(obj.mask.sum())
            np.testing.assert_array_equal(rle_decode(row["segmentation"]), obj.mask)
    with pytest.raises(FileExistsError, match="exists"):
        export_coco(range(1), tmp_path / "coco")


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        make_scene(seed)


def test_scene_with_given_phrases():
    scene = make_scene(21, phrases=["red circle", "blue square", "red circle"])
    assert scene.phrases == ["red circle", "blue square", "red circle"]
    assert make_scene(21, phrases=["purple star"]).phrases == ["purple star"]
    with pytest.raises(ValueError, match="phrases: expected 1 to 4 of the world's phrases"):
        make_scene(0, phrases=["pink circle"])
    with pytest.raises(ValueError, match="phrases"):
        make_scene(0, phrases=[])
