"""CLIP's contrastive loss, the image-caption folder, and fine-tuning a tiny CLIP offline."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grounded_seg.clip import (
    REPORT_FILE,
    FineTuneReport,
    ImageCaptionFolder,
    caption_batches,
    caption_key,
    contrastive_loss,
    fine_tune_clip,
)

from tiny_clip import IMAGE_SIZE

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 210, 30),
}
SHAPES = ("circle", "square")
CAPTIONS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]  # 8 distinct


def shape_image(colour: str, shape: str, rng: np.random.Generator) -> np.ndarray:
    """A grey ``IMAGE_SIZE`` square RGB uint8 image with one coloured shape at a random place."""
    side = IMAGE_SIZE
    image = np.full((side, side, 3), 128, np.uint8)
    radius = int(rng.integers(6, 11))
    cy, cx = rng.integers(radius + 1, side - radius - 1, size=2)
    yy, xx = np.mgrid[:side, :side]
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        mask = (abs(yy - cy) <= 0.8 * radius) & (abs(xx - cx) <= 0.8 * radius)
    image[mask] = COLOURS[colour]
    return image


def write_shapes(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` PNGs with sidecar captions, cycling through the 8 captions."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        caption = CAPTIONS[i % len(CAPTIONS)]
        _, colour, shape = caption.split()
        Image.fromarray(shape_image(colour, shape, rng)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(caption, encoding="utf-8")
    return folder


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((5, 7, 3), colour, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these models are tiny, and on a busy 2-core machine two OpenMP threads
    spin against other processes (the fine-tuning test ran 5-10x slower that way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), 96)


# --------------------------------------------------------------------------- the loss


def test_loss_equals_clip_model_loss(tiny_clip_dir):
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    with torch.no_grad():
        model.logit_scale.fill_(1.7)  # not the default, to see that the scale is used as a log
    processor = AutoProcessor.from_pretrained(tiny_clip_dir)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(5)]
    texts = ["a red circle", "a blue square", "a photo", "green", "a yellow circle on grey"]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs, return_loss=True).loss
        image_emb = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_emb = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
        loss = contrastive_loss(image_emb, text_emb, model.logit_scale)
    assert image_emb.shape == text_emb.shape == (5, 32)
    assert loss.ndim == 0
    assert abs(float(loss) - float(expected)) < 1e-6
    assert float(loss) > 0


def test_loss_2x2_by_hand():
    # images (1, 0) and (0, 1); captions (1, 0) and (1, 1) -> (1, 1)/sqrt(2) once normalised.
    # With logit_scale = log(1) = 0 the logits are the cosines: [[1, s], [0, s]], s = 1/sqrt(2).
    # rows:    -log softmax([1, s])[0] = log(1 + e^(s - 1)), -log softmax([0, s])[1] = log(1 + e^-s)
    # columns: -log softmax([1, 0])[0] = log(1 + e^-1),      -log softmax([s, s])[1] = log 2
    s = 1 / math.sqrt(2)
    rows = (math.log1p(math.exp(s - 1)) + math.log1p(math.exp(-s))) / 2
    columns = (math.log1p(math.exp(-1)) + math.log(2)) / 2
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    loss = contrastive_loss(image, text, 0.0)
    assert float(loss) == pytest.approx((rows + columns) / 2, abs=1e-12)
    # Scaling an embedding does not change the loss (both sides are L2-normalised inside).
    assert float(contrastive_loss(3 * image, 0.5 * text, 0.0)) == pytest.approx(float(loss))
    # logit_scale is a log: log(2) doubles the logits.
    doubled = (
        math.log1p(math.exp(2 * (s - 1)))
        + math.log1p(math.exp(-2 * s))
        + math.log1p(math.exp(-2))
        + math.log(2)
    ) / 4
    assert float(contrastive_loss(image, text, math.log(2))) == pytest.approx(doubled, abs=1e-12)


def _aligned_batch(n: int = 6, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Six pairs; each image embedding is its caption's plus noise (cosine about 0.9)."""
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(n, d, generator=generator, dtype=torch.float64)
    image = text + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return image, text


