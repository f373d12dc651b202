"""The ``sam2`` tracking route: its matching and id logic with stand-in models whose answers are
known, and its mechanics on a tiny ``Sam2VideoModel`` (output format, memory bounded, trimming
that changes no answer). The official checkpoints' parity is in ``test_video_sam2_parity.py``."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv
import torch
from PIL import Image
from tiny_sam2 import save_tiny_sam2
from tiny_sam2_video import MAX_POINTERS, NUM_MASKMEM, save_tiny_sam2_video

from grounded_seg.errors import InvalidWeightsError
from grounded_seg.official.sam2_video import Sam2VideoSettings, load_sam2_video
from grounded_seg.shapes import HELD_OUT_SEEDS
from grounded_seg.shapes.video import make_video
from grounded_seg.video import open_video
from grounded_seg.video.sam2_route import (
    Sam2VideoPropagator,
    frame_pixels,
    mask_iou,
    match_greedy,
    run_sam2,
)

SIZE = 48


def _rect(x0: int, y0: int, x1: int, y1: int, ring: bool = False) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    if ring:
        mask[max(y0, 0) + 3 : max(y1 - 3, 0), max(x0, 0) + 3 : max(x1 - 3, 0)] = False
    return mask


class World:
    """Objects with known masks per frame: ``masks[gid][t]`` (absent: empty), and names."""

    def __init__(self, frames: int, objects: dict[int, tuple[str, list[np.ndarray]]]) -> None:
        self.frames = frames
        self.names = {gid: name for gid, (name, _) in objects.items()}
        self.masks = {gid: masks for gid, (_, masks) in objects.items()}

    def folder(self, path):
        path.mkdir()
        for t in range(self.frames):  # the frame index is written in the first pixel
            frame = np.zeros((SIZE, SIZE, 3), np.uint8)
            frame[0, 0, 0] = t
            Image.fromarray(frame).save(path / f"{t:03d}.png")
        return open_video(path)

    def present(self, t: int) -> list[int]:
        return [gid for gid, masks in self.masks.items() if masks[t].any()]


class FakePredictor:
    """Finds every present object on a keyframe with its true mask, score 0.9, except those in
    ``misses`` ({(t, gid)}); ``answers`` overrides (t, gid) -> (class name, score); listed in
    reverse order on the keyframes in ``reverse``."""

    def __init__(self, world, classes, misses=(), answers=None, reverse=()):
        self.world, self.classes, self.misses = world, classes, set(misses)
        self.answers, self.reverse, self.calls = answers or {}, reverse, []

    def predict_batch(self, images, prompt, box_threshold, text_threshold, max_detections,
                      max_pixels=None):  # fmt: skip
        t = int(images[0][0, 0, 0])
        self.calls.append(t)
        gids = [g for g in self.world.present(t) if (t, g) not in self.misses]
        gids = gids[::-1] if t in self.reverse else gids
        named = [self.answers.get((t, g), (self.world.names[g], 0.9)) for g in gids]
        masks = np.array([self.world.masks[g][t] for g in gids], bool).reshape(-1, SIZE, SIZE)
        boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                          for m in masks for ys, xs in [np.nonzero(m)]], np.float32)  # fmt: skip
        return [sv.Detections(
            xyxy=boxes.reshape(-1, 4), mask=masks, confidence=np.array([s for _, s in named],
            np.float32), class_id=np.array([self.classes.index(n) for n, _ in named], np.int64),
            data={"class_name": np.array([n for n, _ in named], str)})]  # fmt: skip


class FakePropagator:
    """Follows perfectly the true object its prompt mask overlaps most."""

    def __init__(self, world):
        self.world, self.follows, self.t, self.removed = world, {}, -1, []

    def step(self, t, frame):
        assert t == self.t + 1 and frame[0, 0, 0] == t
        self.t = t
        return list(self.follows), self._masks(list(self.follows))

    def add(self, ids, boxes, masks=None):
        truth = np.array([self.world.masks[g][self.t] for g in self.world.masks])
        for obj_id, mask in zip(ids, masks, strict=True):
            self.follows[obj_id] = list(self.world.masks)[int(mask_iou(mask[None], truth).argmax())]
        return self._masks(ids)

    def remove(self, ids):
        self.removed += list(ids)
        for obj_id in ids:
            del self.follows[obj_id]

    def _masks(self, ids):
        masks = [self.world.masks[self.follows[i]][self.t] for i in ids]
        return np.array(masks, bool).reshape(-1, SIZE, SIZE)


def _track(world, tmp_path, classes=("square", "ring"), **kwargs):
    predictor = FakePredictor(world, list(classes), **{k: kwargs.pop(k) for k in
                              ("misses", "answers", "reverse") if k in kwargs})  # fmt: skip
    out = run_sam2(world.folder(tmp_path / "v"), predictor, list(classes), kwargs.pop("every", 3),
                   FakePropagator(world), **kwargs)  # fmt: skip
    return list(out), predictor


def _moving(frames, start, end, x0, y=10, side=12, ring=False):
    return [_rect(x0 + t, y, x0 + t + side, y + side, ring) if start <= t < end
            else np.zeros((SIZE, SIZE), bool) for t in range(frames)]  # fmt: skip


# ---------------------------------------------------------------- matching and ids


def test_mask_iou_and_greedy_matching_known_answers():
    a = np.array([_rect(0, 0, 10, 10), _rect(20, 20, 30, 30)])
    b = np.array([_rect(20, 20, 30, 25), _rect(0, 0, 10, 5), np.zeros((SIZE, SIZE), bool)])
    np.testing.assert_allclose(mask_iou(a, b), [[0, 0.5, 0], [0.5, 0, 0]])
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert match_greedy(iou, 0.5) == [(0, 0)]  # the best pair first; row 1's only partner is taken
    assert match_greedy(iou, 0.05) == [(0, 0), (1, 1)]
    assert match_greedy(np.zeros((2, 0)), 0.5) == []


def test_objects_appearing_mid_video_get_new_ids_and_outputs_follow_the_masks(tmp_path):
    world = World(
        12,
        {
            1: ("square", _moving(12, 0, 12, 2)),
            2: ("ring", _moving(12, 5, 12, 20, y=30, ring=True)),
        },
    )
    frames, predictor = _track(world, tmp_path)
    assert predictor.calls == [0, 3, 6, 9]
    assert [f.tracker_id.tolist() for f in frames] == [[1]] * 6 + [[1, 2]] * 6  # seen at key 6
    for t, found in enumerate(frames):
        for obj_id, gid in zip(found.tracker_id, (1, 2), strict=False):
            i = found.tracker_id.tolist().index(obj_id)
            assert np.array_equal(found.mask[i], world.masks[gid][t])
            ys, xs = np.nonzero(found.mask[i])
            assert found.xyxy[i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert found.mask.dtype == bool and found.xyxy.dtype == np.float32
        assert found.data["class_name"].tolist() == ["square", "ring"][: len(found)]
        assert found.class_id.tolist() == [0, 1][: len(found)]


def test_an_object_leaving_and_another_entering_never_reuses_an_id(tmp_path):
    leaves_returns = [m if t < 5 or t >= 9 else np.zeros_like(m)
                      for t, m in enumerate(_moving(15, 0, 15, 2))]  # fmt: skip
    world = World(
        15, {1: ("square", leaves_returns), 2: ("ring", _moving(15, 6, 15, 25, y=30, ring=True))}
    )
    frames, _ = _track(world, tmp_path, lost_keyframes=1)
    ids = [f.tracker_id.tolist() for f in frames]
    # 1 until it leaves; unseen at key 6, it ends; the ring is 2; the square, back at key 9, is 3
    assert ids == [[1]] * 5 + [[]] + [[2]] * 3 + [[2, 3]] * 6


@pytest.mark.parametrize(("lost", "expected"), [
    (2, [[1]] * 6 + [[]] * 3 + [[2]] * 3),  # missed on keys 3 and 6: ends at 6; back as 2 at 9
    (3, [[1]] * 12),  # missed twice, then seen again at key 9: the same track throughout
])  # fmt: skip
def test_a_track_unseen_for_lost_keyframes_keyframes_ends(lost, expected, tmp_path):
    world = World(12, {1: ("square", _moving(12, 0, 12, 2))})
    frames, _ = _track(world, tmp_path, misses={(3, 1), (6, 1)}, lost_keyframes=lost)
    assert [f.tracker_id.tolist() for f in frames] == expected


def test_mask_iou_picks_the_right_track_when_two_objects_cross(tmp_path):
    """A ring and a square pass through each other: on key 6 the square fills the ring's box
    exactly (box IoU 1 between every detection and every track, 0.56 mask IoU across) and the
    detector lists them in reverse order with new scores; mask IoU still pairs each detection
    with its own track, so each track takes its own object's score and class."""
    ring = _moving(12, 0, 12, 2, y=16, side=18, ring=True)
    square = [_rect(20 - 2 * t, 16, 38 - 2 * t, 34) for t in range(12)]
    world = World(12, {1: ("ring", ring), 2: ("square", square)})
    assert np.array_equal(world.masks[1][6] | world.masks[2][6], world.masks[2][6])
    assert mask_iou(world.masks[1][6][None], world.masks[2][6][None])[0, 0] == pytest.approx(
        180 / 324
    )
    answers = {(6, 1): ("ring", 0.55), (6, 2): ("square", 0.95)}
    frames, _ = _track(world, tmp_path, classes=("ring", "square"), answers=answers, reverse={6})
    for t in range(6, 9):
        assert frames[t].tracker_id.tolist() == [1, 2]
        np.testing.assert_allclose(frames[t].confidence, [0.55, 0.95])
        assert frames[t].data["class_name"].tolist() == ["ring", "square"]


