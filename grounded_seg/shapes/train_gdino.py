"""Train a small Grounding DINO (``transformers.GroundingDinoForObjectDetection``) on the shapes
world: a caption of phrases in, the boxes of the named shapes out.

Recipe (the parts that matter):

- **Prompts that force reading the text.** Each scene's caption lists some or all of the phrases
  present plus distractors, shuffled: absent phrases, half of them sharing a colour or a shape
  with a present object ("red star" beside a red circle), sometimes words the world never shows
  ("orange circle", "dog"), sometimes all 20 phrases; one scene in ten names nothing present.
  Objects whose phrase the caption does not name are not targets, so boxes follow the words.
- **The lecture's losses on every decoder layer** (``auxiliary_loss``): L1 + GIoU on boxes and the
  token-level contrastive focal loss, plus :func:`grounded_seg.gdino.query_selection_loss`, which
  trains language-guided query selection (transformers' own two-stage term is detached and
  cannot).
- **A small model from scratch** (:func:`new_shapes_gdino`): Swin (embed 48, depths 2-2-2,
  strides 4/8/16 + one extra level) on 128 x 128 scenes, a 2-layer BERT of width 64 over a
  compact WordPiece vocabulary (the shape words, letters for any other word, Grounding DINO's
  special ids in place), d_model 64, 3 encoder and 3 decoder layers, 30 queries, captions up
  to 64 tokens; no dropout (the data are unlimited).

- **A second stage for one-phrase prompts** (``init_from``, ``single_phrase_share``). Users
  mostly name one thing, and one-phrase captions are a few percent of the first stage's data,
  so its scores for them sit low (the right box at 0.2-0.35) and colour alone decides too much
  ("red triangle" fires on a red square). The second stage continues from the first stage's
  weights at a lower rate with 40% of the captions a single phrase, present or absent (a near
  miss sharing a colour or shape in 60% of the absent ones), the rest drawn as before.

Batch ``i`` is a pure function of ``(seed, i)``, so a run is reproducible on any device and
resumes from its checkpoint.

    grounded-seg train shapes --model gdino            # or
    python -m grounded_seg.shapes.train_gdino weights/shapes/gdino --device cuda --workers 12
    grounded-seg train shapes --model gdino --init-from weights/shapes/gdino --overwrite \
        --single-phrase-share 0.4 --learning-rate 1e-4 --steps 1200 --batch-size 32 --seed 7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..gdino import GroundingCollator, TrainConfig, train_grounding_dino
from ..gdino.finetune import CHECKPOINT_FILE, save_grounding_dino
from ..training import environment, write_run
from .gdino_card import card_text, stage_record, write_card
from .gdino_data import (
    IMAGE_SIZE,
    MAX_TEXT_LEN,
    VOCAB_SIZE,
    ShapesBatches,
    check_share,
    shapes_sample,
    single_phrase_sample,
    write_shapes_vocab,
)
from .gdino_eval import evaluate_shapes_gdino, single_phrase_rates
from .world import HELD_OUT_SEEDS, TRAIN_SEEDS

__all__ = [
    "CURVE_SEEDS",
    "FINAL_SEEDS",
    "IMAGE_SIZE",
    "MAX_TEXT_LEN",
    "VOCAB_SIZE",
    "ShapesBatches",
    "evaluate_shapes_gdino",
    "new_shapes_gdino",
    "shapes_gdino_config",
    "shapes_sample",
    "single_phrase_rates",
    "single_phrase_sample",
    "train_shapes_gdino",
    "write_card",
    "write_shapes_vocab",
]

logger = logging.getLogger(__name__)
CURVE_SEEDS = range(HELD_OUT_SEEDS.start + 5000, HELD_OUT_SEEDS.start + 5100)
"""Held-out scenes scored during training (the tests use other held-out seeds)."""
FINAL_SEEDS = range(HELD_OUT_SEEDS.start + 5000, HELD_OUT_SEEDS.start + 5200)
"""Held-out scenes of the final figures in the model card."""


def shapes_gdino_config() -> Any:
    """The model's configuration (about 2.4M parameters)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(
        image_size=IMAGE_SIZE,
        embed_dim=48,
        depths=[2, 2, 2],
        num_heads=[3, 6, 12],
        window_size=4,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3"],
    )
    bert = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=MAX_TEXT_LEN,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        d_model=64,
        num_feature_levels=4,
        encoder_layers=3,
        decoder_layers=3,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_n_points=4,
        decoder_n_points=4,
        num_queries=30,
        max_text_len=MAX_TEXT_LEN,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        fusion_dropout=0.0,
        fusion_droppath=0.0,
        auxiliary_loss=True,
    )