def test_aligned_batch_has_lower_loss_than_shuffled():
    image, text = _aligned_batch()
    shuffled = text.roll(1, dims=0)  # every image paired with another image's caption
    aligned_loss = float(contrastive_loss(image, text, math.log(1 / 0.07)))
    shuffled_loss = float(contrastive_loss(image, shuffled, math.log(1 / 0.07)))
    assert aligned_loss < 0.5 < math.log(6) < shuffled_loss


def test_larger_logit_scale_sharpens_an_aligned_batch():
    image, text = _aligned_batch()
    scales = [0.0, 1.0, 2.0, math.log(1 / 0.07), 3.5]
    losses = [float(contrastive_loss(image, text, scale)) for scale in scales]
    assert all(a > b for a, b in itertools.pairwise(losses)), losses
    assert losses[0] > 1.0 and losses[-1] < 1e-6
    assert float(contrastive_loss(image, text, math.log(100))) <= losses[-1]  # 0 in float64


def test_logit_scale_tensor_is_learnable_and_equals_the_float():
    image, text = _aligned_batch()
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(image, text, scale)
    loss.backward()
    expected = float(contrastive_loss(image, text, 1.3))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-12)
    assert scale.grad is not None and float(scale.grad) < 0  # sharper helps an aligned batch


def test_single_pair_has_zero_loss():
    assert float(contrastive_loss(torch.randn(1, 4), torch.randn(1, 4), 2.0)) == 0.0


@pytest.mark.parametrize(
    ("image", "text", "scale", "error", "words"),
    [
        (torch.zeros(4), torch.zeros(4), 0.0, ValueError, "expected shape (N, D), got (4,)"),
        (torch.zeros(2, 3), torch.zeros(3, 3), 0.0, ValueError, "got (2, 3) and (3, 3)"),
        (torch.zeros(0, 3), torch.zeros(0, 3), 0.0, ValueError, "N, D >= 1, got (0, 3)"),
        (np.zeros((2, 3)), torch.zeros(2, 3), 0.0, TypeError, "expected a torch.Tensor"),
        (torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2), ValueError, "expected one value"),
        (torch.ones(2, 3), torch.ones(2, 3), "2.6", TypeError, "expected a float or a tensor"),
    ],
)
def test_loss_rejects_bad_inputs(image, text, scale, error, words):
    with pytest.raises(error) as info:
        contrastive_loss(image, text, scale)
    assert words in str(info.value)


# --------------------------------------------------------------------------- the data


def test_folder_with_sidecar_captions(tmp_path):
    _png(tmp_path / "b.png", (0, 0, 255))
    (tmp_path / "b.txt").write_text("  a blue square\n", encoding="utf-8")
    _png(tmp_path / "sub" / "a.JPG", (255, 0, 0))
    (tmp_path / "sub" / "a.txt").write_text("a red circle", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not an image")
    data = ImageCaptionFolder(tmp_path)
    assert len(data) == 2 and data.source == "sidecar"
    assert data.files == [tmp_path / "b.png", tmp_path / "sub" / "a.JPG"]
    image, caption = data[0]
    assert caption == "a blue square"
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3)
    assert tuple(image[0, 0]) == (0, 0, 255)


def test_folder_with_jsonl_captions_wins_over_sidecars(tmp_path):
    _png(tmp_path / "images" / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "y.txt").write_text("ignored: the jsonl wins")
    lines = [
        {"file": "images/x.png", "caption": "a red thing"},
        {"file": "images/x.png", "caption": "red"},  # one image, two captions
        {"file": "y.png", "caption": "something"},
    ]
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8"
    )
    data = ImageCaptionFolder(str(tmp_path))
    assert data.source == "jsonl"
    assert data.captions == ["a red thing", "red", "something"]
    assert data.files[:2] == [tmp_path / "images" / "x.png"] * 2
    assert data[2][1] == "something"


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageCaptionFolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image-caption pairs"):
        ImageCaptionFolder(tmp_path / "empty")

    no_caption = tmp_path / "no_caption"
    _png(no_caption / "cat.png")
    with pytest.raises(ValueError, match=r"cat\.png has no caption: expected cat\.txt"):
        ImageCaptionFolder(no_caption)

    blank = tmp_path / "blank"
    _png(blank / "dog.webp")
    (blank / "dog.txt").write_text(" \n\t")
    with pytest.raises(ValueError, match=r"empty caption in .*dog\.txt"):
        ImageCaptionFolder(blank)


