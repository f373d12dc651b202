"""``explain()``: Grounding DINO's four stages as arrays, checked against known answers on
held-out shapes scenes (shapes-gdino), and its figure and command.

Thresholds were chosen on scenes HELD_OUT_SEEDS.start + 10000..10059 (measured there: the
query-selection peak inside the named object for 98.5% of present classes; an absent class's
peak below a present one's in 97.8% of pairs, present peaks 6.25x higher on average; mean box
IoU with the truth 0.912 at query selection, 0.924 / 0.920 / 0.888 after decoder layers 1-3);
the tests use other scenes (+10200..).
"""

from __future__ import annotations

import numpy as np
import pytest

from grounded_seg import GroundedSAM
from grounded_seg.cli import main
from grounded_seg.explain import explain
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, make_scene

SEEDS = range(HELD_OUT_SEEDS.start + 10200, HELD_OUT_SEEDS.start + 10230)


@pytest.fixture(scope="module")
def shapes_gs():
    return GroundedSAM("shapes-gdino", "shapes-sam", device="cpu")


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def explained(shapes_gs):
    """(scene, classes, explanation) for each held-out scene: its classes and two absent ones."""
    rng = np.random.default_rng(7)
    found = []
    for seed in SEEDS:
        scene = make_scene(seed)
        present = list(dict.fromkeys(scene.phrases))
        absent = [p for p in PHRASES if p not in present]
        classes = present + list(rng.choice(absent, 2, replace=False))
        shapes_gs.set_image(scene.image)
        found.append((scene, classes, shapes_gs.explain(classes)))
    return found


def test_the_query_selection_map_peaks_inside_the_named_object(explained):
    hits = total = 0
    for scene, classes, why in explained:
        for c, name in enumerate(classes):
            if name not in scene.phrases:
                continue
            union = scene.masks[[p == name for p in scene.phrases]].any(axis=0)
            best = why.selection[c].max(axis=0)  # (H, W): the best level at each pixel
            y, x = np.unravel_index(int(best.argmax()), best.shape)
            hits += bool(union[y, x])
            total += 1
    assert total >= 50
    assert hits / total >= 0.9, (hits, total)


def test_an_absent_class_map_stays_below_the_present_ones(explained):
    pairs = []
    for scene, classes, why in explained:
        peaks = why.selection.max(axis=(1, 2, 3))
        present = [peaks[c] for c, n in enumerate(classes) if n in scene.phrases]
        absent = [peaks[c] for c, n in enumerate(classes) if n not in scene.phrases]
        pairs += [(a, p) for a in absent for p in present]
    pairs = np.array(pairs)
    assert (pairs[:, 0] < pairs[:, 1]).mean() >= 0.9
    assert pairs[:, 1].mean() >= 3 * pairs[:, 0].mean()


def test_the_refinement_path_ends_at_the_answer_and_stays_on_the_object(explained, shapes_gs):
    ious = []
    for scene, classes, why in explained:
        shapes_gs.set_image(scene.image)
        answer = shapes_gs.predict(classes)
        assert np.array_equal(why.detections.xyxy, answer.xyxy)  # the same boxes, in order
        assert why.detections.data["class_name"].tolist() == answer.data["class_name"].tolist()
        assert np.array_equal(why.box_path[:, -1], why.detections.xyxy)
        # a detection's confidence is its best token probability (stage 4's matrix)
        np.testing.assert_allclose(why.token_scores.max(axis=1), answer.confidence, atol=1e-6)
        for k, name in enumerate(why.detections.data["class_name"]):
            truths = scene.boxes[[p == name for p in scene.phrases]]
            if len(truths):
                truth = max(truths, key=lambda t, k=k: _iou(why.box_path[k, -1], t))
                ious.append([_iou(box, truth) for box in why.box_path[k]])
    per_layer = np.mean(ious, axis=0)
    assert len(ious) >= 40 and per_layer.shape == (4,)  # query selection, then 3 decoder layers
    assert per_layer.min() >= 0.8, per_layer  # every stage's box is on the object


