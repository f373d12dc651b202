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
import platform
import shutil
import string
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..gdino import GroundingCollator, GroundingSample, TrainConfig, train_grounding_dino
from ..gdino.finetune import CHECKPOINT_FILE, save_grounding_dino
from .world import COLORS, HELD_OUT_SEEDS, PHRASES, SHAPES, TRAIN_SEEDS, make_scene

logger = logging.getLogger(__name__)

IMAGE_SIZE = 128
MAX_TEXT_LEN = 64  # tokens: all 20 phrases take 62 with [CLS] and [SEP]
VOCAB_SIZE = 1100
OTHER_COLORS = ("orange", "black", "white", "pink", "brown", "grey")
OTHER_SHAPES = ("hexagon", "heart", "cross", "oval", "ring")
OTHER_THINGS = ("dog", "cat", "person", "car", "tree", "cup", "house", "bird")
CURVE_SEEDS = range(HELD_OUT_SEEDS.start + 5000, HELD_OUT_SEEDS.start + 5100)
"""Held-out scenes scored during training (the tests use other held-out seeds)."""
FINAL_SEEDS = range(HELD_OUT_SEEDS.start + 5000, HELD_OUT_SEEDS.start + 5200)
"""Held-out scenes of the final figures in the model card."""


def write_shapes_vocab(path: Path) -> Path:
    """A ``vocab.txt`` of :data:`VOCAB_SIZE` WordPiece entries: Grounding DINO's special ids in
    place (0 [PAD], 100 [UNK], 101 [CLS], 102 [SEP], 103 [MASK], 1012 ".", 1029 "?"), the
    world's words, "a"/"an"/"the"/"##s", and single letters and digits so that any other word
    tokenises (into letters) rather than into [UNK]."""
    vocab = [f"[unused{i}]" for i in range(VOCAB_SIZE)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]",
                         1012: ".", 1029: "?"}.items():  # fmt: skip
        vocab[index] = token
    words = [*COLORS, *SHAPES, "a", "an", "the", "and", "of", "##s", "##es"]
    pieces = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    pieces += list(string.digits) + [f"##{d}" for d in string.digits] + list(",-!'()/&")
    for offset, token in enumerate(words + pieces):
        vocab[200 + offset] = token
    path.write_text("\n".join(vocab) + "\n")
    return path


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


def _other_phrase(rng: np.random.Generator) -> str:
    kind = rng.integers(3)
    if kind == 0:
        return f"{rng.choice(OTHER_COLORS)} {rng.choice(SHAPES)}"
    if kind == 1:
        return f"{rng.choice(list(COLORS))} {rng.choice(OTHER_SHAPES)}"
    return str(rng.choice(OTHER_THINGS))


def _near_misses(present: Sequence[str], absent: Sequence[str]) -> list[str]:
    """The absent phrases sharing a colour or a shape with a present one ("red star" beside a
    red circle): the distractors a model that reads only one word gets wrong."""
    colours = {p.split()[0] for p in present}
    shapes = {p.split()[1] for p in present}
    return [p for p in absent if p.split()[0] in colours or p.split()[1] in shapes]


def shapes_sample(rng: np.random.Generator) -> GroundingSample:
    """One training scene and its caption (see the module's recipe)."""
    scene = make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)), IMAGE_SIZE)
    present = sorted(set(scene.phrases))
    absent = [p for p in PHRASES if p not in present]
    roll = rng.random()
    if roll < 0.15:  # everything the world has, as in grounded-seg eval
        listed = list(PHRASES)
    else:
        if roll < 0.25:
            named: list[str] = []
        elif roll < 0.6:
            named = present
        else:
            k = int(rng.integers(1, len(present) + 1))
            named = [str(p) for p in rng.choice(present, k, replace=False)]
        hard = _near_misses(present, absent)
        easy = [p for p in absent if p not in hard]
        count = int(rng.integers(0 if named else 1, 6))
        distractors: list[str] = []
        for _ in range(count):
            pool = hard if (hard and rng.random() < 0.6) or not easy else easy
            pool = [p for p in pool if p not in distractors]
            if pool:
                distractors.append(str(rng.choice(pool)))
        if rng.random() < 0.3:
            other = _other_phrase(rng)
            if other not in distractors:
                distractors.append(other)
        listed = list(named) + distractors
    order = [listed[i] for i in rng.permutation(len(listed))]
    return _sample(scene, order)


