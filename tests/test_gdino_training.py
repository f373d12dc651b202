"""Training Grounding DINO: batches built as inference builds inputs, the corrected losses,
exact resume, and fine-tuning on a COCO data set (tiny offline model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grounded_seg.gdino import (
    GroundingCollator,
    GroundingSample,
    TrainConfig,
    fine_tune_grounding_dino,
    phrase_count,
    query_selection_loss,
    train_grounding_dino,
)
from grounded_seg.gdino.data import batch_to
from grounded_seg.gdino.finetune import CocoSamples
from grounded_seg.gdino.loss import corrected_loss, grounding_losses, make_criterion

from tiny_models import make_tokenizer, tiny_gdino_config


@pytest.fixture(scope="module")
def parts(vocab_file):
    from transformers import GroundingDinoImageProcessorPil

    processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    return make_tokenizer(vocab_file), processor


def _image(height=64, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_phrase_count_follows_grounding_dino_delimiters():
    assert phrase_count([101, 5, 6, 1012, 7, 1012, 102]) == 2
    assert phrase_count([101, 5, 1029, 102, 0, 0]) == 1
    assert phrase_count([101, 102]) == 0


def test_collator_builds_the_models_label_format(parts):
    tokenizer, processor = parts
    sample = GroundingSample(
        _image(64, 128), ("cat", "black dog"), [[0, 0, 32, 32], [64, 16, 128, 48]], [1, 0]
    )
    batch = GroundingCollator(tokenizer, processor, 256)([sample])
    caption = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert caption.replace(" .", ".") == "cat. black dog."
    assert batch["labels"][0]["class_labels"].tolist() == [1, 0]
    expected = [[0.125, 0.25, 0.25, 0.5], [0.75, 0.5, 0.5, 0.5]]  # cx, cy, w, h of the image
    assert torch.allclose(batch["labels"][0]["boxes"], torch.tensor(expected))
    assert batch["pixel_values"].shape == (1, 3, 48, 96)  # longest side capped at 96
    reference = processor(images=sample.image, return_tensors="pt")["pixel_values"]
    assert torch.equal(batch["pixel_values"], reference)


def test_collator_and_sample_reject_bad_input(parts):
    tokenizer, processor = parts
    collate = GroundingCollator(tokenizer, processor, 256)
    with pytest.raises(ValueError, match="2 phrases for 1 classes"):
        collate([GroundingSample(_image(), ("cat. dog",), np.zeros((0, 4)), [])])
    with pytest.raises(ValueError, match="max_text_len 8"):
        GroundingCollator(tokenizer, processor, 8)(
            [GroundingSample(_image(), ("cat", "dog", "car", "bus"), np.zeros((0, 4)), [])]
        )
    with pytest.raises(ValueError, match="inside the 64x64 image"):
        GroundingSample(_image(), ("cat",), [[0, 0, 65, 10]], [0])
    with pytest.raises(ValueError, match="inside the 64x64 image"):
        GroundingSample(_image(), ("cat",), [[0, 0, float("nan"), 10]], [0])
    with pytest.raises(ValueError, match="indices in"):
        GroundingSample(_image(), ("cat",), [[0, 0, 5, 10]], [1])
    with pytest.raises(TypeError, match="uint8"):
        GroundingSample(_image().astype(np.float32), ("cat",), [[0, 0, 5, 10]], [0])
    with pytest.raises(ValueError, match="distinct"):
        GroundingSample(_image(), ("cat", "cat"), np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def _synthetic_outputs(parts, class_lists, boxes_per_image, seed=0):
    """Random logits/boxes for a batch whose images list different numbers of classes."""
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        build_label_maps,
        build_text_mask,
    )

    tokenizer, processor = parts
    rng = np.random.default_rng(seed)
    samples = []
    for classes, n in zip(class_lists, boxes_per_image, strict=True):
        xy = rng.uniform(0, 30, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (n, 2))], axis=1)
        samples.append(GroundingSample(_image(), classes, boxes, rng.integers(0, len(classes), n)))
    batch = GroundingCollator(tokenizer, processor, 32)(samples)
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(samples), 7, 32, generator=generator) * 3
    logits[:, :, batch["input_ids"].shape[1] :] = float("-inf")
    outputs = {
        "logits": logits,
        "pred_boxes": torch.rand(len(samples), 7, 4, generator=generator) * 0.5 + 0.25,
        "label_maps": build_label_maps(logits, batch["input_ids"]),
        "text_mask": build_text_mask(logits, batch["attention_mask"]),
    }
    return outputs, batch["labels"]


def test_batched_classification_targets_equal_per_image_ones(parts):
    """transformers' criterion offsets image i's phrases by its own count (wrong from the second
    image on); the corrected one must give each image exactly its per-image loss."""
    from types import SimpleNamespace

    config = SimpleNamespace(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0, focal_alpha=0.25)
    class_lists = [("cat",), ("dog", "black cat", "car"), ("bus", "tree")]
    counts = [2, 3, 1]
    outputs, labels = _synthetic_outputs(parts, class_lists, counts)
    criterion = make_criterion(config)
    batched = criterion(outputs, labels)
    per_image = []
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in outputs.items()}
        per_image.append(criterion(one, [labels[i]]))
    total = sum(counts)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        expected = sum(float(p[key]) * n for p, n in zip(per_image, counts, strict=True)) / total
        assert float(batched[key]) == pytest.approx(expected, rel=1e-5), key


@pytest.fixture()
def tiny_model():
    from transformers import GroundingDinoForObjectDetection

    torch.manual_seed(0)
    return GroundingDinoForObjectDetection(tiny_gdino_config(num_queries=10)).train()


def _shape_batch(parts, seed=0, n=3, side=64):
    from grounded_seg.shapes import make_scene

    tokenizer, processor = parts
    samples = []
    for k in range(n):
        scene = make_scene(seed + k, side)
        classes = tuple(dict.fromkeys(scene.phrases))
        labels = [classes.index(p) for p in scene.phrases]
        samples.append(GroundingSample(scene.image, classes, scene.boxes, labels))
    return GroundingCollator(tokenizer, processor, 256)(samples)


def test_query_selection_loss_reaches_the_selection_heads(parts, tiny_model):
    batch = _shape_batch(parts)
    outputs = tiny_model(**batch)
    loss, found = query_selection_loss(
        outputs, batch["labels"], batch["input_ids"], batch["attention_mask"], tiny_model.config
    )
    assert set(found) >= {"loss_ce", "loss_bbox", "loss_giou"}
    loss.backward()
    heads = [tiny_model.model.encoder_output_bbox_embed, tiny_model.model.enc_output]
    for head in heads:
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_corrected_loss_is_installed_only_inside_the_block(parts, tiny_model):
    batch = _shape_batch(parts)
    with corrected_loss(tiny_model):
        outputs = tiny_model(**batch)
    assert "_loss_function" not in vars(tiny_model)
    layers = tiny_model.config.decoder_layers
    assert {f"loss_ce_{i}" for i in range(layers - 1)} <= set(outputs.loss_dict)


def test_training_lowers_the_loss_of_a_fixed_batch(parts, tiny_model):
    batch = _shape_batch(parts, n=2)
    config = TrainConfig(steps=15, learning_rate=3e-3, warmup_steps=0, grad_clip=1.0)
    first, _ = grounding_losses(tiny_model, batch)
    result = train_grounding_dino(tiny_model, lambda step: batch, config)
    last, _ = grounding_losses(tiny_model.train(), batch)
    first, last = float(first.detach()), float(last.detach())
    assert last < 0.5 * first, (first, last)
    assert result["curve"][-1]["step"] == 15 and result["resumed_at"] == []


def test_resumed_training_equals_uninterrupted(parts, tmp_path):
    from transformers import GroundingDinoForObjectDetection

    batches = {s: _shape_batch(parts, seed=10 * s, n=2) for s in range(4)}
    config = TrainConfig(steps=4, learning_rate=1e-3, warmup_steps=1, checkpoint_every=1)

    def model():
        torch.manual_seed(1)
        return GroundingDinoForObjectDetection(tiny_gdino_config(num_queries=10))

    straight = model()
    train_grounding_dino(straight, batches.__getitem__, config)
    split = model()
    partial = train_grounding_dino(split, batches.__getitem__, config, checkpoint_dir=tmp_path,
                                   stop_at=2)  # fmt: skip
    assert partial["stopped_at"] == 2
    resumed = model()  # a new process: fresh weights, state from the checkpoint
    result = train_grounding_dino(resumed, batches.__getitem__, config, checkpoint_dir=tmp_path)
    assert result["resumed_at"] == [2] and [r["step"] for r in result["curve"]][-1] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.allclose(a, b, atol=1e-6), name


def test_training_through_the_installed_equivalents_follows_the_stock_model(vocab_file):
    """``GroundingDinoProposer`` installs the fused deformable kernel and the factored fusion into
    the model it wraps, and ``train_gdino`` wraps the model it trains for its evaluations: from
    the first evaluation on, training runs through them. Same loss, same gradient for every
    parameter, same loss curve as the stock transformers modules.

    At initialisation the sampling-offset weights are 0, so the encoder's taps are reference
    points (pixel centres) plus integer offsets: in float32, 2608 of the 10880 taps of this
    batch land exactly on a pixel centre, 120 on the zero border's centre at -1, where bilinear
    sampling has a kink and ``grid_sample`` takes the one-sided derivative into the map. The
    gather takes the same side (it lost it when torch 2.14's ``clamp`` stopped passing gradients
    at its bound: the offsets' gradient was 8.9 off, the loss equal), so the tolerance stays
    tight: what it allows is rounding, not a difference of conventions (the kinks themselves
    are checked against ``grid_sample`` in tests/test_deformable_attention.py)."""
    import copy

    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil

    from grounded_seg.proposers.deformable import install_deformable_sampler
    from grounded_seg.proposers.fusion import install_factored_fusion

    # 128 px, not 64: at 64 px the tiny model's extra level is 1x1 and its GroupNorm has one
    # value per group, so that level's gradient is amplified rounding noise in either model.
    processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192})
    parts = (make_tokenizer(vocab_file), processor)
    batches = {step: _shape_batch(parts, seed=10 * step, n=2, side=128) for step in range(6)}
    torch.manual_seed(0)
    stock = GroundingDinoForObjectDetection(tiny_gdino_config(num_queries=10))
    fast = copy.deepcopy(stock)
    assert install_deformable_sampler(fast) == 3 and install_factored_fusion(fast) == 1

    losses = []
    for model in (stock, fast):
        torch.manual_seed(5)  # dropout 0.1: both draw the same masks
        loss, _ = grounding_losses(model.train(), batches[0])
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    pairs = list(zip(stock.named_parameters(), fast.parameters(), strict=True))
    assert all((a.grad is None) == (b.grad is None) for (_, a), b in pairs)
    pairs = [(name, a.grad, b.grad) for (name, a), b in pairs if a.grad is not None]
    largest = max(float(a.abs().max()) for _, a, _ in pairs)
    for name, a, b in pairs:  # the floor is for gradients that are 0 in exact arithmetic
        tolerance = 1e-4 * float(a.abs().max()) + 1e-7 * largest  # (key biases: softmax)
        error = float((a - b).abs().max())
        assert error <= tolerance, f"{name}: {error:.3g} > {tolerance:.3g}"

    config = TrainConfig(steps=6, learning_rate=3e-3, warmup_steps=0, grad_clip=1.0, log_every=1)
    curves = []
    for model in (stock, fast):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        curve = train_grounding_dino(model, batches.get, config)["curve"]
        curves.append([row["loss"] for row in curve])
    assert curves[0][-1] < 0.8 * curves[0][0]  # it learns, so the comparison is not of a flat line
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=True)


def test_fine_tune_on_a_coco_data_set(tiny_gdino_dir, tiny_sam_dir, tmp_path):
    from grounded_seg import GroundedSAM
    from grounded_seg.shapes import export_coco

    annotations = export_coco(range(5), tmp_path / "coco", size=64)
    out = tmp_path / "tuned"
    config = TrainConfig(steps=3, batch_size=2, warmup_steps=1, log_every=1)
    report = fine_tune_grounding_dino(tiny_gdino_dir, annotations, out, config=config, negatives=3)
    assert [row["step"] for row in report["curve"]] == [1, 2, 3]
    assert json.loads((out / "fine_tune_report.json").read_text())["images"] == 5
    assert not (out / "checkpoint.pt").exists()
    predictor = GroundedSAM(detector=out, segmenter=tiny_sam_dir, device="cpu")
    predictor.set_image(
        np.zeros((96, 128, 3), np.uint8)
    )  # 64x64 leaves a 1x1 level: GroupNorm fails
    predictor.predict("red circle", box_threshold=0.0)  # loads and runs
    before = {p.name: p.stat().st_mtime_ns for p in tiny_gdino_dir.iterdir()}
    with pytest.raises(ValueError, match="never overwritten"):
        fine_tune_grounding_dino(tiny_gdino_dir, annotations, tiny_gdino_dir, config=config)
    with pytest.raises(FileExistsError, match="holds a model"):
        fine_tune_grounding_dino(tiny_gdino_dir, annotations, out, config=config)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_gdino_dir.iterdir()} == before
    with pytest.raises(ValueError, match="negatives"):
        fine_tune_grounding_dino(tiny_gdino_dir, annotations, tmp_path / "x", negatives=-1)


def test_coco_samples_list_present_classes_and_negatives(tiny_gdino_dir, tmp_path, parts):
    from grounded_seg.evaluation import load_coco_dataset
    from grounded_seg.shapes import export_coco, make_scene

    annotations = export_coco(range(3), tmp_path / "coco", size=64)
    dataset = load_coco_dataset(annotations)
    tokenizer, processor = parts
    samples = CocoSamples(dataset, GroundingCollator(tokenizer, processor, 256), 2, 2, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(6):
        sample = samples.sample(rng)
        seed = next(s for s in range(3) if np.array_equal(make_scene(s, 64).image, sample.image))
        scene = make_scene(seed, 64)
        assert set(scene.phrases) <= set(sample.classes)
        assert len(sample.classes) == len(set(scene.phrases)) + 2
        got = sorted(
            (sample.classes[c], tuple(b))
            for c, b in zip(sample.labels, sample.boxes.tolist(), strict=True)
        )
        want = sorted((o.phrase, tuple(o.box.tolist())) for o in scene.objects)
        assert got == want
    a, b = samples.batch(7), samples.batch(7)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(
        a["pixel_values"], b["pixel_values"]
    )
    moved = batch_to(a, torch.device("cpu"))
    assert moved["labels"][0]["boxes"].device.type == "cpu"
    with pytest.raises(ValueError, match="caption tokens"):  # "red circle." spelt out: 8 tokens
        CocoSamples(dataset, GroundingCollator(tokenizer, processor, 8), 2, 2, seed=0)
