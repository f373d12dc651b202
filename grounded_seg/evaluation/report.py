"""The result of :func:`~grounded_seg.evaluation.evaluate_coco`: COCO's 12 numbers for boxes and
masks, AP per class, timings; a JSON-ready dict and a plain-text table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
"""The 12 numbers of ``COCOeval.stats``, in order (AP averaged over IoU 0.50:0.05:0.95)."""


@dataclass(frozen=True)
class ClassAP:
    """AP@[.50:.95] of one category (all areas, 100 detections per image).

    ``name``: the category's name as prompted (normalised by ``normalize_prompt``).
    ``box_ap`` / ``mask_ap`` are in [0, 1], ``None`` when the evaluated images hold no
    ground truth of the category (or, for masks, when the data set has no masks).
    ``num_gt``: non-crowd ground-truth instances in the evaluated images; ``num_detections``:
    detections labelled with the category.
    """

    category_id: int
    name: str
    num_gt: int
    num_detections: int
    box_ap: float | None
    mask_ap: float | None


@dataclass
class EvaluationReport:
    """Result of :func:`evaluate_coco`.

    ``box_stats`` / ``mask_stats``: the 12 ``COCOeval.stats`` keyed by :data:`STAT_NAMES`, each
    in [0, 1], or ``None`` where COCO defines none (no ground truth in that area range). Mask
    metrics are all ``None`` when the ground truth has no ``segmentation``. ``seconds`` is the
    wall-clock time of the whole run (images, models, ``COCOeval``), ``predict_seconds`` that
    of loading images and predicting only.
    """

    annotation_file: str
    image_dir: str
    classes: list[str]
    num_images: int
    num_detections: int
    seconds: float
    predict_seconds: float
    box_threshold: float
    text_threshold: float
    box_stats: dict[str, float | None]
    mask_stats: dict[str, float | None]
    per_class: list[ClassAP] = field(default_factory=list)

    @property
    def box_ap(self) -> float | None:
        """Box AP@[.50:.95], in [0, 1]."""
        return self.box_stats["AP"]

    @property
    def box_ap50(self) -> float | None:
        """Box AP at IoU 0.50, in [0, 1]."""
        return self.box_stats["AP50"]

    @property
    def box_ap75(self) -> float | None:
        """Box AP at IoU 0.75, in [0, 1]."""
        return self.box_stats["AP75"]

    @property
    def mask_ap(self) -> float | None:
        """Mask AP@[.50:.95], in [0, 1]."""
        return self.mask_stats["AP"]

    @property
    def mask_ap50(self) -> float | None:
        """Mask AP at IoU 0.50, in [0, 1]."""
        return self.mask_stats["AP50"]

    @property
    def mask_ap75(self) -> float | None:
        """Mask AP at IoU 0.75, in [0, 1]."""
        return self.mask_stats["AP75"]

    @property
    def seconds_per_image(self) -> float:
        """Mean seconds of loading and predicting per image (0 with no images)."""
        return self.predict_seconds / self.num_images if self.num_images else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field, plus the six headline APs at the top level."""
        result = asdict(self)
        headline = {
            "box_ap": self.box_ap,
            "box_ap50": self.box_ap50,
            "box_ap75": self.box_ap75,
            "mask_ap": self.mask_ap,
            "mask_ap50": self.mask_ap50,
            "mask_ap75": self.mask_ap75,
            "seconds_per_image": self.seconds_per_image,
        }
        return {**headline, **result}

    def format_table(self) -> str:
        """A plain-text table: AP / AP50 / AP75 for boxes and masks, then AP per class."""

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}"

        width = max([len("class"), *(len(c.name) for c in self.per_class)])
        lines = [
            f"{self.num_images} image(s), {self.num_detections} detection(s), "
            f"{self.seconds:.1f} s ({self.seconds_per_image:.3f} s/image predicting); "
            f"box_threshold {self.box_threshold:g}, AP in %",
            "",
            f"{'':<6} {'AP':>6} {'AP50':>6} {'AP75':>6}",
            f"{'box':<6} {cell(self.box_ap):>6} {cell(self.box_ap50):>6} {cell(self.box_ap75):>6}",
            f"{'mask':<6} {cell(self.mask_ap):>6} {cell(self.mask_ap50):>6} "
            f"{cell(self.mask_ap75):>6}",
        ]
        if self.per_class:
            lines += [
                "",
                f"{'class':<{width}} {'gt':>6} {'dets':>6} {'box AP':>7} {'mask AP':>8}",
            ]
            lines += [
                f"{c.name:<{width}} {c.num_gt:>6} {c.num_detections:>6} {cell(c.box_ap):>7} "
                f"{cell(c.mask_ap):>8}"
                for c in self.per_class
            ]
        return "\n".join(lines)
