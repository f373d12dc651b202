"""The shapes CLIP: its offline tokenizer, the bundled model in weights/shapes/clip, and training.

Runs on one thread in well under a minute.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from grounded_seg.proposers.clip import DEFAULT_BACKGROUND_TEXTS, crop_regions
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, make_scene
from grounded_seg.shapes.clip_tokenizer import MERGED_WORDS, write_clip_tokenizer
from grounded_seg.shapes.train_clip import (
    CAPTIONS,
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    LOG_FILE,
    CandidatePool,
    background_boxes,
    evaluate_shapes_clip,
    match_candidates,
    pool_seeds,
    step_pairs,
    train_shapes_clip,
)

STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # as in conftest.py
BUNDLED = Path(__file__).resolve().parents[1] / "weights" / "shapes" / "clip"

# A tiny model and a few steps: enough to see the loss fall and to compare a resumed run.
TINY = dict(
    batch_size=24,
    learning_rate=3e-3,
    image_size=24,
    width=32,
    layers=1,
    patch_size=8,
    text_width=32,
    text_layers=1,
    projection_dim=32,
    candidate_scenes=3,  # a tiny pool of the bundled shapes-sam's candidates
    candidate_share=0.5,
    threads=1,
    device="cpu",
    log_every=1,
    checkpoint_every=4,
    eval_every=None,
    eval_scenes=4,
)
TINY_STEPS = 8


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- the tokenizer


def test_every_word_of_the_route_and_the_shapes_world_is_one_token(tmp_path):
    tokenizer = write_clip_tokenizer(tmp_path)
    words = {w for text in CAPTIONS for w in text.rstrip(".").split()}
    assert words <= set(MERGED_WORDS)
    for text in CAPTIONS:
        tokens = tokenizer.tokenize(text)
        assert [t.removesuffix("</w>") for t in tokens] == text.replace(".", " .").split(), tokens
    assert tokenizer.tokenize("Purple  STAR") == ["purple</w>", "star</w>"]
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # no unknowns


def test_tiny_clip_helper_uses_the_library_tokenizer():
    import tiny_clip

    assert tiny_clip.write_clip_tokenizer is write_clip_tokenizer
    assert tiny_clip.tiny_clip_config().text_config.vocab_size == len(
        tiny_clip.build_vocab_and_merges()[0]
    )


# --------------------------------------------------------------------------- the data


def test_training_batches_hold_distinct_captions_and_backgrounds_touch_no_shape():
    crops, captions, batches = step_pairs(seed=0, step=1, batch_size=40)
    assert sum(c < len(PHRASES) for c in captions) == 40
    assert len(crops) == len(captions) and batches
    for batch in batches:
        assert len(batch) >= 2
        assert len({captions[i] for i in batch}) == len(batch)  # no repeated caption
        assert sum(captions[i] >= len(PHRASES) for i in batch) == 1  # one background crop
    assert all(c.dtype == np.uint8 and c.ndim == 3 for c in crops)
    again = step_pairs(seed=0, step=1, batch_size=40)
    assert again[1:] == (captions, batches)
    assert all(np.array_equal(a, b) for a, b in zip(again[0], crops, strict=True))
    assert step_pairs(seed=0, step=2, batch_size=40)[1] != captions

    scene = make_scene(5)
    boxes = background_boxes(scene, np.random.default_rng(0), 5)
    assert len(boxes) == 5
    for box in boxes:
        x1, y1, x2, y2 = box
        dx, dy = (x2 - x1) * 0.1, (y2 - y1) * 0.1
        left, top = int(max(0, np.floor(x1 - dx))), int(max(0, np.floor(y1 - dy)))
        right, bottom = int(np.ceil(x2 + dx)), int(np.ceil(y2 + dy))
        for obj in scene.objects:
            assert obj.mask[top:bottom, left:right].sum() <= 0.03 * obj.mask.sum()
    assert len(crop_regions(scene.image, boxes)) == 5


def test_candidates_are_captioned_by_mask_overlap_and_mixed_into_the_steps():
    scene = make_scene(6)
    objects = scene.masks
    assert len(objects) >= 2
    part = objects[0].copy()
    part[: int(np.percentile(np.nonzero(part)[0], 60))] = False  # 40% of the object: IoU < 0.5
    candidates = np.stack([objects[1], objects[0], part, np.zeros_like(part)])
    assert match_candidates(candidates, scene) == [1, 0, -1, -1]

    pool = CandidatePool(
        crops=[np.full((10, 10, 3), i, np.uint8) for i in range(6)], labels=[0, 1, 2, 3, -1, -1]
    )
    crops, captions, batches = step_pairs(0, 1, 16, pool, candidate_share=0.25)
    assert sum(c < len(PHRASES) for c in captions) == 16
    pooled = [i for i, c in enumerate(crops) if c.shape == (10, 10, 3)]
    objects_pooled = [i for i in pooled if crops[i][0, 0, 0] < 4]
    assert len(objects_pooled) == 4  # round(0.25 * 16), each with its own label as caption
    assert all(captions[i] == crops[i][0, 0, 0] for i in objects_pooled)
    assert all(captions[i] >= len(PHRASES) for i in pooled if i not in objects_pooled)
    for batch in batches:
        assert len({captions[i] for i in batch}) == len(batch)
    again = step_pairs(0, 1, 16, pool, candidate_share=0.25)
    assert again[1:] == (captions, batches)
    assert step_pairs(0, 1, 16)[1] == step_pairs(0, 1, 16, None, 0.75)[1]  # no pool: as before
    assert pool_seeds(0, 5) == pool_seeds(0, 5) and len(set(pool_seeds(0, 5))) == 5
    assert pool_seeds(1, 5) != pool_seeds(0, 5) and pool_seeds(0, 0) == []


# --------------------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def bundled() -> Path:
    if not (BUNDLED / "model.safetensors").is_file():
        message = f"the bundled shapes CLIP is missing: {BUNDLED} (train_shapes_clip makes it)"
        if STRICT:
            pytest.fail(message)
        pytest.skip(message)
    return BUNDLED


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_bundled_model_zero_shot_on_held_out_scenes(bundled, device):
    """Loaded strictly, as the CLIP route loads it, and scored with the route's ClipScorer."""
    metrics = evaluate_shapes_clip(bundled, HELD_OUT_SEEDS[:60], device=device)
    assert metrics["objects"] >= 120
    assert metrics["zero_shot_accuracy"] >= 0.90, metrics
    assert metrics["background_rejection"] >= 0.90, metrics
    assert metrics["objects_kept"] >= 0.90, metrics


