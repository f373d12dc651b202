"""Shared fixtures: tiny offline models, the real BERT vocabulary, and test images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from bert_vocab import write_bert_vocab

from tiny_clip import save_tiny_clip
from tiny_models import save_tiny_gdino, save_tiny_sam, write_vocab

pytest_plugins = ("oracle_helpers",)  # the oracle_python fixture of the parity tests

# In CI every test must run: a missing optional test input is a failure there, not a skip.
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# The files whose tests bind to torch or transformers internals (the installed equivalents, the
# video sessions, the official-checkpoint mappings) or depend on their numerics (training, the
# bundled models' answers): marked `stack`, they also run on the newest and the floor stacks
# (scripts/stacks.sh, .ci/run). The rest exercise grounded_seg's own code on top of them; the
# parity tests compare with the official packages, whose side does not change with the stack.
STACK_FILES = frozenset(
    {
        "test_deformable_attention.py",
        "test_fusion.py",
        "test_equivalents_fallback.py",
        "test_gdino_training.py",
        "test_training_core.py",
        "test_sam.py",
        "test_grounding_dino.py",
        "test_mm_grounding_dino.py",
        "test_sam2.py",
        "test_sam_hq.py",
        "test_owlv2.py",
        "test_sam3.py",
        "test_video_sam2.py",
        "test_video_sam3.py",
        "test_shapes_e2e.py",
        "test_pipeline.py",
        "test_precision.py",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in STACK_FILES:
            item.add_marker(pytest.mark.stack)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a model hub; a hub lookup fails at once instead of retrying."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GROUNDED_SEG_WEIGHTS", "/nonexistent-grounded-seg-weights")


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture(scope="session")
def tiny_gdino_dir(tmp_path_factory, vocab_file) -> Path:
    return save_tiny_gdino(tmp_path_factory.mktemp("tiny-gdino"), vocab_file)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("tiny-sam"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def bert_vocab_file(tmp_path_factory) -> Path:
    """The real bert-base-uncased WordPiece vocabulary, rebuilt and checked (see bert_vocab.py)."""
    try:
        return write_bert_vocab(tmp_path_factory.mktemp("bert-vocab"))
    except FileNotFoundError as err:
        if STRICT:
            pytest.fail(f"CI needs the real BERT vocabulary: {err}")
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def bert_tokenizer(bert_vocab_file):
    from transformers import BertTokenizer

    return BertTokenizer(vocab=str(bert_vocab_file), do_lower_case=True)


@pytest.fixture
def scene() -> np.ndarray:
    """A 90 x 120 RGB uint8 scene: grey background, a red square and a blue rectangle."""
    image = np.full((90, 120, 3), 128, np.uint8)
    image[10:40, 15:45] = (220, 30, 30)
    image[50:80, 60:110] = (30, 30, 220)
    return image
