"""COCO evaluation: run a :class:`GroundedSAM` over a COCO data set and score it with ``COCOeval``.

>>> from grounded_seg import GroundedSAM                                   # doctest: +SKIP
>>> from grounded_seg.evaluation import evaluate_coco                      # doctest: +SKIP
>>> report = evaluate_coco(GroundedSAM(), "val/annotations.json")          # doctest: +SKIP
>>> print(report.format_table())                                           # doctest: +SKIP

The prompt is the data set's category names, in category-id order, one ``predict`` per image;
a detection's ``class_id`` is the index of its category in that list. Boxes are scored as COCO
``bbox`` results and masks as compressed-RLE ``segm`` results, both with the detection's
``confidence`` as score. Needs ``pycocotools`` (``pip install pycocotools``, or the checkout's
``pip install -e ".[eval]"``).

Modules, one job each: ``dataset`` (read and check the COCO file), ``run`` (predict over its
images), ``scoring`` (detections to COCO results, ``COCOeval``), ``report`` (the result).
"""

from .dataset import CocoDataset, load_coco_dataset
from .report import STAT_NAMES, ClassAP, EvaluationReport
from .run import evaluate_coco

__all__ = [
    "STAT_NAMES",
    "ClassAP",
    "CocoDataset",
    "EvaluationReport",
    "evaluate_coco",
    "load_coco_dataset",
]
