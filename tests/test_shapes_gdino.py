"""shapes-gdino: the recipe's data, the bundled model, and its accuracy through the public API
on fixed held-out scenes (issue 6's targets)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from grounded_seg import GroundedSAM
from grounded_seg.registry import resolve_model
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, export_coco
from grounded_seg.shapes.train_gdino import (
    IMAGE_SIZE,
    MAX_TEXT_LEN,
    single_phrase_rates,
    write_shapes_vocab,
)

TEST_SEEDS = range(HELD_OUT_SEEDS.start + 9000, HELD_OUT_SEEDS.start + 9040)  # 40 fixed scenes


def test_vocabulary_keeps_grounding_dino_special_ids(tmp_path):
    from transformers import BertTokenizer

    vocab = write_shapes_vocab(tmp_path / "vocab.txt").read_text().splitlines()
    assert [vocab[i] for i in (0, 100, 101, 102, 1012, 1029)] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", "?"
    ]  # fmt: skip
    tokenizer = BertTokenizer(vocab=str(tmp_path / "vocab.txt"), do_lower_case=True)
    assert tokenizer.tokenize("Red circle. yellow stars.") == [
        "red", "circle", ".", "yellow", "star", "##s", "."
    ]  # fmt: skip
    assert "[UNK]" not in tokenizer.tokenize("an orange dog")  # spelt in letters, never unknown
    caption = ". ".join(PHRASES) + "."
    assert len(tokenizer(caption)["input_ids"]) <= MAX_TEXT_LEN  # all 20 phrases fit one pass


def test_training_samples_target_exactly_the_named_objects():
    from grounded_seg.shapes.train_gdino import shapes_sample
    from grounded_seg.shapes.world import make_scene

    rng = np.random.default_rng(0)
    kinds = Counter()
    for _ in range(300):
        state = rng.bit_generator.state
        seed = int(rng.integers(0, 1_000_000))  # the sample's own first draw: its scene
        rng.bit_generator.state = state
        sample = shapes_sample(rng)
        scene = make_scene(seed, IMAGE_SIZE)
        named = [o for o in scene.objects if o.phrase in sample.classes]
        got = sorted(
            (sample.classes[c], tuple(b))
            for c, b in zip(sample.labels, sample.boxes.tolist(), strict=True)
        )
        assert got == sorted((o.phrase, tuple(o.box.tolist())) for o in named)
        present = set(scene.phrases) & set(sample.classes)
        kinds["all 20"] += len(sample.classes) == 20
        kinds["nothing named present"] += not present
        kinds["with distractors"] += len(sample.classes) > len(present)
        kinds["unknown words"] += any(c not in PHRASES for c in sample.classes)
    assert kinds["all 20"] > 20 and kinds["nothing named present"] > 20
    assert kinds["with distractors"] > 200 and kinds["unknown words"] > 20


def test_bundled_model_is_found_offline_and_small():
    source = resolve_model("shapes-gdino", "detector")
    folder = source.local_dir
    assert folder is not None and (folder / "model.safetensors").is_file()
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < 25 * 2**20, total
    card = (folder / "MODEL_CARD.md").read_text()
    assert "grounded-seg train shapes --model gdino" in card and "box AP50" in card


@pytest.fixture(
    scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], ids=str
)
def gdino_route(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield GroundedSAM(detector="shapes-gdino", segmenter="shapes-sam", device=request.param)
    torch.set_num_threads(previous)


def test_box_and_mask_ap50_with_all_phrases(gdino_route, tmp_path):
    from grounded_seg.evaluation import evaluate_coco

    annotations = export_coco(TEST_SEEDS, tmp_path / "coco")
    report = evaluate_coco(gdino_route, annotations, progress=False)
    # measured on CPU: box AP50 0.808, mask AP50 0.819
    assert report.box_ap50 >= 0.80, report.format_table()
    assert report.mask_ap50 >= 0.75, report.format_table()


# Issue 6's single-phrase targets are not reached yet. Measured on these 40 scenes (CPU, default
# thresholds): right object 0.675, nothing for an absent phrase 0.875. The right boxes are there
# but scored 0.2-0.35, about as high as absent phrases score; no threshold gives both >= 0.9
# (held-out seeds 1006000-1006099: 0.86 / 0.87 at 0.30, 0.95 / 0.85 at 0.25). More training
# is the lever: the held-out curve was still rising when the 2000-step schedule ended.
@pytest.mark.xfail(strict=True, reason="issue 6 single-phrase targets not reached yet")
def test_single_phrase_prompts(gdino_route):
    rates = single_phrase_rates(gdino_route, TEST_SEEDS)
    assert rates["present_hit"] >= 0.9, rates
    assert rates["absent_empty"] >= 0.9, rates


def test_offline_demo_with_shapes_gdino(tmp_path, capsys):
    from grounded_seg.cli import main

    out = tmp_path / "demo.png"
    assert main(["demo", "-o", str(out), "--device", "cpu", "--proposer", "grounding_dino"]) == 0
    printed = capsys.readouterr().out
    found = [line.split()[1:3] for line in printed.splitlines() if line.strip().startswith("found")]
    assert sorted(" ".join(f) for f in found) == ["blue square", "red circle"]
    assert out.is_file()
