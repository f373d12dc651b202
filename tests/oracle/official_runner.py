"""The oracle: runs the official GroundingDINO and segment-anything code, unchanged.

Run by the *oracle* Python (an environment with torch + torchvision, groundingdino-py,
segment-anything and the transformers 4.x they need), never imported by the tests. It builds an
official model with random weights (every tensor perturbed, so a wrong mapping cannot hide behind
zeros or ones), saves it in the official checkpoint format, runs the official inference path on
the given inputs and saves what it saw, stage by stage, with ``torch.save``.

    python official_runner.py bert  --vocab vocab.txt --out BERT_DIR
    python official_runner.py sam   --variant vit_b --checkpoint sam.pth --image img.png \
        --boxes boxes.json --out sam_out.pt
    python official_runner.py gdino --bert BERT_DIR --checkpoint gd.pth --image img.png \
        --caption "black cat . dog" --boxes 3 --out gd_out.pt [--sam sam.pth]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter, so no tensor is all zeros or all ones (buffers such as SAM's
    pixel mean and std are the preprocessing's constants and stay as they are)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.parameters():
            noise = torch.randn(tensor.shape, generator=gen) * 0.02
            tensor.add_(noise.to(tensor.dtype))


def build_sam(variant: str, seed: int):
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    sam = sam_model_registry[variant]().eval()
    perturb(sam, seed)
    return sam


def run_sam(predictor, image: np.ndarray, boxes_xyxy: np.ndarray) -> dict:
    """The official SamPredictor path; records the preprocessed input and each output."""
    seen = {}
    hook = predictor.model.image_encoder.register_forward_hook(
        lambda _m, args, out: seen.update(pixel_values=args[0].clone(), embeddings=out.clone())
    )
    predictor.set_image(image)
    hook.remove()
    boxes = predictor.transform.apply_boxes_torch(
        torch.as_tensor(boxes_xyxy, dtype=torch.float), image.shape[:2]
    )
    with torch.no_grad():
        logits, iou, low_res = predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=boxes,
            multimask_output=False,
            return_logits=True,
        )
    masks = logits > predictor.model.mask_threshold  # what return_logits=False gives
    return {
        "pixel_values": seen["pixel_values"],
        "embeddings": seen["embeddings"],
        "sam_boxes": boxes,
        "low_res_logits": low_res[:, 0],
        "mask_logits": logits[:, 0],
        "masks": masks[:, 0],
        "iou": iou[:, 0],
    }


def sam_main(args: argparse.Namespace) -> None:
    from segment_anything import SamPredictor

    sam = build_sam(args.variant, args.seed)
    torch.save(sam.state_dict(), args.checkpoint)
    image = np.asarray(Image.open(args.image).convert("RGB"))
    boxes = np.asarray(json.loads(Path(args.boxes).read_text()), dtype=np.float32)
    torch.save(run_sam(SamPredictor(sam), image, boxes), args.out)


def build_gdino(bert_dir: str, seed: int, config_name: str = "GroundingDINO_SwinT_OGC.py"):
    import groundingdino
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    config = Path(groundingdino.__file__).parent / "config" / config_name
    cfg = SLConfig.fromfile(str(config))
    cfg.device = "cpu"
    cfg.text_encoder_type = bert_dir
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    perturb(model, seed)
    with torch.no_grad():  # smaller decoder outputs: token scores spread over (0, 1), not all 1
        model.transformer.decoder.norm.weight.mul_(0.01)
        model.transformer.decoder.norm.bias.mul_(0.01)
    return model


def midway_threshold(probs: torch.Tensor, n: int) -> float:
    """A box threshold midway between the n-th and (n+1)-th best query of ``probs`` ``(Q, T)``
    (token probabilities), so that exactly ``n`` queries score above it."""
    ranked = probs.max(-1).values.sort(descending=True).values.cpu()
    return float((ranked[n - 1] + ranked[n]) / 2)


def gdino_main(args: argparse.Namespace) -> None:
    import groundingdino.models.GroundingDINO.transformer as official_transformer
    from groundingdino.util.inference import load_image, predict, preprocess_caption
    from torchvision.ops import box_convert

    model = build_gdino(args.bert, args.seed)
    # the released files hold {"model": state_dict} with DataParallel's "module." prefixes
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state}, args.checkpoint)

    image_source, image = load_image(args.image)
    seen: dict = {"pixel_values": image.clone()}
    hooks = [
        model.backbone[0].register_forward_hook(
            lambda _m, _a, out: seen.update(backbone=[out[k].tensors.clone() for k in sorted(out)])
        ),
        model.transformer.encoder.register_forward_hook(
            lambda _m, _a, out: seen.update(memory=out[0].clone(), memory_text=out[1].clone())
        ),
        model.transformer.decoder.register_forward_hook(
            lambda _m, _a, out: seen.update(
                decoder_states=torch.stack(out[0]).clone(),
                decoder_references=torch.stack(out[1]).clone(),
            )
        ),
    ]
    real_topk = torch.topk
    topk_calls: list[torch.Tensor] = []  # the selected queries of every forward, in order

    def recording_topk(scores, k, *a, **kw):
        result = real_topk(scores, k, *a, **kw)
        if k == model.num_queries:
            topk_calls.append(result[1].clone())
            if len(topk_calls) == 1:
                seen.update(topk_scores=scores.clone(), topk_indices=result[1].clone())
        return result

    official_transformer.torch.topk = recording_topk
    try:
        with torch.no_grad():
            outputs = model(image[None], captions=[preprocess_caption(args.caption)])
    finally:
        for hook in hooks:
            hook.remove()
    seen.update(logits=outputs["pred_logits"][0].clone(), boxes=outputs["pred_boxes"][0].clone())

    # Grounded-SAM's path on a one-class prompt (the official phrases join every token above
    # text_threshold across classes; one class keeps the comparison to words of that class).
    # Thresholds fall between the n-th and (n+1)-th best query, and between the best query's
    # two word scores, so `predict` returns n boxes with phrases that differ in their words.
    caption = preprocess_caption(args.predict_caption)
    with torch.no_grad():
        probs = model(image[None], captions=[caption])["pred_logits"][0].sigmoid()
    box_threshold = midway_threshold(probs, args.boxes)
    best_words = probs[probs.max(-1).values.argmax(), 1:3]  # [CLS] w1 w2 . [SEP]
    text_threshold = float(best_words.mean())
    boxes, box_scores, phrases = predict(
        model, image, args.predict_caption, box_threshold, text_threshold, device="cpu"
    )
    official_transformer.torch.topk = real_topk
    seen["predict_topk_indices"] = topk_calls[-1]
    h, w = image_source.shape[:2]
    xyxy = box_convert(boxes * torch.tensor([w, h, w, h]), in_fmt="cxcywh", out_fmt="xyxy")
    seen.update(
        predict_caption=args.predict_caption,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        predict_boxes=boxes,
        predict_scores=box_scores,
        predict_phrases=phrases,
        predict_xyxy=xyxy,
    )
    if args.sam:  # the official Grounded-SAM path: these boxes prompt SamPredictor
        from segment_anything import SamPredictor

        sam = build_sam(args.sam_variant, args.seed + 1)
        torch.save(sam.state_dict(), args.sam)
        seen["sam"] = run_sam(SamPredictor(sam), image_source, xyxy.numpy())
    torch.save(seen, args.out)


def gdino_save_main(args: argparse.Namespace) -> None:
    """Only build and save an official model of the given config (e.g. Swin-B), no inference."""
    model = build_gdino(args.bert, args.seed, args.config)
    torch.save(
        {"model": {"module." + k: v for k, v in model.state_dict().items()}}, args.checkpoint
    )


def bert_main(args: argparse.Namespace) -> None:
    """A random BERT-base with the given WordPiece vocabulary, as a save_pretrained folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(args.seed)
    BertModel(BertConfig()).save_pretrained(args.out)
    BertTokenizerFast(vocab_file=args.vocab, do_lower_case=True).save_pretrained(args.out)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("ORACLE_THREADS", "2")))
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sam = sub.add_parser("sam")
    sam.add_argument("--variant", default="vit_b")
    sam.add_argument("--boxes", required=True, help="JSON list of xyxy pixel boxes")
    gd = sub.add_parser("gdino")
    gd.add_argument("--bert", required=True, help="a BERT folder (save_pretrained)")
    gd.add_argument("--caption", required=True)
    gd.add_argument("--boxes", type=int, default=3, help="how many boxes predict should return")
    gd.add_argument("--predict-caption", default="black cat", help="two words, one class")
    gd.add_argument("--sam", help="also run Grounded-SAM: save a random SAM here")
    gd.add_argument("--sam-variant", default="vit_b")
    save = sub.add_parser("gdino-save")
    save.add_argument("--bert", required=True)
    save.add_argument("--config", default="GroundingDINO_SwinB_cfg.py")
    save.add_argument("--checkpoint", required=True)
    save.add_argument("--seed", type=int, default=0)
    bert = sub.add_parser("bert")
    bert.add_argument("--vocab", required=True, help="bert-base-uncased's vocab.txt")
    bert.add_argument("--out", required=True)
    bert.add_argument("--seed", type=int, default=0)
    for p in (sam, gd):
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--image", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {
        "sam": sam_main,
        "gdino": gdino_main,
        "gdino-save": gdino_save_main,
        "bert": bert_main,
    }[args.command](args)


if __name__ == "__main__":
    main()