def test_a_class_misread_once_does_not_change_the_tracks_class(tmp_path):
    world = World(9, {1: ("square", _moving(9, 0, 9, 2))})
    frames, _ = _track(world, tmp_path, answers={(6, 1): ("ring", 0.5)})
    assert all(f.data["class_name"].tolist() == ["square"] for f in frames)
    assert frames[6].confidence.tolist() == [0.5]  # the last matched detection's score


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"every": 0}, ValueError, "every: expected an int >= 1, got 0"),
    ({"match_iou": 1.5}, ValueError, "match_iou: expected a number in"),
    ({"lost_keyframes": 0}, ValueError, "lost_keyframes: expected an int >= 1"),
    ({"prompt_with": "points"}, ValueError, "prompt_with: expected 'mask' or 'box'"),
    ({"predictor": object()}, TypeError, "predictor: expected a GroundedSAM"),
    ({"source": "video.mp4"}, TypeError, "source: expected a VideoSource"),
])  # fmt: skip
def test_bad_arguments_are_refused_before_any_frame_is_read(kwargs, error, words, tmp_path):
    world = World(2, {1: ("square", _moving(2, 0, 2, 2))})
    args = {"source": world.folder(tmp_path / "v"), "predictor": FakePredictor(world, ["square"]),
            "prompt": "square", "every": 1, "video_model": FakePropagator(world)}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(error, match=words):
        run_sam2(**args)


