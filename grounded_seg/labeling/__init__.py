"""Label a folder of images into a data set: batched, pipelined, resumable, or on Ray Data.

>>> from grounded_seg.labeling import label_images                          # doctest: +SKIP
>>> report = label_images("photos/", "cat. dog.", "pets-dataset", format="coco")  # doctest: +SKIP
>>> print(report.summary())                                                 # doctest: +SKIP
"""

from .formats import FORMATS
from .ontology import Ontology, load_ontology, ontology_from_mapping
from .run import LabelReport, label_images
from .sources import IMAGE_EXTENSIONS, collect_images

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "LabelReport",
    "Ontology",
    "collect_images",
    "label_images",
    "load_ontology",
    "ontology_from_mapping",
]
