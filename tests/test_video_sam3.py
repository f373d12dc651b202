"""The ``sam3`` tracking route on a tiny offline ``Sam3VideoModel`` (random weights: mechanics
and output format, not accuracy, which is SAM 3's own), and its id mapping and mask
post-processing on a stand-in session whose objects are known."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sam3 import save_tiny_sam3
from tiny_sam3_video import COND_FRAMES, MAX_OBJECTS, save_tiny_sam3_video

from grounded_seg.errors import InvalidWeightsError, WeightsNotFoundError
from grounded_seg.prompts import normalize_prompt
from grounded_seg.shapes import HELD_OUT_SEEDS
from grounded_seg.shapes.video import make_video
from grounded_seg.video import open_video
from grounded_seg.video.sam3_route import (
    GlobalIds,
    Sam3Stream,
    load_sam3_video,
    one_owner_per_pixel,
    run_sam3,
    trim_session,
)

SEED = HELD_OUT_SEEDS.start + 12200
CLASSES = ["red circle", "blue square"]


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    return load_sam3_video(save_tiny_sam3_video(tmp_path_factory.mktemp("sam3v")), "cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    video = make_video(SEED, frames=40, phrases=CLASSES)
    folder = tmp_path_factory.mktemp("frames")
    for t, frame in enumerate(video.frames):
        Image.fromarray(frame).save(folder / f"{t:04d}.png")
    return video, folder


def _tensor_bytes(obj, seen=None) -> int:
    """Bytes of every tensor reachable from ``obj`` through dicts, lists, tuples and sets."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in list(obj.values()))
    if isinstance(obj, (list, tuple, set)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _session_bytes(stream) -> int:
    return _tensor_bytes({k: v for k, v in vars(stream.session).items() if k != "cache"}) + \
        _tensor_bytes(stream.session.cache._vision_features)  # fmt: skip


def test_run_sam3_gives_the_bytetrack_format_with_exact_classes(tiny_video, shapes):
    video, folder = shapes
    stream = run_sam3(open_video(folder), normalize_prompt(CLASSES), tiny_video,
                      box_threshold=0.0, with_frames=True)  # fmt: skip
    frames = list(itertools.islice(stream, 12))
    assert len(frames) == 12
    seen = set()
    for t, (frame, found) in enumerate(frames):
        assert np.array_equal(frame, video.frames[t])  # frames come back as read
        assert found.mask.dtype == bool and found.mask.shape == (len(found), 128, 128)
        assert found.xyxy.dtype == np.float32 and found.tracker_id.dtype == np.int64
        for box, mask in zip(found.xyxy, found.mask, strict=True):  # tight boxes, x2/y2 exclusive
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert set(found.class_id.tolist()) <= {0, 1}
        assert found.data["class_name"].tolist() == [CLASSES[c] for c in found.class_id]
        assert len(set(found.tracker_id.tolist())) == len(found)
        assert (np.diff(found.confidence) <= 0).all() and (found.confidence <= 1).all()
        for c in (0, 1):  # one owner per pixel within a class
            assert found.mask[found.class_id == c].sum(axis=0).max(initial=0) <= 1
        seen |= {(int(i), int(c)) for i, c in zip(found.tracker_id, found.class_id, strict=True)}
    assert {c for _, c in seen} == {0, 1}  # both classes found (random weights, fixed seed)
    assert len({i for i, _ in seen}) == len(seen)  # an id keeps its class
    assert min(i for i, _ in seen) == 1


def test_ids_and_classes_are_sam3s_own_objects(tiny_video, shapes):
    video, _ = shapes
    stream = Sam3Stream(tiny_video, normalize_prompt(CLASSES), 128, 128)
    history: dict[tuple[int, int], int] = {}
    for t in range(10):
        found = stream.step(video.frames[t])
        sam3 = {g: key for key, g in stream.ids.live.items()}
        for g, c in zip(found.tracker_id.tolist(), found.class_id.tolist(), strict=True):
            sam3_id, prompt_id = sam3[g]
            assert c == prompt_id == stream.session.obj_id_to_prompt_id[sam3_id]
        for key, g in stream.ids.live.items():  # stable while SAM 3 holds the object
            assert history.setdefault(key, g) == g
    assert sorted(history.values()) == list(range(1, stream.ids.last + 1))
    assert 2 <= len(history) <= MAX_OBJECTS


def test_the_session_stays_bounded_and_gives_transformers_answers(tiny_video, shapes):
    video, _ = shapes
    prompt = normalize_prompt(CLASSES)
    bounded = Sam3Stream(tiny_video, prompt, 128, 128)
    plain = Sam3Stream(tiny_video, prompt, 128, 128, bounded=False)
    sizes, plain_sizes = [], []
    for frame in video.frames:  # 40 frames
        a, b = bounded.step(frame), plain.step(frame)
        assert np.array_equal(a.tracker_id, b.tracker_id) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.class_id, b.class_id) and np.array_equal(a.xyxy, b.xyxy)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=0, atol=1e-6)
        sizes.append(_session_bytes(bounded))
        plain_sizes.append(_session_bytes(plain))
        counts = bounded.stored_frames()  # per object: history - 1 past outputs
        objects = len(bounded.session.obj_ids)
        assert counts["outputs"] <= objects * (tiny_video.history - 1)
        assert counts["cond"] <= objects * COND_FRAMES
        assert counts["pixels"] == counts["features"] == counts["per_frame"] == 1
    assert objects == MAX_OBJECTS and bounded.ids.last >= 2
    assert plain.stored_frames()["outputs"] == objects * 39  # transformers keeps them all
    assert max(sizes[10:]) == sizes[10]  # flat once the objects are all found and followed
    assert plain_sizes[-1] > 5 * sizes[-1]
    assert len(bounded.session.processed_frames) == 40  # the tracker still sees the length