def test_the_arrays_have_their_documented_shapes_and_coordinates(explained):
    _, classes, why = explained[0]
    levels = len(why.level_shapes)
    assert why.selection.shape == (len(classes), levels, 128, 128)
    assert [g.shape for g in why.selection_grids] == [
        (len(classes), h, w) for h, w in why.level_shapes
    ]
    assert why.level_shapes == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert why.feature_norms.shape == (3, 128, 128) and (why.feature_norms >= 0).all()
    assert why.query_xy.shape == (30, 2) and why.query_level.shape == (30,)
    assert ((why.query_xy > 0) & (why.query_xy < 128)).all()
    assert (np.diff(why.query_score) <= 0).all()  # highest first
    n = len(why.detections)
    assert why.box_path.shape == (n, 4, 4) and why.token_scores.shape == (n, len(why.tokens))
    assert why.tokens[0] == "[CLS]" and why.tokens[-1] == "[SEP]"
    first = classes[0].split()
    assert why.tokens[1:3] == first and why.token_class[1:3].tolist() == [0, 0]
    assert why.token_class[0] == -1 and why.token_class[3] == -1  # [CLS] and "."
    # the upsampled map holds the grid's values: its maximum is the grid's
    for c in range(len(classes)):
        for level, grid in enumerate(why.selection_grids):
            assert why.selection[c, level].max() <= grid[c].max() + 1e-5


def test_explain_loads_only_the_detector_and_answers_as_the_predictor(shapes_gs):
    scene = make_scene(SEEDS[0])
    why = explain(scene.image, "red circle. blue square.", detector="shapes-gdino", device="cpu")
    shapes_gs.set_image(scene.image)
    again = shapes_gs.explain("red circle. blue square.")
    np.testing.assert_allclose(why.selection, again.selection, atol=1e-6)
    np.testing.assert_allclose(why.box_path, again.box_path, atol=1e-4)


def test_explain_runs_on_a_real_grounding_dino_architecture(tiny_gdino_dir, scene):
    why = explain(scene, "cat. remote control.", detector=tiny_gdino_dir, box_threshold=0.0,
                  max_detections=5)  # fmt: skip
    h, w = scene.shape[:2]
    assert why.selection.shape[:2] == (2, len(why.level_shapes)) and why.selection.shape[2:] == (
        h,
        w,
    )
    assert len(why.detections) == 5 and np.array_equal(why.box_path[:, -1], why.detections.xyxy)


def test_explain_works_when_the_backbone_cache_falls_back(tiny_gdino_dir, scene, monkeypatch,
                                                          caplog):  # fmt: skip
    """A transformers whose backbone the cache was not verified on keeps the stock backbone
    (grounded_seg._equivalents): explain() reads the feature maps from it instead, same answer."""
    import dataclasses

    from grounded_seg.proposers import backbone_cache

    options = dict(detector=tiny_gdino_dir, box_threshold=0.0, max_detections=5)
    cached = explain(scene, "cat. remote control.", **options)
    unverified = dataclasses.replace(backbone_cache.EQUIVALENT, verified={})
    monkeypatch.setattr(backbone_cache, "EQUIVALENT", unverified)
    with caplog.at_level("INFO", logger="grounded_seg._equivalents"):
        stock = explain(scene, "cat. remote control.", **options)
    assert "stock GroundingDinoConvModel kept" in caplog.text
    assert stock.level_shapes == cached.level_shapes
    np.testing.assert_allclose(stock.selection, cached.selection, atol=1e-5)
    np.testing.assert_allclose(stock.box_path, cached.box_path, atol=1e-4)


def test_explain_refuses_what_it_cannot_show(shapes_gs, tmp_path):
    clip = GroundedSAM("shapes-clip", "shapes-sam", proposer="clip", device="cpu")
    clip.set_image(make_scene(SEEDS[1]).image)
    with pytest.raises(TypeError, match="grounding_dino route"):
        clip.explain("red circle")
    with pytest.raises(RuntimeError, match="set_image"):
        GroundedSAM(detector=shapes_gs.proposer, segmenter=shapes_gs.segmenter).explain("x")
    shapes_gs.set_image(make_scene(SEEDS[1]).image)
    many = [f"thing number {i}" for i in range(60)]
    with pytest.raises(ValueError, match="one text pass"):
        shapes_gs.explain(many)


def test_the_figure_and_the_command(explained, tmp_path, capsys):
    scene, classes, why = explained[0]
    figure = why.figure()
    assert len(figure.axes) == 1 + 3 + min(len(classes), 4) + 2
    out = tmp_path / "why.png"
    why.save(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="overwrite"):
        why.save(out)
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image)
    target = tmp_path / "cli.png"
    args = ["explain", str(image), "red circle. blue square.", "--detector", "shapes-gdino",
            "-o", str(target), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert target.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "red circle" in printed and "query-selection peak" in printed
    assert main(args) == 2  # an existing file is not replaced without --overwrite