def test_bundled_model_files_and_card(bundled):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    assert (bundled / "model.safetensors").stat().st_size < 5_000_000
    assert not (bundled / CHECKPOINT_DIR).exists()
    model = CLIPModel.from_pretrained(bundled)
    assert set(load_file(bundled / "model.safetensors")) == set(model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(bundled)
    assert tokenizer.tokenize("a photo of a purple star.") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "purple</w>",
        "star</w>",
        ".</w>",
    ]
    for text in DEFAULT_BACKGROUND_TEXTS:
        assert len(tokenizer.tokenize(text)) == len(text.split())
    size = model.config.vision_config.image_size
    processor = AutoImageProcessor.from_pretrained(bundled)
    pixels = processor(images=[np.zeros((30, 50, 3), np.uint8)], return_tensors="pt")
    assert tuple(pixels["pixel_values"].shape) == (1, 3, size, size)
    log = json.loads((bundled / LOG_FILE).read_text(encoding="utf-8"))
    assert log["report"]["metrics"]["zero_shot_accuracy"] >= 0.92
    assert log["loss"][-1]["loss"] < log["loss"][0]["loss"]
    card = (bundled / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert log["report"]["command"] in card and "python -m grounded_seg.shapes.train_clip" in card


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("uninterrupted") / "clip"
    return out, train_shapes_clip(out, steps=TINY_STEPS, **TINY)


def test_tiny_training_lowers_the_loss_and_saves_a_loadable_model(uninterrupted):
    from transformers import CLIPModel

    out, report = uninterrupted
    assert report["finished"] and report["step"] == TINY_STEPS
    log = json.loads((out / LOG_FILE).read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in log["loss"]]
    assert [entry["step"] for entry in log["loss"]] == list(range(1, TINY_STEPS + 1))
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert not (out / CHECKPOINT_DIR).exists()  # removed after a complete run
    assert (out / "MODEL_CARD.md").is_file()
    CLIPModel.from_pretrained(out)
    metrics = report["metrics"]
    assert 0 <= metrics["zero_shot_accuracy"] <= 1 and metrics["scenes"] == 4


def test_resume_continues_at_the_checkpoint_step_and_matches_an_uninterrupted_run(
    uninterrupted, tmp_path, caplog
):
    out, report = uninterrupted
    again = tmp_path / "clip"
    partial = train_shapes_clip(again, steps=TINY_STEPS, stop_after=5, **TINY)
    assert not partial["finished"] and partial["step"] == 5
    state = torch.load(again / CHECKPOINT_DIR / CHECKPOINT_FILE, weights_only=True)
    assert state["step"] == 5
    assert not (again / "model.safetensors").exists()

    with caplog.at_level(logging.INFO, logger="grounded_seg.shapes.train_clip"):
        resumed = train_shapes_clip(again, steps=TINY_STEPS, **TINY)
    assert "at step 5 of 8" in caplog.text
    assert resumed["finished"] and resumed["step"] == TINY_STEPS

    def losses(folder):
        log = json.loads((folder / LOG_FILE).read_text(encoding="utf-8"))
        return [(entry["step"], entry["loss"]) for entry in log["loss"]]

    assert losses(again) == losses(out)
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    assert resumed["metrics"] == report["metrics"]


def test_refuses_a_checkpoint_made_with_other_settings(tmp_path):
    out = tmp_path / "clip"
    train_shapes_clip(out, steps=TINY_STEPS, stop_after=4, **TINY)
    with pytest.raises(ValueError, match="other settings"):
        train_shapes_clip(out, steps=TINY_STEPS, **{**TINY, "learning_rate": 1e-3})


def test_refuses_to_overwrite_a_finished_model_unless_asked(uninterrupted, tmp_path):
    out, report = uninterrupted
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for resume in (True, False):
        with pytest.raises(FileExistsError, match="overwrite=True"):
            train_shapes_clip(out, steps=TINY_STEPS, resume=resume, **TINY)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    copy = shutil.copytree(out, tmp_path / "copy")
    again = train_shapes_clip(copy, steps=TINY_STEPS, overwrite=True, **TINY)
    assert again["finished"] and again["metrics"] == report["metrics"]  # same seed, same model


def test_refuses_an_unrelated_folder_and_bad_arguments(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not empty"):
        train_shapes_clip(tmp_path, steps=2, **TINY)
    with pytest.raises(ValueError, match="batch_size"):
        train_shapes_clip(tmp_path / "new", steps=2, **{**TINY, "batch_size": 1})
    with pytest.raises(ValueError, match="patch_size"):
        train_shapes_clip(tmp_path / "new", steps=2, **{**TINY, "image_size": 30})
