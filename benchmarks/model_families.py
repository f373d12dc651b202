"""CPU cost of every model family, at full size with random weights: seconds per image for the
image encoder and per prompt, FLOPs counted, peak memory.

Each model is built from its transformers config at the real size (the defaults, or the sizes of
the hub checkpoint, written out below), saved once under ``benchmarks/out/families/`` with a
processor and, for the text models, an offline tokenizer (a small BPE or WordPiece vocabulary:
the text tower's cost depends on the number of tokens, not on the vocabulary), and then loaded
through grounded_seg as a user would load the real weights (``load_segmenter`` /
``proposer_class(route).from_pretrained``). Random weights give the real cost: the work done per
image does not depend on the values (the detectors are asked for a fixed number of boxes).

For each model, in a fresh process, on one 640 x 480 image:

* **image**: the first prompt on a new image, minus a further prompt: the work done once per
  image (the image encoder; for the detectors, the image side of the model);
* **prompt**: each further prompt on the same image (three boxes for a segmenter; a three-class
  prompt for a detector; SAM 3's includes its masks);
* FLOPs of both (``torch.utils.flop_counter``: matmuls, convolutions, attention), and the peak
  RSS over the process's memory before loading.

    python benchmarks/model_families.py                 # every model, 3 repeats, 2 threads
    python benchmarks/model_families.py --only sam2.1-hiera-tiny owlv2-base-patch16-ensemble

Run it alone on the machine. Writes the ``model_families`` block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the offline tokenizer builders

from _results import write_results  # noqa: E402

RECIPE_VERSION = 1  # bump when a model's recipe changes: its folder is rebuilt
OUT = HERE / "out" / "families"
PROMPTS = ("cat . dog . person", "car . tree . bicycle")
BOXES = [[40, 60, 300, 400], [320, 40, 620, 300], [100, 200, 500, 470]]

# SAM 2.1 sizes (the hub configs of facebook/sam2.1-hiera-*): Hiera width and heads, blocks per
# stage, global-attention blocks, window sizes per stage, and the FPN's input channels
SAM2_SIZES = {
    "tiny": (96, 1, [1, 2, 7, 2], [5, 7, 9], [8, 4, 14, 7]),
    "small": (96, 1, [1, 2, 11, 2], [7, 10, 13], [8, 4, 14, 7]),
    "base-plus": (112, 2, [2, 3, 16, 3], [12, 16, 20], [8, 4, 14, 7]),
    "large": (144, 2, [2, 6, 36, 4], [23, 33, 43], [8, 4, 16, 8]),
}

# the larger sizes, as their hub configs give them: ViT width, depth, heads, global blocks;
# Swin width and heads (depths 2, 2, 18, 2; window 12 at 384 px)
SAM_VIT_SIZES = {"large": (1024, 24, 16, [5, 11, 17, 23]), "huge": (1280, 32, 16, [7, 15, 23, 31])}
SWIN_SIZES = {"base": (128, [4, 8, 16, 32]), "large": (192, [6, 12, 24, 48])}

# name -> (role, family: the route of a detector)
MODELS: dict[str, tuple[str, str]] = {
    "sam-vit-base": ("segmenter", "sam"),
    "sam-hq-vit-base": ("segmenter", "sam_hq"),
    "sam-hq-vit-large": ("segmenter", "sam_hq"),
    "sam-hq-vit-huge": ("segmenter", "sam_hq"),
    "sam2.1-hiera-tiny": ("segmenter", "sam2"),
    "sam2.1-hiera-small": ("segmenter", "sam2"),
    "sam2.1-hiera-base-plus": ("segmenter", "sam2"),
    "sam2.1-hiera-large": ("segmenter", "sam2"),
    "grounding-dino-tiny": ("detector", "grounding_dino"),
    "mm-grounding-dino-tiny": ("detector", "grounding_dino"),
    "mm-grounding-dino-base": ("detector", "grounding_dino"),
    "mm-grounding-dino-large": ("detector", "grounding_dino"),
    "owlv2-base-patch16-ensemble": ("detector", "owlv2"),
    "owlv2-large-patch14-ensemble": ("detector", "owlv2"),
    "sam3": ("detector", "sam3"),
}


def _sam2_config(size: str) -> Any:
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    width, heads, blocks, global_blocks, windows = SAM2_SIZES[size]
    backbone = Sam2HieraDetConfig(
        hidden_size=width,
        num_attention_heads=heads,
        blocks_per_stage=blocks,
        embed_dim_per_stage=[width * 2**i for i in range(4)],
        num_attention_heads_per_stage=[heads * 2**i for i in range(4)],
        window_size_per_stage=windows,
        global_attention_blocks=global_blocks,
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=[width * 2**i for i in (3, 2, 1, 0)]
    )
    return Sam2Config(vision_config=vision)


def build(name: str, folder: Path) -> None:
    """Build ``name`` at full size with random weights and save it, with its processor parts."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    family = MODELS[name][1]
    if family in ("sam", "sam_hq"):
        from e2e_cpu import SAM_VISION_INIT_STD

        size = name.rsplit("-", 1)[-1]
        vision, decoder = {}, {}
        if size in SAM_VIT_SIZES:
            width, depth, heads, global_blocks = SAM_VIT_SIZES[size]
            vision = dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                          global_attn_indexes=global_blocks, mlp_dim=4 * width)  # fmt: skip
            decoder = {"vit_dim": width}
        cls, config = (
            (tf.SamModel, tf.SamConfig(vision_config=vision))
            if family == "sam"
            else (tf.SamHQModel, tf.SamHQConfig(vision_config=vision, mask_decoder_config=decoder))
        )
        model = cls(config).eval()
        with torch.no_grad():  # the encoder at the scale of real weights (see e2e_cpu)
            for module in model.vision_encoder.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    module.weight.normal_(0.0, SAM_VISION_INIT_STD)
        model.save_pretrained(folder)
        tf.SamImageProcessorPil().save_pretrained(folder)
    elif family == "sam2":
        tf.Sam2Model(_sam2_config(name.removeprefix("sam2.1-hiera-"))).eval().save_pretrained(
            folder
        )
        from grounded_seg.official.sam2 import SAM2

        settings = json.dumps(SAM2.processor_config(), indent=2)
        (folder / "preprocessor_config.json").write_text(settings + "\n")
    elif family == "grounding_dino":
        from bert_vocab import write_bert_vocab
        from transformers import BertTokenizer

        config_cls, model_cls = (
            (tf.GroundingDinoConfig, tf.GroundingDinoForObjectDetection)
            if name.startswith("grounding")
            else (tf.MMGroundingDinoConfig, tf.MMGroundingDinoForObjectDetection)
        )
        size = name.rsplit("-", 1)[-1]
        backbone = None
        if size in SWIN_SIZES:
            width, heads = SWIN_SIZES[size]
            backbone = tf.SwinConfig(
                embed_dim=width, depths=[2, 2, 18, 2], num_heads=heads, window_size=12,
                image_size=384, out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4],
            )  # fmt: skip
        model_cls(config_cls(backbone_config=backbone)).eval().save_pretrained(folder)
        vocab = write_bert_vocab(folder)
        BertTokenizer(vocab_file=str(vocab), do_lower_case=True).save_pretrained(folder)
        tf.GroundingDinoImageProcessorPil().save_pretrained(folder)
    elif family == "owlv2":
        from tiny_clip import write_clip_tokenizer

        # the hub checkpoints' inputs: B/16 at 960 x 960 (3,600 boxes), L/14 at 1008 x 1008
        # (5,184 boxes)
        if name.startswith("owlv2-large"):
            side = 1008
            vision = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096, patch_size=14, image_size=side)  # fmt: skip
            text = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072)  # fmt: skip
            config = tf.Owlv2Config(vision_config=vision, text_config=text, projection_dim=768)
        else:
            side = 960
            config = tf.Owlv2Config(vision_config={"image_size": side, "patch_size": 16})
        tf.Owlv2ForObjectDetection(config).eval().save_pretrained(folder)
        tokenizer = write_clip_tokenizer(folder)
        tokenizer.model_max_length = 16
        processor = tf.Owlv2ImageProcessorPil(size={"height": side, "width": side})
        tf.Owlv2Processor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    elif family == "sam3":
        from tiny_sam3 import write_preprocessor_config

        from tiny_clip import write_clip_tokenizer

        tf.Sam3Model(tf.Sam3Config()).eval().save_pretrained(folder)
        write_preprocessor_config(folder, size=1008)
        write_clip_tokenizer(folder)
    (folder / "recipe.json").write_text(json.dumps({"version": RECIPE_VERSION}))


