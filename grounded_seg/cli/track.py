"""``grounded-seg track`` and ``grounded-seg eval-video``: tracked masks for a video, and their
scores against MOT ground truth."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ..outputs import atomic_write, bytes_writer, check_output


def cmd_track(args: argparse.Namespace) -> int:
    from ..video import TrackWriter, open_video, track

    outputs = {"video": args.output, "jsonl": args.json_path, "mot": args.mot}
    if not any(outputs.values()):
        raise ValueError("expected at least one output: -o VIDEO, --json FILE or --mot FILE")
    from ..video.writers import VIDEO_CODECS

    if args.output and os.path.splitext(args.output)[1].lower() not in VIDEO_CODECS:
        raise ValueError(
            f"-o: expected a video file ({', '.join(VIDEO_CODECS)}), got {args.output!r}"
        )
    for flag, path in (("-o", args.output), ("--json", args.json_path), ("--mot", args.mot)):
        if path:
            check_output(path, inputs=[args.video], overwrite=args.overwrite, flag=flag)
    source = open_video(args.video, fps=args.fps)
    frames = track(
        source, args.prompt, tracker=args.tracker, every=args.every, detector=args.detector,
        segmenter=args.segmenter, proposer=args.proposer, box_threshold=args.box_threshold,
        low_threshold=min(args.low_threshold, args.box_threshold),
        text_threshold=args.text_threshold, lost_frames=args.lost_frames,
        batch_size=args.batch_size, device=None if args.device == "auto" else args.device,
        dtype=args.dtype, with_frames=True, video_model=args.video_model,
        match_iou=args.match_iou,
    )  # fmt: skip
    from tqdm.auto import tqdm

    ids: set[int] = set()
    count = 0
    writer = TrackWriter(width=source.width, height=source.height, fps=source.fps,
                         overwrite=args.overwrite, **outputs)  # fmt: skip
    # frames/s on stderr; each frame is decoded once, for the models and for drawing
    bar = tqdm(total=source.count, unit="frame", disable=args.no_progress, leave=True)
    with writer, bar:
        for t, (frame, found) in enumerate(frames):
            writer.add(t, frame, found)
            ids.update(found.tracker_id.tolist())
            bar.update(1)
            count = t + 1
    written = ", ".join(str(p) for p in outputs.values() if p)
    print(f"{count} frames, {len(ids)} tracks; wrote {written}")
    return 0


def read_mot(path: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A MOT text file -> per frame (from frame 1 to the last) ids and xyxy boxes."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2, usecols=range(6)) if _has_lines(path) else (
        np.zeros((0, 6))
    )  # fmt: skip
    last = int(rows[:, 0].max()) if len(rows) else 0
    ids, boxes = [], []
    for frame in range(1, last + 1):
        mine = rows[rows[:, 0] == frame]
        ids.append(mine[:, 1].astype(np.int64))
        xywh = mine[:, 2:6]
        boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
    return ids, boxes


def _has_lines(path: str) -> bool:
    with open(path, encoding="utf-8") as handle:
        return any(line.strip() for line in handle)


def cmd_eval_video(args: argparse.Namespace) -> int:
    from ..video.metrics import score_tracks

    if args.json_path:
        check_output(args.json_path, overwrite=args.overwrite, flag="--json")
    gt_ids, gt_boxes = read_mot(args.ground_truth)
    ids, boxes = read_mot(args.tracks)
    frames = max(len(gt_ids), len(ids))  # frames with nobody in them at the end are empty
    none, nothing = np.zeros(0, np.int64), np.zeros((0, 4))
    gt_ids += [none] * (frames - len(gt_ids))
    gt_boxes += [nothing] * (frames - len(gt_boxes))
    ids += [none] * (frames - len(ids))
    boxes += [nothing] * (frames - len(boxes))
    scores = score_tracks(gt_ids, gt_boxes, ids, boxes)
    report = {k: getattr(scores, k) for k in scores.__dataclass_fields__}
    print(
        f"HOTA {scores.hota:.3f}  IDF1 {scores.idf1:.3f}  MOTA {scores.mota:.3f}  "
        f"ID switches {scores.id_switches}  ({scores.frames} frames, {scores.gt_objects} objects)"
    )
    if args.json_path:
        data = json.dumps(report, indent=2).encode()
        atomic_write(args.json_path, bytes_writer(data), overwrite=args.overwrite)
    return 0