def single_phrase_sample(rng: np.random.Generator) -> GroundingSample:
    """One training scene and a caption of one phrase, as users mostly prompt: half the time a
    phrase present in the scene (every object of it is a target), else an absent one (60% a near
    miss sharing a colour or shape with a present object, 10% words the world never shows, the
    rest any absent phrase), which must return nothing."""
    scene = make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)), IMAGE_SIZE)
    present = sorted(set(scene.phrases))
    if rng.random() < 0.5:
        return _sample(scene, [str(rng.choice(present))])
    absent = [p for p in PHRASES if p not in present]
    hard = _near_misses(present, absent)
    roll = rng.random()
    if hard and roll < 0.6:
        phrase = str(rng.choice(hard))
    elif roll > 0.9:
        phrase = _other_phrase(rng)
    else:
        phrase = str(rng.choice(absent))
    return _sample(scene, [phrase])


def _sample(scene: Any, caption: Sequence[str]) -> GroundingSample:
    """``scene`` with its caption's phrases; the targets are the objects those phrases name."""
    where = {p: i for i, p in enumerate(caption)}
    keep = [i for i, obj in enumerate(scene.objects) if obj.phrase in where]
    return GroundingSample(
        scene.image,
        tuple(caption),
        scene.boxes[keep] if keep else np.zeros((0, 4), np.float32),
        np.array([where[scene.objects[i].phrase] for i in keep], np.int64),
    )


def _check_share(share: float) -> None:
    ok = isinstance(share, int | float) and not isinstance(share, bool) and 0.0 <= share <= 1.0
    if not ok:
        raise ValueError(f"single_phrase_share: expected a number in [0, 1], got {share!r}")


class ShapesBatches:
    """``batch(step)``: ``batch_size`` samples drawn with ``default_rng([seed, step])``; each is a
    :func:`single_phrase_sample` with probability ``single_phrase_share``, else a
    :func:`shapes_sample` (with share 0 no draw decides, so the stream is the first stage's)."""

    def __init__(
        self,
        collator: GroundingCollator,
        batch_size: int,
        seed: int,
        single_phrase_share: float = 0.0,
    ) -> None:
        _check_share(single_phrase_share)
        self.collator, self.batch_size, self.seed = collator, batch_size, seed
        self.single_phrase_share = single_phrase_share

    def sample(self, rng: np.random.Generator) -> GroundingSample:
        if self.single_phrase_share and rng.random() < self.single_phrase_share:
            return single_phrase_sample(rng)
        return shapes_sample(rng)

    def __call__(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, step])
        return self.collator([self.sample(rng) for _ in range(self.batch_size)])


def single_phrase_rates(predictor: Any, seeds: Sequence[int]) -> dict[str, float]:
    """For each scene: one present phrase (a detection of it must overlap a true one with box
    IoU >= 0.5, and no detection may carry another phrase) and one absent phrase (nothing may be
    returned). Returns ``{"present_hit": ..., "absent_empty": ...}`` over ``seeds``."""
    from ..boxes import box_iou

    hit, empty = [], []
    for seed in seeds:
        scene = make_scene(int(seed), IMAGE_SIZE)
        predictor.set_image(scene.image)
        phrase = scene.phrases[int(seed) % len(scene.phrases)]
        det = predictor.predict(phrase)
        truth = np.array([o.box for o in scene.objects if o.phrase == phrase], np.float32)
        ok = len(det) > 0 and set(det.data["class_name"].tolist()) <= {phrase}
        if ok:
            iou = box_iou(torch.from_numpy(det.xyxy), torch.from_numpy(truth))
            ok = bool((iou >= 0.5).any())
        hit.append(ok)
        absent = [p for p in PHRASES if p not in scene.phrases]
        empty.append(len(predictor.predict(absent[int(seed) % len(absent)])) == 0)
    return {"present_hit": float(np.mean(hit)), "absent_empty": float(np.mean(empty))}


