"""Model names -> where their weights live; ``list_models()``; the local weights search order.

A model is named by a registry name (``"grounding-dino-tiny"``), a local folder in the Hugging Face
format (``config.json`` + ``model.safetensors`` + processor files), a file inside such a folder, or
a Hugging Face hub id (``"owner/name"``, optionally ``"owner/name@revision"``; a local path of that
spelling wins).
For a registry name the folders below are searched first, then the Hugging Face cache, then the hub:

1. ``$GROUNDED_SEG_WEIGHTS/<name>`` when that environment variable is set;
2. ``./weights/<name>`` in the current directory;
3. ``<source checkout>/weights/<name>`` when grounded_seg runs from a clone of its repository.

An official checkpoint file (``groundingdino_swint_ogc.pth``, ``sam_vit_h_4b8939.pth``...) is
converted once to such a folder and cached (see ``grounded_seg.official``).

Models the project trains itself (``shapes-*``) have no hub id: they ship in the checkout's
``weights/shapes/`` and are looked up there (``<dir>/shapes/<model>``) the same way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .official.checkpoint import is_official_checkpoint

Family = Literal["grounding_dino", "sam", "sam2", "sam_hq", "clip", "owlv2", "sam3"]

# transformers' ``model_type`` (a folder's config.json) -> the family that runs it
MODEL_TYPE_FAMILY: dict[str, Family] = {
    "grounding-dino": "grounding_dino",
    "mm-grounding-dino": "grounding_dino",
    "sam": "sam",
    "sam2": "sam2",
    "sam_hq": "sam_hq",
    "clip": "clip",
    "owlv2": "owlv2",
    "sam3": "sam3",
    "sam3_video": "sam3",  # the hub folder of facebook/sam3 (image and video model in one)
}
SEGMENTER_FAMILIES: tuple[Family, ...] = ("sam", "sam2", "sam_hq")
Role = Literal["detector", "segmenter"]

WEIGHTS_ENV = "GROUNDED_SEG_WEIGHTS"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: its role, the model family that runs it and where it comes from."""

    name: str
    role: Role
    family: Family
    hub_id: str | None
    revision: str | None
    params: str
    description: str
    bundled: str | None = None  # folder under weights/ for models the project trains and ships
    reproduce: str | None = None  # the command that trains a bundled model again
    gated: bool = False  # the hub asks for access first (on the model's page)


