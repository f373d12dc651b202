"""``label_images`` / ``grounded-seg label``: known answers on exported shapes scenes, the three
formats read back by supervision and pycocotools, failures listed, inputs never touched."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from grounded_seg import GroundedSAM, label_images
from grounded_seg.cli import main
from grounded_seg.labeling.batches import header_size, plan_batches
from grounded_seg.labeling.records import read_images, record_detections
from grounded_seg.labeling.sources import collect_images
from grounded_seg.shapes import HELD_OUT_SEEDS, PHRASES, export_coco

SEEDS = range(HELD_OUT_SEEDS.start + 3400, HELD_OUT_SEEDS.start + 3440)  # 40 fixed scenes
MODELS = {"detector": "shapes-gdino", "segmenter": "shapes-sam", "device": "cpu"}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """40 exported shapes scenes: ``images/*.png`` and their ground truth."""
    return export_coco(SEEDS, tmp_path_factory.mktemp("scenes")).parent


@pytest.fixture(scope="module")
def labelled(scenes, tmp_path_factory) -> Path:
    """The scenes labelled once into COCO with every box (threshold 0, as AP wants)."""
    out = tmp_path_factory.mktemp("labelled") / "coco"
    label_images(scenes / "images", list(PHRASES), out, box_threshold=0.0, progress=False, **MODELS)
    return out


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _cocoeval_segm_ap50(ground_truth: Path, results: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ground_truth))
        run = COCOeval(gt, gt.loadRes(results), "segm")
        run.evaluate()
        run.accumulate()
        run.summarize()
    return float(run.stats[1])


def test_written_coco_scores_as_grounded_seg_eval(scenes, labelled):
    from grounded_seg.evaluation import evaluate_coco

    written = json.loads((labelled / "annotations.json").read_text())
    assert [c["name"] for c in written["categories"]] == list(PHRASES)
    assert {i["file_name"] for i in written["images"]} == {f"{s:07d}.png" for s in SEEDS}
    first = written["annotations"][0]
    assert isinstance(first["segmentation"]["counts"], str) and first["iscrowd"] == 0
    assert len({a["id"] for a in written["annotations"]}) == len(written["annotations"])
    # the data set's ids are the exported file's (both sorted by name), so score it directly
    truth = json.loads((scenes / "annotations.json").read_text())
    id_of = {i["file_name"]: i["id"] for i in truth["images"]}
    ours = {i["id"]: id_of[i["file_name"]] for i in written["images"]}
    results = [
        {**a, "image_id": ours[a["image_id"]]} for a in written["annotations"]
    ]  # fmt: skip
    ap50 = _cocoeval_segm_ap50(scenes / "annotations.json", results)
    report = evaluate_coco(GroundedSAM(**MODELS), scenes / "annotations.json", progress=False)
    assert ap50 == pytest.approx(report.mask_ap50, abs=0.01)
    assert ap50 >= 0.75  # shapes-gdino's measured mask AP50 on other scenes: 0.937


def test_the_data_set_is_ground_truth_for_eval(labelled, capsys):
    """``grounded-seg eval`` reads a labelled data set as ground truth (images/ beside it)."""
    code = main(
        ["eval", str(labelled / "annotations.json"), "--detector", "shapes-gdino",
         "--segmenter", "shapes-sam", "--device", "cpu", "--max-images", "5"]
    )  # fmt: skip
    assert code == 0
    assert "AP50" in capsys.readouterr().out


def test_three_formats_read_back_to_the_same_detections(scenes, tmp_path):
    images = scenes / "images"
    runs = {}
    for fmt in ("coco", "yolo", "masks"):
        runs[fmt] = tmp_path / fmt
        label_images(images, list(PHRASES), runs[fmt], format=fmt, progress=False, **MODELS)
    records = {r["name"]: r for r in read_images(runs["coco"])}
    assert len(records) == 40 and sum(len(r["detections"]) for r in records.values()) >= 40

    coco = sv.DetectionDataset.from_coco(
        str(runs["coco"] / "images"), str(runs["coco"] / "annotations.json"), force_masks=True
    )
    yolo = sv.DetectionDataset.from_yolo(
        str(runs["yolo"] / "images"), str(runs["yolo"] / "labels"),
        str(runs["yolo"] / "data.yaml"), force_masks=True,
    )  # fmt: skip
    assert coco.classes == yolo.classes == list(PHRASES)
    yolo_by_name = {Path(path).name: found for path, _, found in yolo}
    assert len(yolo_by_name) == len(coco) == 40
    masks_json = json.loads((runs["masks"] / "masks.json").read_text())
    assert masks_json["classes"] == list(PHRASES)
    by_name = {entry["file_name"]: entry for entry in masks_json["images"]}
    for path, image, found in coco:
        name = Path(path).name
        truth = record_detections(records[name])
        order = np.lexsort((truth.xyxy[:, 0], truth.class_id))
        got = np.lexsort((found.xyxy[:, 0], found.class_id))
        assert found.class_id[got].tolist() == truth.class_id[order].tolist()
        np.testing.assert_allclose(found.xyxy[got], truth.xyxy[order], atol=1.0)
        if len(truth):
            np.testing.assert_array_equal(found.mask[got], truth.mask[order])  # RLE: lossless
        # YOLO: polygons, one line per region; the same classes and, drawn, the same masks
        lines = yolo_by_name[name]
        assert sorted(lines.class_id.tolist()) == sorted(truth.class_id.tolist()) or len(
            lines
        ) > len(truth)  # a mask in several pieces is several lines
        drawn = lines.mask.any(axis=0) if len(lines) else np.zeros(image.shape[:2], bool)
        union = truth.mask.any(axis=0) if len(truth) else np.zeros(image.shape[:2], bool)
        if union.any():
            assert (drawn & union).sum() / (drawn | union).sum() >= 0.93
        # masks: instance ids, the best on top; the sidecar says which is which
        entry = by_name[name]
        ids = np.asarray(Image.open(runs["masks"] / entry["mask_file"]))
        assert ids.shape == image.shape[:2]
        assert [i["class_id"] for i in entry["instances"]] == truth.class_id.tolist()
        for k in range(len(truth) - 1, -1, -1):
            above = truth.mask[:k].any(axis=0) if k else np.zeros_like(ids, bool)
            np.testing.assert_array_equal(ids == k + 1, truth.mask[k] & ~above)


def test_failures_are_listed_and_the_rest_labelled(scenes, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((scenes / "images").glob("*.png"))[:4]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (folder / sorted(p.name for p in folder.glob("100*.png"))[0]).read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    before = _tree_digest(folder)
    report = label_images(folder, "red circle. blue square.", tmp_path / "out", progress=False,
                          **MODELS)  # fmt: skip
    assert (report.images, report.labelled, report.failed) == (6, 4, 2)
    failed = (tmp_path / "out" / "failed.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in failed] == ["corrupt.png", "truncated.png"]
    assert all("\t" in line and len(line.split("\t")[1]) > 10 for line in failed)
    written = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(written["images"]) == 4
    assert _tree_digest(folder) == before  # the input folder is never written to


def test_ontology_maps_several_phrases_to_one_class(scenes, tmp_path):
    ontology = {"red circle": "red thing", "red square": "red thing", "blue square": "square"}
    ontology_file = tmp_path / "ontology.json"
    ontology_file.write_text(json.dumps(ontology))
    images = sorted((scenes / "images").glob("*.png"))[:10]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    code = main(
        ["label", str(listing), "--ontology", str(ontology_file), "--out", str(tmp_path / "ds"),
         "--detector", "shapes-gdino", "--segmenter", "shapes-sam", "--device", "cpu",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    written = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert written["categories"] == [{"id": 1, "name": "red thing"}, {"id": 2, "name": "square"}]
    found = {(a["category_id"], a["phrase"]) for a in written["annotations"]}
    assert {c for c, _ in found} <= {1, 2}
    assert {p for c, p in found if c == 1} <= {"red circle", "red square"}


def test_sources_folder_glob_and_list(scenes, tmp_path):
    nested = tmp_path / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / ".hidden").mkdir()
    png = next((scenes / "images").glob("*.png")).read_bytes()
    for name in ("x.PNG", "a/y.jpg", "a/b/z.png", ".hidden/h.png", "a/notes.txt"):
        (nested / name).write_bytes(png)
    found = collect_images(nested)
    assert [s.name for s in found.sources] == ["a/b/z.png", "a/y.jpg", "x.PNG"]
    assert [s.index for s in found.sources] == [0, 1, 2]
    # a glob is case-sensitive, as the shell's; names are relative to its fixed part
    assert [s.name for s in collect_images(str(nested / "**" / "*.png")).sources] == ["a/b/z.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nnested/a/y.jpg\n\nnested/x.PNG\n")
    assert [s.name for s in collect_images(listing).sources] == ["a/y.jpg", "x.PNG"]


def test_batches_group_images_of_one_size(tmp_path):
    sizes = [(40, 60), (50, 30), (40, 60), (50, 30), (40, 60)]  # (height, width)
    for i, (h, w) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
    rotated = Image.new("RGB", (60, 40))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: seen as 60 x 40 (height x width)
    rotated.save(tmp_path / "r.jpg", exif=exif)
    assert header_size(tmp_path / "r.jpg") == (60, 40)
    (tmp_path / "bad.png").write_bytes(b"junk")
    plan = plan_batches(collect_images(tmp_path).sources, batch_size=3)
    assert [[s.name for s in batch] for batch in plan] == [
        ["0.png", "2.png", "4.png"], ["1.png", "3.png", "r.jpg"], ["bad.png"]
    ]  # fmt: skip


def test_pipelined_and_plain_runs_write_the_same_files(scenes, tmp_path):
    images = sorted((scenes / "images").glob("*.png"))[:12]
    for workers in (0, 3):
        label_images(images, "red circle. blue star.", tmp_path / f"w{workers}", batch_size=4,
                     workers=workers, progress=False, **MODELS)  # fmt: skip
    for name in ("annotations.json", "failed.txt"):
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w3" / name).read_bytes()


def test_labels_only_refer_to_the_input_folder(scenes, tmp_path, capsys):
    out = tmp_path / "labels-only"
    label_images(scenes / "images", "red circle. blue square.", out, copy_images=False,
                 progress=False, **MODELS)  # fmt: skip
    assert not (out / "images").exists()
    written = json.loads((out / "annotations.json").read_text())
    assert written["info"]["image_root"] == str((scenes / "images").resolve())
    assert all((scenes / "images" / i["file_name"]).is_file() for i in written["images"])
    code = main(
        ["eval", str(out / "annotations.json"), "--images", str(scenes / "images"),
         "--detector", "shapes-gdino", "--segmenter", "shapes-sam", "--device", "cpu",
         "--max-images", "3"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