def evaluate_shapes_gdino(predictor: Any, seeds: range, workdir: Path) -> dict[str, float]:
    """COCO box / mask AP50 over ``seeds`` (prompt: all 20 phrases) and the single-phrase rates,
    all through the public ``GroundedSAM`` API."""
    from ..evaluation import evaluate_coco
    from .coco import export_coco

    folder = workdir / f"coco-{seeds.start}-{seeds.stop}"
    annotations = folder / "annotations.json"
    if not annotations.is_file():
        annotations = export_coco(seeds, folder)
    report = evaluate_coco(predictor, annotations, progress=False)
    return {
        "box_ap50": round(float(report.box_ap50), 4),
        "mask_ap50": round(float(report.mask_ap50), 4),
        "box_ap": round(float(report.box_ap), 4),
        **{k: round(v, 4) for k, v in single_phrase_rates(predictor, seeds).items()},
    }


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
    stages = history.get("stages") or ([_stage_of(history)] if history else [])
    return model, stages


def _stage_of(report: dict[str, Any]) -> dict[str, Any]:
    """The fields of a report that describe how one stage was trained."""
    keys = ("device", "gpu", "threads", "torch", "python", "config", "init_from")
    keys += ("single_phrase_share", "train_seconds", "resumed_at", "curve", "command")
    stage = {k: report[k] for k in keys if k in report}
    stage.setdefault("command", _command(stage))
    return stage


