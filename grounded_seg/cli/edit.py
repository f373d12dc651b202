"""``grounded-seg explain`` and ``grounded-seg edit``: see inside the detector, act on the masks."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..outputs import atomic_write, check_output, image_format, image_writer


def cmd_explain(args: argparse.Namespace) -> int:
    from ..explain import explain
    from ..explain.figure import save

    check_output(args.output, inputs=[args.image], overwrite=args.overwrite, flag="-o")
    why = explain(
        args.image,
        args.prompt,
        detector=args.detector,
        box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        device=None if args.device == "auto" else args.device,
        max_pixels=args.max_pixels or None,
    )
    save(why, args.output, overwrite=args.overwrite)
    print(
        f"{len(why.detections)} detection(s) for {args.prompt!r}; the four stages in {args.output}"
    )
    for c, name in enumerate(why.classes):
        peak = float(why.selection[c].max())
        print(f"  {name:<24} query-selection peak {peak:.3f}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from ..edit import edit

    output = check_output(args.output, inputs=[args.image], overwrite=args.overwrite, flag="-o")
    fmt = image_format(output)
    action, color, text = _action(args)
    if action == "cutout" and fmt not in ("PNG", "WEBP", "TIFF"):
        raise ValueError(f"-o: cutout is transparent: expected .png, .webp or .tiff, got {fmt}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        edited = edit(
            args.image, args.prompt, action, color=color, text=text, dilate=args.dilate,
            detector=args.detector, segmenter=args.segmenter, proposer=args.proposer,
            box_threshold=args.box_threshold, text_threshold=args.text_threshold,
            device=None if args.device == "auto" else args.device, dtype=args.dtype,
            inpainter=args.inpainter, seed=args.seed, max_pixels=args.max_pixels or None,
        )  # fmt: skip
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    atomic_write(output, image_writer(edited, fmt), overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0


def _action(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    if args.recolor is not None:
        return "recolor", args.recolor, None
    if args.replace is not None:
        return "replace", None, args.replace
    for name in ("remove", "blur", "cutout"):
        if getattr(args, name):
            return name, None, None
    raise ValueError(
        "expected one action: --remove, --blur, --cutout, --recolor COLOR or --replace TEXT"
    )