def new_shapes_gdino(seed: int) -> Any:
    """The untrained model, seeded. One change to the default initialisation: the two layer norms
    whose outputs meet the text features in the contrastive class head (decoder output, encoder
    proposals) start with gain ``1/sqrt(d_model)``, so the first token logits are about N(0, 1)
    rather than N(0, d_model) (saturated sigmoids, a first loss in the thousands)."""
    from transformers import GroundingDinoForObjectDetection

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(shapes_gdino_config())
    gain = model.config.d_model**-0.5
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.fill_(gain)
        model.model.enc_output_norm.weight.fill_(gain)
    return model


def _tokenizer_and_processor(folder: Path) -> tuple[Any, Any]:
    from transformers import BertTokenizer, GroundingDinoImageProcessorPil

    vocab = write_shapes_vocab(folder / "vocab.txt")
    tokenizer = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    tokenizer.model_max_length = MAX_TEXT_LEN
    processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE * 5 // 3}
    )
    return tokenizer, processor


def _load_stage_one(folder: Path) -> tuple[Any, list[dict[str, Any]]]:
    """A trained shapes-gdino to continue from, with its training history (``train_log.json``)."""
    from transformers import GroundingDinoForObjectDetection

    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"init_from: expected a trained shapes-gdino folder, got {folder}")
    model = GroundingDinoForObjectDetection.from_pretrained(folder)
    expected = shapes_gdino_config()
    got = model.config
    for name in ("d_model", "num_queries", "max_text_len", "encoder_layers", "decoder_layers"):
        if getattr(got, name) != getattr(expected, name):
            raise ValueError(
                f"init_from: expected a shapes-gdino model ({name}={getattr(expected, name)}), "
                f"got {name}={getattr(got, name)} in {folder}"
            )
    if got.text_config.vocab_size != VOCAB_SIZE:
        raise ValueError(
            f"init_from: expected a shapes-gdino vocabulary of {VOCAB_SIZE} tokens, got "
            f"{got.text_config.vocab_size} in {folder}"
        )
    model.config.auxiliary_loss = True  # every decoder layer is trained
    log = folder / "train_log.json"
    history = json.loads(log.read_text()) if log.is_file() else {}
    stages = history.get("stages") or ([stage_record(history)] if history else [])
    return model, stages