def _command(stage: dict[str, Any]) -> str:
    """The ``grounded-seg train`` command that reproduces one stage."""
    cfg = stage["config"]
    command = (
        f"grounded-seg train shapes --model gdino --steps {cfg['steps']} "
        f"--batch-size {cfg['batch_size']} --seed {cfg['seed']} "
        f"--device {stage['device'].split(':')[0]} --workers {cfg['workers']}"
    )
    if stage["device"] == "cpu":
        command += f" --threads {stage['threads']}"
    command += f" --learning-rate {cfg['learning_rate']}"
    if stage.get("init_from"):
        command += f" --init-from {stage['init_from']}"
    if stage.get("single_phrase_share"):
        command += f" --single-phrase-share {stage['single_phrase_share']}"
    if stage.get("init_from"):
        command += " --overwrite"  # the stage's output usually replaces its input
    return command


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
    _check_share(single_phrase_share)  # before any file is touched
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
        )
        if "stopped_at" in result:
            logger.info("stopped at step %d; run again to resume", result["stopped_at"])
            return result
        model.config.auxiliary_loss = False  # inference does not need it
        save_grounding_dino(model.cpu(), tokenizer, processor, out)
        model.to(torch_device)
        final = evaluate_shapes_gdino(predictor, FINAL_SEEDS, workdir)
        stage = _stage_of(
            {
                "device": str(torch_device),
                "gpu": (
                    torch.cuda.get_device_name(torch_device)
                    if torch_device.type == "cuda"
                    else None
                ),
                "threads": threads,
                "torch": torch.__version__,
                "python": platform.python_version(),
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
        (out / "train_log.json").write_text(json.dumps(report, indent=2) + "\n")
        write_card(out, report)
        (out / CHECKPOINT_FILE).unlink(missing_ok=True)
        logger.info("final %s after %.0f s", final, result["seconds"])
        return report
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_card(out: Path, report: dict[str, Any]) -> None:
    """Write ``out/MODEL_CARD.md`` from a training report (``train_log.json``)."""
    stages = [_stage_of(s) for s in report.get("stages") or [report]]
    rows, minutes = [], 0.0
    for number, stage in enumerate(stages, start=1):
        for r in stage["curve"]:
            if "box_ap50" in r:
                rows.append(
                    f"| {number} | {r['step']} | {minutes + r['seconds'] / 60:.1f} "
                    f"| {r['loss']:.2f} | {r['box_ap50']:.3f} | {r['mask_ap50']:.3f} "
                    f"| {r['present_hit']:.2f} | {r['absent_empty']:.2f} |"
                )
        minutes += stage["train_seconds"] / 60
    final = report["final"]
    recipe = "\n".join(_stage_lines(number, stage) for number, stage in enumerate(stages, 1))
    out.joinpath("MODEL_CARD.md").write_text(
        f"""# shapes-gdino

A small `transformers.GroundingDinoForObjectDetection` trained from scratch by grounded_seg on the
shapes world: it reads a caption such as "red circle. blue star." and boxes the named shapes.

- parameters: {report["parameters"]:,}; Swin embed 48, depths 2-2-2 (strides 4/8/16 + an extra
  level), 128 x 128 input; BERT width 64, 2 layers, compact WordPiece vocabulary (`vocab.txt`);
  d_model 64, 3 encoder + 3 decoder layers, 30 queries, captions up to {MAX_TEXT_LEN} tokens
- data: scenes from the training seeds ({report["train_seeds"]}); captions list some or all
  present phrases plus distractors (absent phrases sharing a colour or shape, unknown words,
  sometimes all 20 phrases); a later stage mixes in one-phrase captions, present or absent;
  see `grounded_seg/shapes/train_gdino.py`
- loss: L1 + GIoU on boxes and the token-level contrastive focal loss, on every decoder layer and
  on the selected encoder queries (`grounded_seg.gdino.query_selection_loss`)
- training, {len(stages)} stage(s), {report["train_seconds"] / 60:.1f} minutes in all (held-out
  evaluations included); batch `i` of a stage depends on its seed and `i` alone, so the data
  do not depend on the device or the number of workers, and each command reproduces its stage
  (on another device with float differences):

{recipe}

Final figures on held-out scenes {report["final_seeds"]} (prompt: all 20 phrases for AP; single
phrases through `GroundedSAM.predict` with the default thresholds; masks by shapes-sam):

| box AP50 | box AP | mask AP50 | single phrase: right object | absent phrase: nothing |
|---:|---:|---:|---:|---:|
| {final["box_ap50"]:.3f} | {final["box_ap"]:.3f} | {final["mask_ap50"]:.3f} | {final["present_hit"]:.3f} | {final["absent_empty"]:.3f} |

Training curve (held-out scenes {report["curve_seeds"]}; minutes counted across stages):

| stage | step | minutes | loss | box AP50 | mask AP50 | right object | absent: nothing |
|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
"""  # noqa: E501
    )


def _stage_lines(number: int, stage: dict[str, Any]) -> str:
    cfg = stage["config"]
    where = stage.get("gpu") or f"CPU, {stage['threads']} thread(s)"
    start = f"from {stage['init_from']}" if stage.get("init_from") else "from scratch"
    runs = ""
    if stage.get("resumed_at"):
        steps = ", ".join(str(s) for s in stage["resumed_at"])
        runs = f"; run in parts (`--stop-at`), resumed at step(s) {steps}"
    share = stage.get("single_phrase_share") or 0.0
    return (
        f"  {number}. {start}: AdamW lr {cfg['learning_rate']}, warm-up {cfg['warmup_steps']} "
        f"steps then cosine, gradient clip {cfg['grad_clip']}; {cfg['steps']} steps x "
        f"{cfg['batch_size']} scenes, {share:.0%} one-phrase captions; on {where}, torch "
        f"{stage['torch']}, {stage['train_seconds'] / 60:.1f} minutes{runs}:\n"
        f"     `{stage['command']}`"
    )


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