@pytest.mark.parametrize(
    ("line", "error", "words"),
    [
        ({"file": "gone.png", "caption": "a cat"}, FileNotFoundError, "'gone.png' not found"),
        ({"file": "ok.png", "caption": "   "}, ValueError, "empty caption for image 'ok.png'"),
        ({"file": "ok.png"}, ValueError, 'expected a "caption" string'),
        ({"caption": "a cat"}, ValueError, 'expected a "file" string'),
        ({"file": "ok.txt", "caption": "a cat"}, ValueError, "'ok.txt' is not an image"),
        ("[1, 2]", ValueError, "expected a JSON object"),
        ("{not json", ValueError, "not valid JSON"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, error, words):
    _png(tmp_path / "ok.png")
    text = line if isinstance(line, str) else json.dumps(line)
    good = json.dumps({"file": "ok.png", "caption": "fine"})
    (tmp_path / "captions.jsonl").write_text(f"{good}\n{text}\n", encoding="utf-8")
    with pytest.raises(error) as info:
        ImageCaptionFolder(tmp_path)
    assert words in str(info.value)
    assert "captions.jsonl, line 2" in str(info.value)


def test_empty_jsonl_is_an_error(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "captions.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"no image-caption pairs in .*captions\.jsonl"):
        ImageCaptionFolder(tmp_path)


def test_batches_never_repeat_a_caption_or_an_image():
    captions = ["a cat", "A  cat", "a dog", "a dog", "a bird", "a cow", "a cat ", "a fish"] * 3
    files = [f"img{i % 10}.png" for i in range(len(captions))]
    batches = caption_batches(captions, 4, seed=3, groups=files)
    seen = [i for batch in batches for i in batch]
    assert len(seen) == len(set(seen))
    assert all(2 <= len(batch) <= 4 for batch in batches)
    for batch in batches:
        keys = [caption_key(captions[i]) for i in batch]
        assert len(set(keys)) == len(keys), keys
        assert len({files[i] for i in batch}) == len(batch)
    # Nothing is dropped except pairs left alone in a batch of one.
    assert len(seen) >= 20
    assert caption_batches(captions, 4, seed=3, groups=files) == batches  # seeded
    assert max(len(b) for b in caption_batches(captions, 32)) == 5  # 5 distinct captions


# --------------------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def fine_tuned(tiny_clip_dir, shapes_dir, tmp_path_factory) -> tuple[FineTuneReport, Path]:
    out = tmp_path_factory.mktemp("fine-tuned") / "clip-shapes"
    report = fine_tune_clip(
        tiny_clip_dir,
        shapes_dir,
        out,
        epochs=8,
        batch_size=8,
        learning_rate=1e-3,
        val_fraction=0.25,
        seed=0,
        device="cpu",
    )
    return report, out


def test_fine_tuning_lowers_the_loss_and_raises_zero_shot_accuracy(fine_tuned):
    report, out = fine_tuned
    assert (report.n_train, report.n_val, report.n_val_captions) == (72, 24, 8)
    assert len(report.train_losses) == 8
    first, last = report.train_losses[0], report.train_losses[-1]
    assert last < 0.6 * first, report.train_losses  # a clear fall, not noise
    assert report.val_loss_after < 0.6 * report.val_loss_before
    chance = 1 / report.n_val_captions
    assert report.val_accuracy_after > report.val_accuracy_before
    assert report.val_accuracy_after >= 3 * chance, report  # well above chance (0.125)
    assert report.logit_scale_after <= 100 + 1e-3
    assert 0 < report.seconds < 120
    saved = FineTuneReport.from_json(out)
    assert saved == report


def test_fine_tuned_model_loads_strictly_and_differs_from_the_start(fine_tuned, tiny_clip_dir):
    from transformers import AutoProcessor, CLIPModel

    from grounded_seg._loading import load_config, load_model
    from grounded_seg.registry import resolve_model

    _, out = fine_tuned
    assert (out / REPORT_FILE).is_file()
    source = resolve_model(out, "detector")
    config = load_config(source, "clip", "clip model")
    model = load_model(source, CLIPModel, config, "clip model", torch.device("cpu"))
    start = CLIPModel.from_pretrained(tiny_clip_dir)
    assert not torch.equal(model.visual_projection.weight, start.visual_projection.weight)
    processor = AutoProcessor.from_pretrained(out)
    inputs = processor(text=["a red circle"], return_tensors="pt")
    assert inputs["input_ids"].shape == (1, 5)


def test_a_previous_output_may_be_reused(fine_tuned, tiny_clip_dir, shapes_dir, tmp_path):
    report, out = fine_tuned
    again = tmp_path / "again"
    shutil.copytree(out, again)
    second = fine_tune_clip(
        tiny_clip_dir, shapes_dir, again, epochs=1, batch_size=8, val_fraction=0.25, device="cpu"
    )
    # Same start, same split and same held-out batches: the "before" numbers are reproduced.
    assert second.val_loss_before == pytest.approx(report.val_loss_before, abs=1e-6)
    assert second.val_accuracy_before == report.val_accuracy_before
    assert FineTuneReport.from_json(again).epochs == 1


def test_refuses_to_write_into_the_source_model(tiny_clip_dir, shapes_dir):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_clip_dir.iterdir()}
    with pytest.raises(ValueError, match="folder of the checkpoint being fine-tuned"):
        fine_tune_clip(tiny_clip_dir, shapes_dir, tiny_clip_dir, epochs=1, device="cpu")
    assert {p.name: p.stat().st_mtime_ns for p in tiny_clip_dir.iterdir()} == before


def test_refuses_a_non_empty_unrelated_folder(tiny_clip_dir, shapes_dir, tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        fine_tune_clip(tiny_clip_dir, shapes_dir, tmp_path, epochs=1, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_rejects_a_model_that_is_not_clip(shapes_dir, tmp_path):
    from transformers import BertConfig

    from grounded_seg.errors import InvalidWeightsError

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(InvalidWeightsError, match="expected a 'clip' model"):
        fine_tune_clip(tmp_path / "bert", shapes_dir, tmp_path / "out", epochs=1, device="cpu")


def test_rejects_data_with_one_distinct_caption(tiny_clip_dir, tmp_path):
    data = tmp_path / "same"
    for i in range(6):
        _png(data / f"{i}.png")
        (data / f"{i}.txt").write_text("A red  thing" if i % 2 else "a red thing")
    with pytest.raises(ValueError, match="single distinct caption"):
        fine_tune_clip(tiny_clip_dir, data, tmp_path / "out", val_fraction=0.5, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"epochs": 0}, "epochs: expected an int >= 1"),
        ({"batch_size": 1}, "batch_size: expected an int >= 2"),
        ({"learning_rate": 0.0}, "learning_rate: expected a number > 0"),
        ({"val_fraction": 1.0}, "val_fraction: expected a number in (0, 1)"),
        ({"val_fraction": 0.01}, "expected at least 2 of each"),
    ],
)
def test_rejects_bad_arguments(tiny_clip_dir, shapes_dir, tmp_path, kwargs, words):
    with pytest.raises(ValueError) as info:
        fine_tune_clip(tiny_clip_dir, shapes_dir, tmp_path / "out", device="cpu", **kwargs)
    assert words in str(info.value)
