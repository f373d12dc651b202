"""COCO-format export of shapes scenes: ``images/``, ``annotations.json`` with RLE masks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from ..export import rle_decode, rle_encode
from .world import PHRASES, make_scene

__all__ = ["coco_categories", "export_coco", "rle_decode", "rle_encode"]


def coco_categories() -> list[dict[str, Any]]:
    """The 20 phrases as COCO categories, id = phrase index + 1."""
    return [
        {"id": i + 1, "name": phrase, "supercategory": phrase.split()[1]}
        for i, phrase in enumerate(PHRASES)
    ]


def export_coco(seeds: Iterable[int], out_dir: str | Path, size: int = 128) -> Path:
    """Write the scenes of ``seeds`` as a COCO data set; returns the annotation file's path.

    ``out_dir/images/<seed>.png`` and ``out_dir/annotations.json`` (boxes ``[x, y, w, h]`` in
    pixels, uncompressed RLE masks, areas in pixels). An existing annotation file is refused.
    """
    out = Path(out_dir)
    target = out / "annotations.json"
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for seed in seeds:
        scene = make_scene(seed, size)
        name = f"{scene.seed:07d}.png"
        Image.fromarray(scene.image).save(out / "images" / name)
        images.append({"id": scene.seed, "file_name": name, "height": size, "width": size})
        for obj in scene.objects:
            x1, y1, x2, y2 = (float(v) for v in obj.box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": scene.seed,
                    "category_id": obj.class_id + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": int(obj.mask.sum()),
                    "segmentation": rle_encode(obj.mask),
                    "iscrowd": 0,
                }
            )
    dataset = {"images": images, "annotations": annotations, "categories": coco_categories()}
    target.write_text(json.dumps(dataset))
    return target