_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "grounding-dino-tiny",
        "detector",
        "grounding_dino",
        "IDEA-Research/grounding-dino-tiny",
        None,
        "172M",
        "Grounding DINO, Swin-T image backbone, BERT-base text",
    ),
    ModelSpec(
        "grounding-dino-base",
        "detector",
        "grounding_dino",
        "IDEA-Research/grounding-dino-base",
        None,
        "233M",
        "Grounding DINO, Swin-B image backbone, BERT-base text",
    ),
    ModelSpec(
        "clip-vit-base-patch32",
        "detector",
        "clip",
        "openai/clip-vit-base-patch32",
        None,
        "151M",
        "CLIP ViT-B/32: scores region crops against the prompt (the CLIP route)",
    ),
    ModelSpec(
        "clip-vit-large-patch14",
        "detector",
        "clip",
        "openai/clip-vit-large-patch14",
        None,
        "428M",
        "CLIP ViT-L/14: scores region crops against the prompt (the CLIP route)",
    ),
    ModelSpec(
        "mm-grounding-dino-tiny",
        "detector",
        "grounding_dino",
        "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
        None,
        "172M",
        "MM-Grounding-DINO (open re-training of Grounding DINO), Swin-T; O365, GoldG, V3Det",
    ),
    ModelSpec(
        "mm-grounding-dino-base",
        "detector",
        "grounding_dino",
        "openmmlab-community/mm_grounding_dino_base_o365v1_goldg_v3det",
        None,
        "232M",
        "MM-Grounding-DINO, Swin-B; O365, GoldG, V3Det",
    ),
    ModelSpec(
        "mm-grounding-dino-large",
        "detector",
        "grounding_dino",
        "openmmlab-community/mm_grounding_dino_large_o365v2_oiv6_goldg",
        None,
        "342M",
        "MM-Grounding-DINO, Swin-L; O365v2, OpenImages v6, GoldG",
    ),
    ModelSpec(
        "owlv2-base-patch16-ensemble",
        "detector",
        "owlv2",
        "google/owlv2-base-patch16-ensemble",
        None,
        "155M",
        "OWLv2 ViT-B/16: open-vocabulary boxes from CLIP-style class embeddings (the owlv2 route)",
    ),
    ModelSpec(
        "owlv2-large-patch14-ensemble",
        "detector",
        "owlv2",
        "google/owlv2-large-patch14-ensemble",
        None,
        "438M",
        "OWLv2 ViT-L/14 (the owlv2 route)",
    ),
    ModelSpec(
        "sam3",
        "detector",
        "sam3",
        "facebook/sam3",
        None,
        "840M",
        "SAM 3: every instance of a noun phrase, with boxes and masks (the sam3 route; gated on "
        "the hub: request access on its page, then `hf download facebook/sam3`)",
        gated=True,
    ),
    ModelSpec(
        "shapes-gdino",
        "detector",
        "grounding_dino",
        None,
        None,
        "2.3M",
        "small Grounding DINO trained by grounded_seg on the shapes world (bundled, offline)",
        bundled="shapes/gdino",
        reproduce="grounded-seg train shapes --model gdino --device cuda",
    ),
    ModelSpec(
        "shapes-clip",
        "detector",
        "clip",
        None,
        None,
        "0.98M",
        "tiny CLIP trained by grounded_seg on the shapes world (bundled, offline)",
        bundled="shapes/clip",
        reproduce="grounded-seg train shapes --model clip",
    ),
    ModelSpec(
        "shapes-sam",
        "segmenter",
        "sam",
        None,
        None,
        "0.4M",
        "tiny SAM trained by grounded_seg on the shapes world (bundled, offline)",
        bundled="shapes/sam",
        reproduce="grounded-seg train shapes --model sam",
    ),
    ModelSpec(
        "sam-vit-base",
        "segmenter",
        "sam",
        "facebook/sam-vit-base",
        None,
        "94M",
        "Segment Anything, ViT-B image encoder",
    ),
    ModelSpec(
        "sam-vit-large",
        "segmenter",
        "sam",
        "facebook/sam-vit-large",
        None,
        "312M",
        "Segment Anything, ViT-L image encoder",
    ),
    ModelSpec(
        "sam-vit-huge",
        "segmenter",
        "sam",
        "facebook/sam-vit-huge",
        None,
        "641M",
        "Segment Anything, ViT-H image encoder",
    ),
    ModelSpec(
        "sam2.1-hiera-tiny",
        "segmenter",
        "sam2",
        "facebook/sam2.1-hiera-tiny",
        None,
        "31M",
        "SAM 2.1, Hiera-T image encoder (image model: the official count adds the video "
        "memory); official sam2.1_hiera_tiny.pt loads too",
    ),
    ModelSpec(
        "sam2.1-hiera-small",
        "segmenter",
        "sam2",
        "facebook/sam2.1-hiera-small",
        None,
        "39M",
        "SAM 2.1, Hiera-S image encoder (image model: the official count adds the video "
        "memory); official sam2.1_hiera_small.pt loads too",
    ),
    ModelSpec(
        "sam2.1-hiera-base-plus",
        "segmenter",
        "sam2",
        "facebook/sam2.1-hiera-base-plus",
        None,
        "73M",
        "SAM 2.1, Hiera-B+ image encoder (image model: the official count adds the video "
        "memory); official sam2.1_hiera_base_plus.pt loads too",
    ),
    ModelSpec(
        "sam2.1-hiera-large",
        "segmenter",
        "sam2",
        "facebook/sam2.1-hiera-large",
        None,
        "217M",
        "SAM 2.1, Hiera-L image encoder (image model: the official count adds the video "
        "memory); official sam2.1_hiera_large.pt loads too",
    ),
    ModelSpec(
        "sam-hq-vit-base",
        "segmenter",
        "sam_hq",
        "syscv-community/sam-hq-vit-base",
        None,
        "95M",
        "SAM-HQ, ViT-B: SAM with a high-quality output token for finer mask edges "
        "(official sam_hq_vit_b.pth loads too)",
    ),
    ModelSpec(
        "sam-hq-vit-large",
        "segmenter",
        "sam_hq",
        "syscv-community/sam-hq-vit-large",
        None,
        "314M",
        "SAM-HQ, ViT-L (official sam_hq_vit_l.pth loads too)",
    ),
    ModelSpec(
        "sam-hq-vit-huge",
        "segmenter",
        "sam_hq",
        "syscv-community/sam-hq-vit-huge",
        None,
        "643M",
        "SAM-HQ, ViT-H (official sam_hq_vit_h.pth loads too)",
    ),
)


