"""grounded_seg: segment whatever a text prompt names.

>>> from grounded_seg import segment                  # doctest: +SKIP
>>> det = segment("cats.jpg", "black cat")            # doctest: +SKIP

A text prompt and an image go through Grounding DINO (boxes), whose boxes prompt SAM (masks);
the result is a ``supervision.Detections`` in pixels of the original image.
"""

from importlib.metadata import PackageNotFoundError, version

from .allocator import reuse_freed_memory
from .api import clear_model_cache, segment
from .devices import resolve_device
from .edit import apply_edit, edit
from .errors import InvalidWeightsError, WeightsNotFoundError
from .explain import Explanation, explain
from .images import load_image
from .labeling import LabelReport, label_images
from .predictor import GroundedSAM, PreparedImage
from .prompts import Prompt, normalize_prompt
from .registry import ModelSpec, list_models
from .segmenters.sam_auto import AutoMaskConfig
from .visualize import annotate

try:
    __version__ = version("grounded-seg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "AutoMaskConfig",
    "Explanation",
    "GroundedSAM",
    "InvalidWeightsError",
    "LabelReport",
    "ModelSpec",
    "PreparedImage",
    "Prompt",
    "WeightsNotFoundError",
    "__version__",
    "annotate",
    "apply_edit",
    "clear_model_cache",
    "edit",
    "explain",
    "label_images",
    "list_models",
    "load_image",
    "normalize_prompt",
    "resolve_device",
    "reuse_freed_memory",
    "segment",
]
