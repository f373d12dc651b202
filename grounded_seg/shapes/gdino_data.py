"""The shapes-gdino recipe's data: its compact vocabulary and its captions (see
:mod:`grounded_seg.shapes.train_gdino`). Batch ``i`` is a pure function of ``(seed, i)``."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..gdino import GroundingCollator, GroundingSample
from .world import COLORS, PHRASES, SHAPES, TRAIN_SEEDS, make_scene

IMAGE_SIZE = 128
MAX_TEXT_LEN = 64  # tokens: all 20 phrases take 62 with [CLS] and [SEP]
VOCAB_SIZE = 1100
OTHER_COLORS = ("orange", "black", "white", "pink", "brown", "grey")
OTHER_SHAPES = ("hexagon", "heart", "cross", "oval", "ring")
OTHER_THINGS = ("dog", "cat", "person", "car", "tree", "cup", "house", "bird")


def write_shapes_vocab(path: Path) -> Path:
    """A ``vocab.txt`` of :data:`VOCAB_SIZE` WordPiece entries: Grounding DINO's special ids in
    place (0 [PAD], 100 [UNK], 101 [CLS], 102 [SEP], 103 [MASK], 1012 ".", 1029 "?"), the
    world's words, "a"/"an"/"the"/"##s", and single letters and digits so that any other word
    tokenises (into letters) rather than into [UNK]."""
    vocab = [f"[unused{i}]" for i in range(VOCAB_SIZE)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]",
                         1012: ".", 1029: "?"}.items():  # fmt: skip
        vocab[index] = token
    words = [*COLORS, *SHAPES, "a", "an", "the", "and", "of", "##s", "##es"]
    pieces = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    pieces += list(string.digits) + [f"##{d}" for d in string.digits] + list(",-!'()/&")
    for offset, token in enumerate(words + pieces):
        vocab[200 + offset] = token
    path.write_text("\n".join(vocab) + "\n")
    return path


def _other_phrase(rng: np.random.Generator) -> str:
    kind = rng.integers(3)
    if kind == 0:
        return f"{rng.choice(OTHER_COLORS)} {rng.choice(SHAPES)}"
    if kind == 1:
        return f"{rng.choice(list(COLORS))} {rng.choice(OTHER_SHAPES)}"
    return str(rng.choice(OTHER_THINGS))


def _near_misses(present: Sequence[str], absent: Sequence[str]) -> list[str]:
    """The absent phrases sharing a colour or a shape with a present one ("red star" beside a
    red circle): the distractors a model that reads only one word gets wrong."""
    colours = {p.split()[0] for p in present}
    shapes = {p.split()[1] for p in present}
    return [p for p in absent if p.split()[0] in colours or p.split()[1] in shapes]


def shapes_sample(rng: np.random.Generator) -> GroundingSample:
    """One training scene and its caption (see the module's recipe)."""
    scene = make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)), IMAGE_SIZE)
    present = sorted(set(scene.phrases))
    absent = [p for p in PHRASES if p not in present]
    roll = rng.random()
    if roll < 0.15:  # everything the world has, as in grounded-seg eval
        listed = list(PHRASES)
    else:
        if roll < 0.25:
            named: list[str] = []
        elif roll < 0.6:
            named = present
        else:
            k = int(rng.integers(1, len(present) + 1))
            named = [str(p) for p in rng.choice(present, k, replace=False)]
        hard = _near_misses(present, absent)
        easy = [p for p in absent if p not in hard]
        count = int(rng.integers(0 if named else 1, 6))
        distractors: list[str] = []
        for _ in range(count):
            pool = hard if (hard and rng.random() < 0.6) or not easy else easy
            pool = [p for p in pool if p not in distractors]
            if pool:
                distractors.append(str(rng.choice(pool)))
        if rng.random() < 0.3:
            other = _other_phrase(rng)
            if other not in distractors:
                distractors.append(other)
        listed = list(named) + distractors
    order = [listed[i] for i in rng.permutation(len(listed))]
    return _sample(scene, order)


def single_phrase_sample(rng: np.random.Generator) -> GroundingSample:
    """One training scene and a caption of one phrase, as users mostly prompt: half the time a
    phrase present in the scene (every object of it is a target), else an absent one (60% a near
    miss sharing a colour or shape with a present object, 10% words the world never shows, the
    rest any absent phrase), which must return nothing."""
    scene = make_scene(int(rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop)), IMAGE_SIZE)
    present = sorted(set(scene.phrases))
    if rng.random() < 0.5:
        return _sample(scene, [str(rng.choice(present))])
    absent = [p for p in PHRASES if p not in present]
    hard = _near_misses(present, absent)
    roll = rng.random()
    if hard and roll < 0.6:
        phrase = str(rng.choice(hard))
    elif roll > 0.9:
        phrase = _other_phrase(rng)
    else:
        phrase = str(rng.choice(absent))
    return _sample(scene, [phrase])


def _sample(scene: Any, caption: Sequence[str]) -> GroundingSample:
    """``scene`` with its caption's phrases; the targets are the objects those phrases name."""
    where = {p: i for i, p in enumerate(caption)}
    keep = [i for i, obj in enumerate(scene.objects) if obj.phrase in where]
    return GroundingSample(
        scene.image,
        tuple(caption),
        scene.boxes[keep] if keep else np.zeros((0, 4), np.float32),
        np.array([where[scene.objects[i].phrase] for i in keep], np.int64),
    )


def check_share(share: float) -> None:
    ok = isinstance(share, int | float) and not isinstance(share, bool) and 0.0 <= share <= 1.0
    if not ok:
        raise ValueError(f"single_phrase_share: expected a number in [0, 1], got {share!r}")


class ShapesBatches:
    """``batch(step)``: ``batch_size`` samples drawn with ``default_rng([seed, step])``; each is a
    :func:`single_phrase_sample` with probability ``single_phrase_share``, else a
    :func:`shapes_sample` (with share 0 no draw decides, so the stream is the first stage's)."""

    def __init__(
        self,
        collator: GroundingCollator,
        batch_size: int,
        seed: int,
        single_phrase_share: float = 0.0,
    ) -> None:
        check_share(single_phrase_share)
        self.collator, self.batch_size, self.seed = collator, batch_size, seed
        self.single_phrase_share = single_phrase_share

    def sample(self, rng: np.random.Generator) -> GroundingSample:
        if self.single_phrase_share and rng.random() < self.single_phrase_share:
            return single_phrase_sample(rng)
        return shapes_sample(rng)

    def __call__(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, step])
        return self.collator([self.sample(rng) for _ in range(self.batch_size)])
