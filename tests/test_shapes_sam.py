"""The bundled shapes-world SAM: trained by grounded_seg, accurate from ground-truth boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from grounded_seg.segmenters.sam import SamSegmenter
from grounded_seg.shapes import HELD_OUT_SEEDS
from grounded_seg.shapes import train_sam as training
from grounded_seg.shapes.train_sam import evaluate_sam, train_shapes_sam

EVAL_SEEDS = range(HELD_OUT_SEEDS.start + 5000, HELD_OUT_SEEDS.start + 5060)  # 60 fixed scenes


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# the same accuracy on the GPU (skipped without CUDA, see conftest.py)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_bundled_sam_masks_from_true_boxes(one_thread, device):
    segmenter = SamSegmenter.from_pretrained("shapes-sam", device=device)  # found in weights/shapes
    mean_iou = evaluate_sam(segmenter, EVAL_SEEDS)
    assert mean_iou >= 0.85, mean_iou


def test_training_reduces_the_loss_and_resumes_exactly(tmp_path, monkeypatch, one_thread):
    kwargs = dict(steps=6, batch_size=2, log_every=3, eval_scenes=2, seed=3)
    whole = train_shapes_sam(tmp_path / "whole", **kwargs)
    assert [row["step"] for row in whole["curve"]] == [3, 6]

    real_batch = training._batch
    calls = {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # step 5: after the checkpoint written at step 3
            raise KeyboardInterrupt
        return real_batch(*args, **kw)

    monkeypatch.setattr(training, "_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_shapes_sam(tmp_path / "resumed", **kwargs)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    monkeypatch.setattr(training, "_batch", real_batch)
    resumed = train_shapes_sam(tmp_path / "resumed", **kwargs)
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert [r["loss"] for r in resumed["curve"]] == [r["loss"] for r in whole["curve"]]
    assert (tmp_path / "whole" / "MODEL_CARD.md").read_text().startswith("# shapes-sam")


def test_a_finished_model_is_not_overwritten(tmp_path, one_thread):
    (tmp_path / "model.safetensors").write_bytes(b"trained")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_shapes_sam(tmp_path, steps=1)
    assert (tmp_path / "model.safetensors").read_bytes() == b"trained"


def test_loss_pieces_known_answers():
    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2] = True
    perfect = torch.where(target, 20.0, -20.0)
    mask_loss, iou_loss, iou = training._losses(perfect, target, torch.tensor([1.0]))
    assert float(iou) == 1.0 and float(iou_loss) == 0.0 and float(mask_loss) < 1e-3
    wrong = -perfect
    mask_loss_wrong, iou_loss_wrong, iou_wrong = training._losses(
        wrong, target, torch.tensor([1.0])
    )
    assert float(iou_wrong) == 0.0 and float(iou_loss_wrong) == 1.0
    assert float(mask_loss_wrong) > 1.0 > float(mask_loss)
    np.testing.assert_allclose(
        float(training._losses(perfect, target, torch.tensor([0.5]))[1]), 0.25
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",  # killed before the first byte
        b"PK\x03\x04 truncated zip",
        # a pickle that would run code if loaded unsafely (weights_only refuses it)
        b"cos\nsystem\n(S'echo pwned'\ntR.",
    ],
)
def test_a_bad_checkpoint_says_how_to_start_over(tmp_path, one_thread, content):
    from grounded_seg.cli import main

    (tmp_path / "checkpoint.pt").write_bytes(content)
    kwargs = dict(steps=2, batch_size=1, log_every=1, eval_scenes=1, seed=3)
    with pytest.raises(ValueError, match=r"checkpoint\.pt is not a readable training checkpoint"):
        train_shapes_sam(tmp_path, **kwargs)
    rc = main(["train", "shapes", "--model", "sam", "--out", str(tmp_path), "--steps", "2"])
    assert rc == 2  # the CLI prints the message instead of an unpickling traceback
    assert train_shapes_sam(tmp_path, resume=False, **kwargs)["steps"] == 2  # --restart


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch, one_thread):
    """A run killed while saving keeps the previous checkpoint (it used to be written in place)."""
    from grounded_seg import checkpoints

    state = {"step": torch.tensor(3), "curve": [1.0, 2.0]}
    path = checkpoints.save_checkpoint(state, tmp_path / "checkpoint.pt")
    before = path.read_bytes()

    def killed_mid_save(obj, handle):
        handle.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint({"step": torch.tensor(4)}, path)
    assert path.read_bytes() == before
    assert int(checkpoints.load_checkpoint(path)["step"]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