# ---------------------------------------------------------------- a tiny Sam2VideoModel


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_sam2_video(tmp_path_factory.mktemp("tiny-sam2-video"))
    return load_sam2_video(folder, device="cpu")


def test_load_sam2_video_takes_a_video_folder_and_refuses_an_image_only_one(tiny, tmp_path):
    model, settings = tiny
    assert type(model).__name__ == "Sam2VideoModel" and not model.training
    assert (settings.size, settings.image_mean) == (128, (0.485, 0.456, 0.406))
    image_only = save_tiny_sam2(tmp_path / "image")
    with pytest.raises(InvalidWeightsError, match="holds SAM 2's image model only"):
        load_sam2_video(image_only, device="cpu")
    with pytest.raises(FileNotFoundError):
        load_sam2_video(tmp_path / "missing.pt", device="cpu")


def test_frame_pixels_resize_as_the_official_jpeg_loader():
    frame = np.zeros((30, 50, 3), np.uint8)
    frame[:, 25:] = 255
    pixels = frame_pixels(frame, Sam2VideoSettings(size=16))
    resized = np.asarray(Image.fromarray(frame).resize((16, 16))) / 255.0  # PIL's default filter
    expected = (torch.from_numpy(resized).permute(2, 0, 1).float()
                - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
                [0.229, 0.224, 0.225])[:, None, None]  # fmt: skip
    assert pixels.shape == (3, 16, 16) and torch.equal(pixels, expected)


class ShapesPredictor:
    """The shapes video's true objects on every keyframe, with their masks."""

    def __init__(self, video):
        self.video, self.t = video, 0

    def predict_batch(self, images, prompt, *args, **kwargs):
        t = next(i for i, f in enumerate(self.video.frames) if np.array_equal(f, images[0]))
        n = len(self.video.ids[t])
        names = [self.video.phrases[i - 1] for i in self.video.ids[t]]
        return [sv.Detections(xyxy=self.video.boxes[t], mask=self.video.masks[t],
                              confidence=np.full(n, 0.8, np.float32),
                              class_id=np.array([prompt.classes.index(p) for p in names]),
                              data={"class_name": np.array(names, str)})]  # fmt: skip


def _largest_object_bytes(session) -> int:
    """The bytes of tensors the session holds for its most expensive object."""
    sizes = [0]
    for outputs in session.output_dict_per_obj.values():
        sizes.append(sum(v.numel() * v.element_size() for frames in outputs.values()
                         for out in frames.values() for v in out.values()
                         if isinstance(v, torch.Tensor)))  # fmt: skip
    return max(sizes)