def _image() -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((640, 480), Image.Resampling.BILINEAR))


def measure(name: str, folder: Path, repeats: int, threads: int) -> dict[str, Any]:
    """Seconds and FLOPs of the first and of a further prompt on an image, peak memory."""
    import numpy as np
    import torch
    from _stages import peak_memory_bytes, reset_peak_memory
    from torch.utils.flop_counter import FlopCounterMode

    from grounded_seg.prompts import normalize_prompt
    from grounded_seg.proposers import proposer_class
    from grounded_seg.segmenters import load_segmenter

    torch.set_num_threads(threads)
    base = reset_peak_memory(torch.device("cpu"))
    role, family = MODELS[name]
    image = _image()
    if role == "segmenter":
        model = load_segmenter(folder, device="cpu")
        boxes = np.asarray(BOXES, np.float32)

        def first() -> Any:
            state = model.encode_image(image)
            model.segment(state, boxes)
            return state

        def again(state: Any, k: int) -> None:
            model.segment(state, boxes[::-1] if k % 2 else boxes)
    else:
        route = family
        model = proposer_class(route).from_pretrained(folder, device="cpu")
        prompts = [normalize_prompt(p) for p in PROMPTS]

        def first() -> Any:
            state = model.encode_image(image)
            model.propose(state, prompts[0], 0.0, 0.0, max_detections=3)
            return state

        def again(state: Any, k: int) -> None:
            model.propose(state, prompts[1], 0.0, 0.0, max_detections=3)

    params = sum(p.numel() for p in model.model.parameters())
    first()  # warm-up: allocator, lazy imports, kernels
    firsts, agains = [], []
    for k in range(repeats):
        start = time.perf_counter()
        state = first()
        firsts.append(time.perf_counter() - start)
        start = time.perf_counter()
        again(state, k)
        agains.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        state = first()
    first_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        again(state, 1)
    prompt_flops = counter.get_total_flops()
    first_s, prompt_s = statistics.median(firsts), statistics.median(agains)
    return {
        "name": name,
        "role": role,
        "params": params,
        "image_s": first_s - prompt_s,
        "prompt_s": prompt_s,
        "image_gflops": (first_flops - prompt_flops) / 1e9,
        "prompt_gflops": prompt_flops / 1e9,
        "peak_mib": (peak_memory_bytes(torch.device("cpu")) - base) / 2**20,
    }


