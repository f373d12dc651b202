"""The reference pipeline for ``vs_reference.py``: the official Grounded-SAM path, unchanged.

Run by the *oracle* Python (torch + torchvision, groundingdino-py, segment-anything and the
transformers 4.x they need; ``tests/oracle/make_env.sh`` builds it), as a child process of
``vs_reference.py``, which sends one JSON request per line on stdin and reads one JSON answer
per line. The models are the oracle's random-weight official builds
(``tests/oracle/official_runner.py``), saved in the official checkpoint format so that
grounded_seg loads the very same weights.

The path timed is what Grounded-Segment-Anything's demo does for one image and one prompt:
``groundingdino.util.inference.load_image`` and ``predict``, boxes to pixels, then
``SamPredictor.set_image`` (unconditionally, as the demo does) and ``predict_torch`` with all
boxes in one call, fp32, under ``torch.no_grad`` (which ``predict`` and ``predict_torch`` use).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "oracle"))

from _stages import (  # noqa: E402
    StageMeter,
    peak_memory_bytes,
    reset_peak_memory,
    synchronizer,
)


class Reference:
    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.gdino = None
        self.sams: dict[str, object] = {}
        self.seed = 0

    # ---- setup -------------------------------------------------------------------------------

    def setup(self, req: dict) -> dict:
        import official_runner

        self.device = torch.device(req["device"])
        self.seed = int(req.get("seed", 0))
        torch.set_num_threads(int(req["threads"]))
        workdir = Path(req["workdir"])
        bert = workdir / "bert"
        if not (bert / "config.json").is_file():
            official_runner.bert_main(
                argparse.Namespace(vocab=req["vocab"], out=str(bert), seed=self.seed)
            )
        self.gdino = official_runner.build_gdino(str(bert), self.seed).to(self.device)
        self.gdino.requires_grad_(False)  # inference only (FlopCounterMode trips on leaf outputs)
        checkpoint = workdir / "groundingdino_swint_random.pth"
        state = {"module." + k: v.cpu() for k, v in self.gdino.state_dict().items()}
        torch.save({"model": state}, checkpoint)
        import groundingdino
        import segment_anything
        import transformers

        return {
            "gdino": str(checkpoint),
            "bert": str(bert),
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "torchvision": __import__("torchvision").__version__,
                "transformers": transformers.__version__,
                "groundingdino-py": getattr(groundingdino, "__version__", "0.4.0"),
                "segment-anything": getattr(segment_anything, "__version__", "1.0"),
            },
        }

    def sam(self, req: dict) -> dict:
        import official_runner
        from segment_anything import SamPredictor

        variant = req["variant"]
        sam = official_runner.build_sam(variant, self.seed + 1).to(self.device)
        sam.requires_grad_(False)
        checkpoint = Path(req["workdir"]) / f"sam_{variant}_random.pth"
        torch.save({k: v.cpu() for k, v in sam.state_dict().items()}, checkpoint)
        self.sams[variant] = SamPredictor(sam)
        return {"checkpoint": str(checkpoint)}

    def calibrate(self, req: dict) -> dict:
        """The n + 1 best query scores of the prompt (best first), each query's best token
        probability, as ``predict`` compares them with the box threshold; the caller places the
        threshold between the n-th and the (n+1)-th."""
        from groundingdino.util.inference import load_image, preprocess_caption

        _, image = load_image(req["image"])
        with torch.no_grad():
            logits = self.gdino(
                image[None].to(self.device), captions=[preprocess_caption(req["prompt"])]
            )["pred_logits"][0]
        ranked = logits.sigmoid().max(-1).values.sort(descending=True).values[: req["boxes"] + 1]
        return {"ranked": [float(v) for v in ranked.cpu()]}

    # ---- the timed path ----------------------------------------------------------------------

    def segment(self, predictor, image_path: str, prompt: str, box_threshold: float, text: float):
        from groundingdino.util.inference import load_image, predict
        from torchvision.ops import box_convert

        image_source, image = load_image(image_path)
        boxes, _scores, _phrases = predict(
            self.gdino, image, prompt, box_threshold, text, device=self.device.type
        )
        h, w = image_source.shape[:2]
        xyxy = box_convert(boxes * torch.tensor([w, h, w, h]), in_fmt="cxcywh", out_fmt="xyxy")
        predictor.set_image(image_source)
        if len(xyxy) == 0:
            return xyxy, torch.zeros((0, h, w), dtype=torch.bool)
        transformed = predictor.transform.apply_boxes_torch(xyxy, image_source.shape[:2])
        masks, _iou, _low = predictor.predict_torch(
            point_coords=None,
            point_labels=None,
            boxes=transformed.to(self.device),
            multimask_output=False,
        )
        return xyxy, masks[:, 0].cpu()

    def run(self, req: dict) -> dict:
        predictor = self.sams[req["sam"]]
        sam = predictor.model
        meter = StageMeter(
            {
                "gdino image backbone": [self.gdino.backbone],
                "gdino text backbone": [self.gdino.bert],
                "gdino enhancer": [self.gdino.transformer.encoder],
                "gdino decoder": [self.gdino.transformer.decoder],
                "sam image encoder": [sam.image_encoder],
                "sam prompt + mask decoder": [sam.prompt_encoder, sam.mask_decoder],
            },
            synchronizer(self.device),
        )
        outputs = []
        counting = bool(req.get("flops"))
        base = reset_peak_memory(self.device)
        with meter.attached(), meter.counting_flops() if counting else contextlib.nullcontext():
            synchronizer(self.device)()
            start = time.perf_counter()
            for image_path, prompt, box_threshold, text_threshold in req["items"]:
                outputs.append(
                    self.segment(predictor, image_path, prompt, box_threshold, text_threshold)
                )
            synchronizer(self.device)()
            total = time.perf_counter() - start
        peak = peak_memory_bytes(self.device)
        if req.get("out"):
            arrays = {}
            for i, (xyxy, masks) in enumerate(outputs):
                arrays[f"xyxy{i}"] = xyxy.numpy().astype(np.float32)
                arrays[f"masks{i}"] = masks.numpy()
            np.savez(req["out"], **arrays)
        return {
            "seconds": total,
            "stages": meter.seconds,
            "flops": meter.flops if counting else None,
            "peak_memory": peak,
            "base_memory": base,
            "boxes": [len(xyxy) for xyxy, _ in outputs],
        }


def main() -> None:
    # answers go to the real stdout; everything the libraries print goes to stderr
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    reference = Reference()
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        try:
            with torch.no_grad():
                answer = {"ok": True, **getattr(reference, req["op"])(req)}
        except Exception as error:  # reported to the driver, which stops with it
            import traceback

            answer = {"ok": False, "error": f"{error!r}\n{traceback.format_exc()}"}
        channel.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