@pytest.mark.parametrize(("prompt_with", "length"), [("mask", 40), ("box", 12)])
def test_tiny_model_streams_with_flat_memory(tiny, prompt_with, length, tmp_path):
    model, settings = tiny
    video = make_video(HELD_OUT_SEEDS.start + 12200, frames=length)
    folder = tmp_path / "v"
    folder.mkdir()
    for t, frame in enumerate(video.frames):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    propagator = Sam2VideoPropagator(model, settings)  # length unknown: streaming
    prompt = list(dict.fromkeys(video.phrases))
    frames, per_object, seen = [], [], set()
    for found in run_sam2(open_video(folder), ShapesPredictor(video), prompt, 5, propagator,
                          lost_keyframes=2, prompt_with=prompt_with):  # fmt: skip
        session = propagator.session
        assert len(session.processed_frames) <= 1
        for outputs in session.output_dict_per_obj.values():
            assert len(outputs["cond_frame_outputs"]) == 1
            past = outputs["non_cond_frame_outputs"]
            assert len(past) <= MAX_POINTERS
            assert sum("maskmem_features" in out for out in past.values()) <= NUM_MASKMEM
        per_object.append(_largest_object_bytes(session))
        frames.append(found)
        assert found.mask.shape == (len(found), 128, 128) and found.mask.dtype == bool
        assert found.xyxy.dtype == np.float32 and found.tracker_id.dtype == np.int64
        assert set(found.data["class_name"]) <= set(video.phrases)
        assert (found.tracker_id >= 1).all() and len(set(found.tracker_id)) == len(found)
        seen |= set(found.tracker_id.tolist())
    assert len(frames) == length
    assert len(frames[0]) == len(video.ids[0])  # the tiny model finds its objects present
    assert seen == set(range(1, max(seen) + 1))  # ids from 1, in order, none skipped
    if length == 40:  # flat once the memory bank is full (3 memories, 4 pointers)
        assert max(per_object[20:]) <= max(per_object[8:20]) * 1.01


def test_trimming_and_streaming_change_no_answer(tiny, tmp_path):
    """The bounded streaming propagator gives the logits of transformers' own whole-video session
    (every frame and output kept), frame for frame, over more frames than the memory holds."""
    from transformers import Sam2VideoInferenceSession

    model, settings = tiny
    video = make_video(HELD_OUT_SEEDS.start + 12201, frames=10)
    boxes = video.boxes[0]
    pixels = torch.stack([frame_pixels(f, settings) for f in video.frames])
    reference = Sam2VideoInferenceSession(
        video=pixels, video_height=128, video_width=128, dtype=torch.float32
    )
    box_points = torch.as_tensor(boxes).reshape(-1, 1, 2, 2)  # 128 px frames, 128 px model
    labels = torch.tensor([[[2, 3]]], dtype=torch.int32)  # a box: its two corners
    for i in range(len(boxes)):
        idx = reference.obj_id_to_idx(i + 1)
        reference.add_point_inputs(idx, 0, {"point_coords": box_points[i][None],
                                            "point_labels": labels})  # fmt: skip
    reference.obj_with_new_inputs = list(range(1, len(boxes) + 1))
    expected = [o.pred_masks for o in model.propagate_in_video_iterator(reference, 0)]
    assert all((e > 0).any() for e in expected)  # objects present: not the no-object fill
    propagator = Sam2VideoPropagator(model, settings, frames=10)
    for t, frame in enumerate(video.frames):
        propagator.step(t, frame)
        if t == 0:
            propagator.add(list(range(1, len(boxes) + 1)), boxes)
        torch.testing.assert_close(propagator.last_logits, expected[t].float(), rtol=0, atol=1e-5)


def test_grounded_seg_track_runs_the_sam2_route(tmp_path, capsys):
    """`grounded-seg track --tracker sam2 --video-model FOLDER`: the bundled shapes models on
    keyframes, the tiny SAM 2 video model between them; every output written."""
    import json

    from grounded_seg.cli import main

    video = make_video(HELD_OUT_SEEDS.start + 12201, frames=12)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(video.frames):
        Image.fromarray(frame).save(frames / f"{t:03d}.png")
    folder = save_tiny_sam2_video(tmp_path / "sam2-video")
    lines, mot = tmp_path / "tracks.jsonl", tmp_path / "tracks.txt"
    prompt = ". ".join(dict.fromkeys(video.phrases))
    args = ["track", str(frames), prompt, "--tracker", "sam2", "--video-model", str(folder),
            "--every", "4", "--detector", "shapes-gdino", "--segmenter", "shapes-sam",
            "--json", str(lines), "--mot", str(mot), "-o", str(tmp_path / "tracked.mp4"),
            "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "12 frames" in capsys.readouterr().out
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(12))
    objects = [o for r in rows for o in r["objects"]]
    assert objects and {o["class_name"] for o in objects} <= set(video.phrases)
    assert min(o["id"] for o in objects) == 1
    assert main([*args[:3], "--tracker", "sam2", "--match-iou", "1.5", "--json",
                 str(tmp_path / "x.jsonl")]) == 2  # fmt: skip