def test_trim_session_keeps_exactly_what_the_next_frame_reads():
    frames = dict.fromkeys(range(40), "x")
    session = SimpleNamespace(
        output_dict_per_obj={0: {"non_cond_frame_outputs": dict(frames),
                                 "cond_frame_outputs": dict.fromkeys([0, 20, 37, 38, 39])}},
        frames_tracked_per_obj={0: dict(frames)}, mask_inputs_per_obj={0: {0: 1, 39: 1}},
        point_inputs_per_obj={0: {}}, processed_frames={38: 1, 39: 1},
        obj_id_to_tracker_score_frame_wise=dict(frames), suppressed_obj_ids=dict(frames),
        unmatched_frame_inds={0: list(range(20))}, overlap_pair_to_frame_inds={(0, 1): [5]},
    )  # fmt: skip
    trim_session(session, 39, history=4, cond_frames=2, counts=8)
    outputs = session.output_dict_per_obj[0]
    assert sorted(outputs["non_cond_frame_outputs"]) == [37, 38, 39]  # memories of frame 40
    assert sorted(outputs["cond_frame_outputs"]) == [37, 38, 39]  # 2 most recent + in window
    assert list(session.frames_tracked_per_obj[0]) == list(session.mask_inputs_per_obj[0]) == [39]
    assert list(session.processed_frames) == list(session.suppressed_obj_ids) == [39]
    assert session.unmatched_frame_inds[0] == list(range(12, 20))
    assert session.overlap_pair_to_frame_inds == {(0, 1): [5]}


def test_an_impossible_threshold_gives_empty_frames(tiny_video, shapes):
    _, folder = shapes
    source = open_video(folder)
    frames = run_sam3(source, normalize_prompt("green star"), tiny_video, box_threshold=1.0)
    for _, found in zip(range(5), frames, strict=False):
        assert len(found) == 0 and found.mask.shape == (0, 128, 128)
        assert found.tracker_id.shape == (0,) and found.data["class_name"].shape == (0,)


