"""The shapes CLIP's model card, made from its training report and log."""

from __future__ import annotations

import platform
from typing import Any

from .clip_data import BACKGROUND_TEXTS, BOX_JITTER, MATCH_IOU, MAX_BACKGROUND_OVERLAP


def _curve_rows(
    log: list[dict[str, Any]], evals: list[dict[str, Any]], final: float, scenes: int
) -> str:
    """Rows of the loss curve at the first logged step, each step with a held-out accuracy, and
    the last step (with the final accuracy, on ``scenes`` scenes)."""
    accuracy = {e["step"]: f"{e['zero_shot_accuracy']:.3f} (50 scenes)" for e in evals}
    if log:
        accuracy[log[-1]["step"]] = f"{final:.3f} (final, {scenes} scenes)"
    rows = []
    for i, entry in enumerate(log):
        if i == 0 or entry["step"] in accuracy:
            minutes, shown = entry["seconds"] / 60, accuracy.get(entry["step"], "")
            rows.append(f"| {entry['step']} | {minutes:.1f} | {entry['loss']:.4f} | {shown} |")
    return "\n".join(rows)


def model_card(
    report: dict[str, Any], config: Any, log: list[dict[str, Any]], evals: list[dict[str, Any]]
) -> str:
    s, m = report["settings"], report["metrics"]
    vision, text = config.vision_config, config.text_config
    curve = _curve_rows(log, evals, m["zero_shot_accuracy"], m["scenes"])
    backgrounds = ", ".join(f'"{t}"' for t in BACKGROUND_TEXTS)
    rejected = "background crops rejected (their best text of the 23 is a background text)"
    return f"""# shapes CLIP

A small CLIP trained from scratch on the shapes world (`grounded_seg.shapes`) by
`grounded_seg.shapes.train_clip.train_shapes_clip`, for the CLIP box-proposer route
(`proposer="clip"`): crops of candidate boxes (margin 0.1) against `"a photo of a {{phrase}}."`
and the background texts {backgrounds}.

## Model

- `CLIPModel`, {report["parameters"]:,} parameters, float32
  ({report["model_bytes"]:,} bytes of `model.safetensors`).
- Vision: a ViT over {vision.image_size} x {vision.image_size} pixels in patches of \
{vision.patch_size}, {vision.num_hidden_layers} layers of width {vision.hidden_size} \
({vision.num_attention_heads} heads, MLP {vision.intermediate_size}).
- Text: {text.num_hidden_layers} layers of width {text.hidden_size} \
({text.num_attention_heads} heads, MLP {text.intermediate_size}), at most \
{text.max_position_embeddings} tokens of a {text.vocab_size}-token byte-level BPE
  (`grounded_seg.shapes.clip_tokenizer`: each word of the shapes world and of the route's texts
  is one token).
- Joint space: {config.projection_dim} dimensions; learned temperature \
exp(logit_scale) = {m["logit_scale"]:.1f} (clamped at 100 during training).
- Preprocessing: `CLIPImageProcessorPil`, shortest edge {s["image_size"]}, centre crop \
{s["image_size"]} x {s["image_size"]}, CLIP's mean and std.

## Data

From `TRAIN_SEEDS` (seeds 0 to 999,999) as a pure function of (seed, step), seed = {s["seed"]}.
{_pool_text(report)}Each step holds {s["batch_size"]} object crops (`crop_regions`, margin 0.1):
a share of {s["candidate_share"]} drawn from that pool, the rest ground-truth boxes of scenes
drawn for the step (each box side first moved by up to {BOX_JITTER:.0%} of the box's size),
captioned `"a photo of a {{phrase}}."`; it deals them into batches of distinct captions and adds
one background crop to each batch (with probability {s["candidate_share"]} an unmatched pool
candidate, else a random box of an object's size whose crop holds at most
{MAX_BACKGROUND_OVERLAP:.0%} of any shape's pixels), captioned with a random background text.
Loss: `grounded_seg.clip.contrastive_loss` (the pair-weighted mean over the step's batches).

## Training

- {s["steps"]} steps, AdamW (betas 0.9/0.98, weight decay {s["weight_decay"]} on matrices), peak \
learning rate {s["learning_rate"]}, {s["warmup_steps"]} warm-up steps, cosine decay to 0.
- Final training loss (mean over the last {_last_span(log)} steps): {report["final_loss"]:.4f}.
- Wall time: {report["train_seconds"] / 60:.1f} min of training, {report["seconds"] / 60:.1f} \
min in all, on {report["device"]} ({platform.machine()}) with {report["threads"]} thread(s).
- Versions: {", ".join(f"{k} {v}" for k, v in report["versions"].items())}.

Reproduce (the same seed and thread count give the same weights, bit for bit):

```bash
{report["command"]}
```

## Held-out results

On the ground-truth boxes of the {m["scenes"]} scenes `{report["eval_seeds"]}`
({m["objects"]} objects) and one background crop per scene ({m["background_crops"]}):

| metric | value |
| --- | --- |
| zero-shot accuracy over the 20 phrases (argmax over their texts) | {m["zero_shot_accuracy"]:.3f} |
| colour right | {m["colour_accuracy"]:.3f} |
| shape right | {m["shape_accuracy"]:.3f} |
| {rejected} | {m["background_rejection"]:.3f} |
| object crops kept (their best text of the 23 is a phrase) | {m["objects_kept"]:.3f} |
{_candidate_rows(m)}
## Training curve

Mean training loss since the previous logged step, and zero-shot accuracy on held-out scenes
(`HELD_OUT_SEEDS[:50]` during training, which it does not steer). Every point is in
`train_log.json`.

| step | minutes | training loss | held-out zero-shot accuracy |
| --- | --- | --- | --- |
{curve}
"""


def _pool_text(report: dict[str, Any]) -> str:
    """The model card's sentence on the candidate pool ("" without one)."""
    pool = report.get("pool")
    if not pool:
        return ""
    sam = report.get("sam", {})
    digest = f", `model.safetensors` sha256 `{sam['sha256'][:16]}…`" if "sha256" in sam else ""
    return (
        f"First, SAM's automatic mode (`{sam.get('name')}`{digest},\nwith its `grounded_seg.json` "
        f"settings, exactly as the CLIP route runs it) made {pool['candidates']:,} candidates on "
        f"{pool['scenes']:,} training\nscenes (`pool_seeds`) in {pool['seconds']:.0f} s; each "
        f"candidate whose mask overlaps a true object\nwith IoU >= {MATCH_IOU} is captioned with "
        f"that object's phrase, the {pool['background_candidates']} others with a\nbackground "
        "text. A tiny SAM's candidates are not the true boxes (its point masks round off a\n"
        "star's tips), so the model learns to read its crops too.\n"
    )


def _candidate_rows(m: dict[str, Any]) -> str:
    """Rows of the metrics on SAM's held-out candidates ("" when they were not measured)."""
    if "candidate_accuracy" not in m:
        return ""
    return (
        f"| SAM's candidates on these scenes that match an object ({m['candidates']}): "
        "phrase right "
        f"| {m['candidate_accuracy']:.3f} |\n"
        f"| SAM's candidates that match an object: kept | {m['candidates_kept']:.3f} |\n"
        f"| SAM's candidates that match no object ({m['background_candidates']}): rejected "
        f"| {m['candidate_background_rejection']:.3f} |\n"
    )


def _last_span(log: list[dict[str, Any]]) -> int:
    if len(log) < 2:
        return log[-1]["step"] if log else 0
    return log[-1]["step"] - log[-2]["step"]