def list_models(role: Role | None = None) -> list[ModelSpec]:
    """The registered models, optionally only the ``"detector"`` or ``"segmenter"`` ones."""
    if role not in (None, "detector", "segmenter"):
        raise ValueError(f"role: expected None, 'detector' or 'segmenter', got {role!r}")
    return [spec for spec in _MODELS if role is None or spec.role == role]


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ``ValueError`` listing the valid names otherwise."""
    for spec in _MODELS:
        if spec.name == name:
            return spec
    valid = ", ".join(spec.name for spec in _MODELS)
    raise ValueError(f"unknown model name {name!r}: expected a local path or one of: {valid}")


def weights_dirs() -> list[Path]:
    """The folders searched for ``<name>/`` before the Hugging Face cache, in order."""
    dirs: list[Path] = []
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.cwd() / "weights")
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file():
        dirs.append(checkout / "weights")
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


@dataclass(frozen=True)
class ModelSource:
    """Where to load a model from: a local folder, or a hub id (cache first, then download)."""

    label: str  # what the user passed, for messages
    local_dir: Path | None
    spec: ModelSpec | None
    hub_repo: str | None = None  # a hub id passed as such (no registry entry)
    hub_revision: str | None = None

    @property
    def hub_id(self) -> str | None:
        if self.hub_repo is not None:
            return self.hub_repo
        return None if self.spec is None else self.spec.hub_id

    @property
    def revision(self) -> str | None:
        if self.hub_repo is not None:
            return self.hub_revision
        return None if self.spec is None else self.spec.revision


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}(@[A-Za-z0-9_./-]+)?$")


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``("owner/name", revision or None)`` when ``text`` is spelled as a hub id, else ``None``."""
    if not _HUB_ID.match(text) or ".." in text or text.startswith(("./", "../")):
        return None
    repo, _, revision = text.partition("@")
    return repo, revision or None


def resolve_model(name_or_path: str | os.PathLike, role: Role) -> ModelSource:
    """Turn a registry name or a path into a :class:`ModelSource`.

    A path (anything that exists on disk, or contains a path separator) must be a model folder or a
    file inside one; an existing registry name is looked up in :func:`weights_dirs` first; a
    string spelled ``owner/name[@revision]`` that is no existing path is a hub id.
    Raises ``TypeError`` for a non-str/PathLike, ``ValueError`` for an unknown name or a model of
    the wrong role, and ``FileNotFoundError`` for a path that does not exist.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"{role}: expected a model name or a path, got {type(name_or_path).__name__}"
        )
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ValueError(f"{role}: expected a model name or a path, got an empty string")
    path = Path(text).expanduser()
    looks_like_path = isinstance(name_or_path, os.PathLike) or os.sep in text or "/" in text
    if path.exists() or (looks_like_path and not _is_registered(text)):
        if not path.exists():
            hub = None if isinstance(name_or_path, os.PathLike) else parse_hub_id(text)
            if hub is not None:
                return ModelSource(text, None, None, hub_repo=hub[0], hub_revision=hub[1])
            raise FileNotFoundError(
                f"{role}: no such file or folder: {text} (nor a hub id: owner/name[@revision])"
            )
        if path.is_file() and is_official_checkpoint(path):
            return ModelSource(text, _official_model_dir(path, role), None)
        folder = path if path.is_dir() else path.parent
        return ModelSource(text, folder, None)
    spec = get_model_spec(text)
    if spec.role != role:
        valid = ", ".join(s.name for s in list_models(role))
        raise ValueError(f"{role}: {text!r} is a {spec.role}, expected one of: {valid}")
    for directory in weights_dirs():
        candidate = directory / (spec.bundled or spec.name)
        if (candidate / "config.json").is_file():
            return ModelSource(text, candidate, spec)
    return ModelSource(text, None, spec)


_ROLE_FAMILIES: dict[str, tuple[str, ...]] = {
    "detector": ("grounding_dino",),
    "segmenter": SEGMENTER_FAMILIES,
}


def _official_model_dir(path: Path, role: Role) -> Path:
    """The converted (cached) model folder of an official ``.pth``, after checking its role."""
    import json

    from .errors import InvalidWeightsError
    from .official import converted_model_dir

    folder = converted_model_dir(path)
    record = json.loads((folder / "grounded_seg.json").read_text())["converted_from"]
    if record["family"] not in _ROLE_FAMILIES[role]:
        raise InvalidWeightsError(
            f"{role}: {path} is an official {record['family']} {record['variant']} checkpoint; "
            f"the {role} needs a {' or '.join(_ROLE_FAMILIES[role])} one"
        )
    return folder


def _is_registered(name: str) -> bool:
    return any(spec.name == name for spec in _MODELS)