def train_shapes_gdino(
    out_dir: str | Path,
    *,
    steps: int = 2000,
    batch_size: int = 128,
    learning_rate: float = 4e-4,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 2,
    workers: int = 0,
    resume: bool = True,
    evaluate_every: int | None = None,
    stop_at: int | None = None,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    single_phrase_share: float = 0.0,
) -> dict[str, Any]:
    """Train, evaluate on held-out scenes and save ``shapes-gdino`` in ``out_dir``.

    From scratch by default. ``init_from`` (a folder holding a trained shapes-gdino, which may be
    ``out_dir`` itself) starts a further stage from those weights instead: warm-up over 5% of
    the steps, then cosine decay from ``learning_rate``; its training history is carried into
    the new ``train_log.json`` and model card. ``single_phrase_share``: the fraction of samples
    whose caption is one phrase (:func:`single_phrase_sample`). ``evaluate_every``: held-out
    evaluation interval in steps (default a quarter of the run).

    Writes the model (safetensors), tokenizer, image processor, ``train_log.json`` (config,
    curve of loss and held-out metrics against minutes, final figures, every stage) and
    ``MODEL_CARD.md``. A run interrupted after a checkpoint continues from it when ``resume``.
    """
    from ..devices import resolve_device
    from ..predictor import GroundedSAM
    from ..proposers.grounding_dino import GroundingDinoProposer
    from ..segmenters.sam import SamSegmenter

    out = Path(out_dir)
    if (out / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(f"{out} holds a trained model; pass overwrite=True to replace it")
    torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        backbone_lr_scale=1.0,
        weight_decay=1e-4,
        warmup_steps=max(1, steps // 20) if init_from else min(300, steps // 10 + 1),
        grad_clip=0.1,
        seed=seed,
        log_every=max(1, min(100, steps // 20)),
        checkpoint_every=max(1, min(500, steps // 4)),
        workers=workers,
    )
    check_share(single_phrase_share)  # before any file is touched
    if init_from is not None:
        model, stages = _load_stage_one(Path(init_from))
    else:
        model, stages = new_shapes_gdino(seed), []
    model = model.to(torch_device)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, processor = _tokenizer_and_processor(out)
    collator = GroundingCollator(tokenizer, processor, MAX_TEXT_LEN)
    segmenter = SamSegmenter.from_pretrained("shapes-sam", device=torch_device)
    predictor = GroundedSAM(
        detector=GroundingDinoProposer(model, tokenizer, processor), segmenter=segmenter
    )
    # evaluation scenes are exported here; removed however the run ends
    workdir = Path(tempfile.mkdtemp(prefix="shapes-gdino-"))
    try:

        def evaluate(step: int) -> dict[str, float]:
            return evaluate_shapes_gdino(predictor, CURVE_SEEDS, workdir)

        result = train_grounding_dino(
            model,
            ShapesBatches(collator, batch_size, seed, single_phrase_share),
            config,
            checkpoint_dir=out,
            resume=resume,
            evaluate=evaluate,
            evaluate_every=evaluate_every or max(1, steps // 4),
            stop_at=stop_at,
            settings={"single_phrase_share": single_phrase_share},
        )
        if "stopped_at" in result:
            logger.info("stopped at step %d; run again to resume", result["stopped_at"])
            return result
        model.config.auxiliary_loss = False  # inference does not need it
        save_grounding_dino(model.cpu(), tokenizer, processor, out)
        model.to(torch_device)
        final = evaluate_shapes_gdino(predictor, FINAL_SEEDS, workdir)
        stage = stage_record(
            {
                **environment(torch_device),
                "config": dataclasses.asdict(config),
                **({"init_from": str(init_from)} if init_from is not None else {}),
                "single_phrase_share": single_phrase_share,
                "train_seconds": result["seconds"],
                "resumed_at": result["resumed_at"],
                "curve": result["curve"],
            }
        )
        stages = [*stages, stage]
        report = {
            "model": "shapes-gdino",
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seeds": f"drawn from range({TRAIN_SEEDS.start}, {TRAIN_SEEDS.stop})",
            "curve_seeds": f"range({CURVE_SEEDS.start}, {CURVE_SEEDS.stop})",
            "final_seeds": f"range({FINAL_SEEDS.start}, {FINAL_SEEDS.stop})",
            **stage,  # the last stage's fields at the top level, as a one-stage log has them
            "train_seconds": round(sum(s["train_seconds"] for s in stages), 1),
            "final": final,
            "stages": stages,
        }
        write_run(out, report, card_text(report))
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
        logger.info("final %s after %.0f s", final, result["seconds"])
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the shapes-world Grounding DINO.")
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=4e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--evaluate-every", type=int, default=None)
    parser.add_argument("--init-from", default=None, help="continue from a trained shapes-gdino")
    parser.add_argument("--single-phrase-share", type=float, default=0.0)
    parser.add_argument("--stop-at", type=int, default=None, help="end this run after that step")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = train_shapes_gdino(
        args.out_dir, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, device=args.device,
        threads=args.threads, workers=args.workers, evaluate_every=args.evaluate_every,
        stop_at=args.stop_at, overwrite=args.overwrite, init_from=args.init_from,
        single_phrase_share=args.single_phrase_share,
    )  # fmt: skip
    logger.info("%s", json.dumps(report.get("final", {"stopped_at": report.get("stopped_at")})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
