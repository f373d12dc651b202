"""shapes-gdino's model card and the per-stage records of ``train_log.json`` it is made from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..training import CARD_FILE, write_text
from .gdino_data import MAX_TEXT_LEN


def stage_record(report: dict[str, Any]) -> dict[str, Any]:
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


def write_card(out: Path, report: dict[str, Any]) -> Path:
    """Write ``out/MODEL_CARD.md`` (atomically) from a training report (``train_log.json``)."""
    return write_text(Path(out) / CARD_FILE, card_text(report))


def card_text(report: dict[str, Any]) -> str:
    """The model card of a training report (``train_log.json``)."""
    stages = [stage_record(s) for s in report.get("stages") or [report]]
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
    return f"""# shapes-gdino

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
