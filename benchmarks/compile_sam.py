"""SAM's image encoder with and without ``compile=True`` (torch.compile), float32 and the
bfloat16 fast path, in one process: what the opt-in buys and what it costs.

    python benchmarks/compile_sam.py --repeats 5            # CPU; --device cuda on a GPU

SAM ViT-B with random weights at 1024 x 1024 (the encoder's Linear/Conv weights drawn from
N(0, 0.02), the scale of real weights, as ``e2e_cpu.py`` explains). For each dtype, an eager and
a compiled ``SamSegmenter`` share the weights; runs alternate (eager, compiled, eager, ...)
after one warm-up each, the compiled model's first call being the compilation. Reported:
medians, the ratio, the compilation time, and the largest difference between the two
embeddings relative to their largest magnitude. Writes its block in ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import machine_line, versions, versions_text  # noqa: E402
from _results import write_results  # noqa: E402
from _synthetic import make_image, random_sam_vit_b  # noqa: E402

logger = logging.getLogger("compile_sam")


def time_encoder(segmenter: object, image: object, sync: object) -> tuple[float, torch.Tensor]:
    state = segmenter.encode_image(image)
    sync()
    start = time.perf_counter()
    embeddings = segmenter.image_embeddings(state)
    sync()
    return time.perf_counter() - start, embeddings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    from transformers import SamImageProcessorPil

    import grounded_seg
    from grounded_seg.segmenters.sam import SamSegmenter

    grounded_seg.reuse_freed_memory()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = random_sam_vit_b(args.seed).to(device)
    processor = SamImageProcessorPil()
    image = make_image(args.seed)
    rows = []
    for dtype in args.dtypes.split(","):
        eager = SamSegmenter(model, processor, dtype=None if dtype == "float32" else dtype)
        compiled_model = random_sam_vit_b(args.seed).to(device)  # same weights, its own modules
        compiled = SamSegmenter(
            compiled_model, processor, dtype=None if dtype == "float32" else dtype, compile=True
        )
        time_encoder(eager, image, sync)  # warm-up
        compile_s, _ = time_encoder(compiled, image, sync)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            t, reference = time_encoder(eager, image, sync)
            times["eager"].append(t)
            t, candidate = time_encoder(compiled, image, sync)
            times["compiled"].append(t)
        scale = float(reference.float().abs().max())
        diff = float((reference.float() - candidate.float()).abs().max()) / scale
        eager_s, compiled_s = (statistics.median(times[k]) for k in ("eager", "compiled"))
        rows.append(
            f"| {dtype} | {eager_s:.3f} | {compiled_s:.3f} | {eager_s / compiled_s:.2f}x "
            f"| {compile_s:.1f} | {diff:.1e} |"
        )
        logger.info("%s: %s", dtype, rows[-1])
        del compiled, compiled_model
    info = versions()
    command = "python benchmarks/compile_sam.py " + " ".join(argv or sys.argv[1:])
    block = "\n".join(
        [
            f"## SAM image encoder, torch.compile opt-in, {device.type}",
            "",
            f"- machine: {machine_line(device)}",
            "- versions: " + versions_text(info),
            f"- command: `{command.strip()}`",
            f"- SAM ViT-B, random weights (N(0, 0.02)), 1024 x 1024, {args.threads} thread(s) "
            f"on the CPU; medians of {args.repeats} alternating runs after a warm-up",
            "",
            "| dtype | eager s | compiled s | speed-up | first compiled call s "
            "| max diff / max abs |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    write_results(args.results, device.type, block, name="compile_sam")
    logger.info("wrote %s", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