def _child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _folder(name: str) -> Path:
    folder = OUT / name
    recipe = folder / "recipe.json"
    if recipe.is_file() and json.loads(recipe.read_text()).get("version") == RECIPE_VERSION:
        return folder
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    print(f"building {name} (random weights, full size) in {folder}", flush=True)
    _child(["--build", name])
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-results", action="store_true")
    parser.add_argument(
        "--block", default="model_families", help="the RESULTS.md block to write (replaced)"
    )
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.build, OUT / args.build)
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, OUT / args.measure, args.repeats, args.threads)))
        return 0
    wall = time.perf_counter()
    rows = []
    for name in args.only:
        _folder(name)
        row = _child(
            ["--measure", name, "--repeats", str(args.repeats), "--threads", str(args.threads)]
        )
        print(row, flush=True)
        rows.append(row)
    import torch
    import transformers

    from grounded_seg import __version__

    lines = [
        f"## Model families, cpu, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
        f"torch threads {args.threads}; versions: torch {torch.__version__}, transformers "
        f"{transformers.__version__}, grounded_seg {__version__}",
        "- full-size architectures, random weights, loaded through grounded_seg; one 640 x 480 "
        "image; **image** = the first prompt on a new image minus a further prompt (the work "
        "done once per image), **prompt** = each further prompt (3 boxes for a segmenter; a "
        "3-class prompt for a detector); median of "
        f"{args.repeats} in a fresh process per model; FLOPs by torch.utils.flop_counter; peak "
        "RSS above the process before loading",
        f"- command: `{' '.join(['python benchmarks/model_families.py', *sys.argv[1:]])}`",
        "",
        "| model | role | parameters | image s | prompt s | image GFLOPs | prompt GFLOPs "
        "| peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['name']} | {r['role']} | {r['params'] / 1e6:.1f}M | {r['image_s']:.2f} | "
            f"{r['prompt_s']:.3f} | {r['image_gflops']:.0f} | {r['prompt_gflops']:.1f} | "
            f"{r['peak_mib']:.0f} |"
            for r in rows
        ],
        "",
        f"- total wall time of the script: {time.perf_counter() - wall:.0f} s",
    ]
    block = "\n".join(lines)
    print(block)
    if not args.no_results:
        write_results(args.results, "cpu", block, name=args.block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
