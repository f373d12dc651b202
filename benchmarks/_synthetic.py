"""The full-size random-weight models and the synthetic test image the benchmarks share.

Grounding DINO Swin-T (``GroundingDinoConfig()`` defaults, BERT-base text encoder) and SAM ViT-B
(``SamConfig()`` defaults), built with random weights in a child process and saved once in the
Hugging Face format, so that ``GroundedSAM`` loads them from folders as it would real
checkpoints. Why the two weight-scale corrections (``DECODER_NORM_SCALE``,
``SAM_VISION_INIT_STD``): ``e2e_cpu.py``'s docstring.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _machine import set_offline_env

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
GDINO_DIR = "grounding-dino-swin-t-random"
SAM_DIR = "sam-vit-b-random"
META_FILE = "models.json"
IMAGE_HEIGHT, IMAGE_WIDTH = 800, 1200
DECODER_NORM_SCALE = 0.05  # de-saturates Grounding DINO's random token logits (e2e_cpu.py)
SAM_VISION_INIT_STD = 0.02  # instead of SamVisionConfig's 1e-10 (subnormals; e2e_cpu.py)
RECIPE_VERSION = 2  # bump when the way the random models are made changes: they are rebuilt


def find_vocab(explicit: Path | None) -> Path:
    """The real bert-base-uncased ``vocab.txt`` (30522 entries)."""
    if explicit is not None:
        path = explicit
    else:  # the tests' copy, rebuilt and checked from a small package (tests/bert_vocab.py)
        sys.path.insert(0, str(HERE.parent / "tests"))
        from bert_vocab import write_bert_vocab

        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "grounded-seg-bert-vocab"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            path = write_bert_vocab(folder)
        except FileNotFoundError as err:
            raise SystemExit(
                f"{err}; or pass --vocab path/to/bert-base-uncased/vocab.txt"
            ) from None
    if not path.is_file():
        raise SystemExit(f"vocabulary not found: {path}")
    return path


def recipe(seed: int) -> dict[str, Any]:
    """What the saved models depend on; a folder made with another recipe is rebuilt."""
    return {
        "version": RECIPE_VERSION,
        "seed": seed,
        "decoder_norm_scale": DECODER_NORM_SCALE,
        "sam_vision_init_std": SAM_VISION_INIT_STD,
    }


def random_sam_vit_b(seed: int) -> Any:
    """SAM ViT-B (``SamConfig()`` defaults) with random weights at the scale of real ones: the
    image encoder's Linear/Conv weights drawn from N(0, ``SAM_VISION_INIT_STD``)."""
    import torch
    from transformers import SamConfig, SamModel

    torch.manual_seed(seed)
    model = SamModel(SamConfig()).eval()
    with torch.no_grad():
        for module in model.vision_encoder.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0.0, SAM_VISION_INIT_STD)
    return model


def build_models(out_dir: str, seed: int, vocab: str, threads: int) -> None:
    """Build both random full-size models and save them (runs in a child process)."""
    set_offline_env(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import torch
    import transformers
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        SamImageProcessorPil,
    )

    torch.set_num_threads(threads)
    out = Path(out_dir)
    params: dict[str, int] = {}

    folder = out / GDINO_DIR
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("building Grounding DINO Swin-T (random weights, seed %d) in %s", seed, folder)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    with torch.no_grad():
        norm = model.model.decoder.layer_norm
        norm.weight.mul_(DECODER_NORM_SCALE)
        norm.bias.mul_(DECODER_NORM_SCALE)
    params["detector"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(folder)
    GroundingDinoImageProcessorPil().save_pretrained(folder)

    folder = out / SAM_DIR
    shutil.rmtree(folder, ignore_errors=True)
    logger.info("building SAM ViT-B (random weights, seed %d) in %s", seed, folder)
    model = random_sam_vit_b(seed)
    params["segmenter"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    SamImageProcessorPil().save_pretrained(folder)

    meta = {"recipe": recipe(seed), "transformers": transformers.__version__, "params": params}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")  # written last: "complete"


def ensure_models(out_dir: Path, seed: int, vocab: Path, threads: int) -> tuple[Path, Path]:
    """The two model folders, built in a child process unless a complete set of this recipe exists.

    Building in a child keeps the random initialisation out of this process's peak RSS.
    """
    gdino, sam = out_dir / GDINO_DIR, out_dir / SAM_DIR
    meta_path = out_dir / META_FILE
    complete = meta_path.is_file() and all(
        (folder / name).is_file()
        for folder in (gdino, sam)
        for name in ("config.json", "model.safetensors", "preprocessor_config.json")
    )
    if complete and json.loads(meta_path.read_text()).get("recipe") == recipe(seed):
        logger.info("reusing the random models in %s", out_dir)
        return gdino, sam
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    start = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=build_models, args=(str(out_dir), seed, str(vocab), threads)
    )
    child.start()
    child.join()
    if child.exitcode != 0 or not meta_path.is_file():
        raise SystemExit(f"building the random models failed (exit code {child.exitcode})")
    logger.info("built and saved both models in %.1f s", time.perf_counter() - start)
    return gdino, sam


def make_image(seed: int, height: int = IMAGE_HEIGHT, width: int = IMAGE_WIDTH) -> Any:
    """A deterministic RGB uint8 ``(height, width, 3)`` image: coloured shapes on a noisy ramp."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([xx / width, yy / height, 1 - xx / width], axis=-1) * 120 + 40
    noise = rng.normal(0, 25, (height, width, 3)).astype(np.float32)
    image = np.clip(gradient + noise, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (80, 90), (420, 500), (210, 40, 40), thickness=-1)
    cv2.circle(image, (700, 300), 170, (40, 180, 60), thickness=-1)
    cv2.ellipse(image, (960, 580), (180, 110), 25, 0, 360, (50, 70, 220), thickness=-1)
    triangle = np.array([[300, 760], [560, 520], [640, 780]], np.int32)
    cv2.fillPoly(image, [triangle], (230, 210, 40))
    cv2.rectangle(image, (880, 60), (1150, 260), (150, 60, 170), thickness=-1)
    return np.ascontiguousarray(image)