class StandIn:
    """A stand-in for Sam3VideoModel: per frame, the objects of ``script`` (SAM 3 id -> class,
    square in mask cells (x0, y0, x1, y1) of 16 x 16, score, tracker score, hidden)."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def __call__(self, inference_session, frame, frame_idx):
        assert frame.shape == (1, 3, 56, 56) and frame_idx == self.calls
        objects = self.script[self.calls]
        self.calls += 1
        masks, scores, tracker, hidden = {}, {}, {}, set()
        for sam3_id, (prompt_id, (x0, y0, x1, y1), score, track_score, hide) in objects.items():
            logits = torch.full((1, 16, 16), -10.0)
            logits[0, y0:y1, x0:x1] = 10.0
            masks[sam3_id], scores[sam3_id], tracker[sam3_id] = logits, score, track_score
            inference_session.obj_id_to_prompt_id[sam3_id] = prompt_id
            if hide:
                hidden.add(sam3_id)
        return SimpleNamespace(obj_id_to_mask=masks, obj_id_to_score=scores,
                               obj_id_to_tracker_score=tracker, removed_obj_ids=set(),
                               suppressed_obj_ids=hidden)  # fmt: skip


A, B, C = (0, 0, 4, 4), (8, 8, 12, 16), (2, 0, 6, 6)  # C covers A's x 16..31 (pixels)
SCRIPT = [  # frame -> {sam3 id: (class, square, score, tracker score, hidden)}
    {0: (0, A, 0.9, 0.9, False), 1: (1, B, 0.8, 0.8, False)},
    {0: (0, A, 0.9, 0.9, False), 1: (1, B, 0.8, 0.8, False)},
    {1: (1, B, 0.8, 0.8, False)},  # SAM 3 dropped 0 ...
    {0: (0, A, 0.7, 0.7, False), 1: (1, B, 0.8, 0.8, False)},  # ... and reuses the number
    {5: (0, A, 0.9, 0.9, False), 6: (1, B, 0.6, 0.6, False)},  # renumbered (a reset)
    {5: (0, A, 0.9, 0.9, True), 6: (1, B, 0.6, 0.6, False)},  # 5 hidden on this frame only
    {5: (0, A, 0.9, 0.5, False), 6: (0, C, 0.6, 0.95, False)},  # 6 now names class 0
]
EXPECTED = [  # frame -> (tracker ids, class ids), best first
    ([1, 2], [0, 1]),
    ([1, 2], [0, 1]),
    ([2], [1]),
    ([2, 3], [1, 0]),
    ([4, 5], [0, 1]),
    ([5], [1]),
    ([4, 6], [0, 0]),
]


def test_global_ids_on_a_stand_in_session(tiny_video, shapes):
    video, _ = shapes
    stand_in = dataclasses.replace(tiny_video, model=StandIn(SCRIPT))
    stream = Sam3Stream(stand_in, normalize_prompt(CLASSES), 128, 128)
    for t, (ids, classes) in enumerate(EXPECTED):
        found = stream.step(video.frames[t])
        assert found.tracker_id.tolist() == ids and found.class_id.tolist() == classes
    # frame 6: both class 0; C (tracker score 0.95) takes the pixels it shares with A
    assert found.xyxy.tolist() == [[0, 0, 16, 32], [16, 0, 48, 48]]  # 8 pixels a mask cell
    assert found.confidence.tolist() == pytest.approx([0.9, 0.6])
    assert found.mask[0, :32, :16].all() and not found.mask[0, :, 16:].any()
    assert stream.ids.last == 6


def test_global_ids_alone():
    ids = GlobalIds()
    ids.update([(3, 0), (1, 1)])
    assert ids.live == {(3, 0): 1, (1, 1): 2}  # numbered in SAM 3's order
    ids.update([(1, 1)])
    ids.update([(3, 0), (1, 1), (1, 1)])
    assert ids.live == {(1, 1): 2, (3, 0): 3} and ids.last == 3


def test_one_owner_per_pixel_within_a_class():
    masks = torch.tensor([[[1, 1, 0]], [[0, 1, 1]], [[1, 1, 1]]], dtype=torch.bool)
    out = one_owner_per_pixel(masks, torch.tensor([0.2, 0.9, 0.1]), torch.tensor([0, 0, 1]))
    assert out.int().tolist() == [[[1, 0, 0]], [[0, 1, 1]], [[1, 1, 1]]]


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"prompt": "red circle"}, TypeError, "prompt: expected a Prompt"),
        ({"source": "video.mp4"}, TypeError, "source: expected a VideoSource"),
        ({"box_threshold": 2}, ValueError, "box_threshold: expected a number in"),
        ({"max_detections": 0}, ValueError, "max_detections: expected an int >= 1"),
        ({"prompt": normalize_prompt(["red " * 40])}, ValueError, "SAM 3 reads at most 32"),
    ],
)
def test_bad_arguments_fail_before_any_frame_is_read(tiny_video, shapes, change, error, words):
    args = {"source": open_video(shapes[1]), "prompt": normalize_prompt(CLASSES)} | change
    with pytest.raises(error, match=words):
        run_sam3(args.pop("source"), args.pop("prompt"), tiny_video, **args)


def test_loading_refuses_what_is_not_a_sam3_video_folder(tmp_path):
    with pytest.raises(InvalidWeightsError, match="expected a 'sam3_video' model, got model_type"):
        load_sam3_video(save_tiny_sam3(tmp_path / "image"), "cpu")  # no tracker in it
    bare = save_tiny_sam3_video(tmp_path / "bare", tokenizer=False)
    with pytest.raises(InvalidWeightsError, match="has no SAM 3 tokenizer"):
        load_sam3_video(bare, "cpu")
    with pytest.raises(WeightsNotFoundError, match="SAM 3 weights are gated: request access"):
        load_sam3_video("sam3", "cpu")  # offline, nothing in the weights dirs


def test_grounded_seg_track_runs_the_sam3_route(tmp_path_factory, shapes, capsys):
    """`grounded-seg track --tracker sam3`: SAM 3's video model from a folder, every output."""
    import json

    from grounded_seg.cli import main

    video, _ = shapes
    frames = tmp_path_factory.mktemp("frames12")
    for t, frame in enumerate(video.frames[:12]):
        Image.fromarray(frame).save(frames / f"{t:04d}.png")
    folder = save_tiny_sam3_video(tmp_path_factory.mktemp("sam3v-cli"))
    out = tmp_path_factory.mktemp("sam3-track")
    lines, mot = out / "tracks.jsonl", out / "tracks.txt"
    args = ["track", str(frames), ". ".join(CLASSES), "--tracker", "sam3", "--detector",
            str(folder), "-o", str(out / "tracked.mp4"), "--json", str(lines), "--mot", str(mot),
            "--box-threshold", "0.2", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "12 frames" in capsys.readouterr().out
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(12))
    objects = [o for r in rows for o in r["objects"]]
    assert objects and {o["class_name"] for o in objects} <= set(CLASSES)
    assert main([*args[:3], "--tracker", "sam3", "--every", "2", "--json", str(out / "x.jsonl"),
                 "--detector", str(folder)]) == 2  # fmt: skip
