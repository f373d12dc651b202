"""Thread safety: several threads calling at once get exactly what sequential calls get.

The contract (README, "Threads"): ``segment()`` may be called from any number of threads; model
wrappers (proposers, segmenters) may be shared; a ``GroundedSAM`` holds one image, so each thread
uses its own, built around shared models. These tests run real concurrent calls on the bundled
shapes models and compare every answer with the sequential one, bit for bit.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import grounded_seg
from grounded_seg import GroundedSAM, api, segment
from grounded_seg.proposers.backbone_cache import CachedBackbone, backbone_cache
from grounded_seg.proposers.grounding_dino import GroundingDinoProposer
from grounded_seg.shapes import HELD_OUT_SEEDS, make_scene

SCENES = [
    make_scene(seed) for seed in range(HELD_OUT_SEEDS.start + 300, HELD_OUT_SEEDS.start + 308)
]
# different prompts per call, so tokenizer settings and per-prompt work differ between threads
PROMPTS = [
    "red circle. blue square. green triangle. yellow star. purple circle.",
    "blue square",
    ["yellow star", "red circle"],
    "green triangle. purple star.",
]
ROUTES = {"grounding_dino": "shapes-gdino", "clip": "shapes-clip"}
THREADS, CALLS = 4, 24


def _fingerprint(det) -> tuple:
    return (
        det.xyxy.tobytes(),
        det.confidence.tobytes(),
        det.class_id.tobytes(),
        det.mask.tobytes(),
        tuple(det.data["class_name"].tolist()),
    )


def _job(i: int) -> tuple[np.ndarray, object]:
    return SCENES[i % len(SCENES)].image, PROMPTS[i % len(PROMPTS)]


def _run_concurrently(call, n_calls: int, threads: int = THREADS) -> list:
    start = threading.Barrier(threads)

    def first_waits(i: int):
        if i < threads:
            start.wait(timeout=60)  # the first call of every thread starts at the same moment
        return call(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(first_waits, range(n_calls)))


@pytest.fixture
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_segment_from_threads_equals_sequential(route, one_torch_thread):
    def call(i: int):
        image, prompt = _job(i)
        return _fingerprint(
            segment(image, prompt, proposer=route, detector=ROUTES[route], segmenter="shapes-sam")
        )

    sequential = [call(i) for i in range(len(SCENES) * len(PROMPTS) // 4)]
    assert sum(len(np.frombuffer(f[0], np.float32)) for f in sequential) > 0  # something found
    concurrent = _run_concurrently(call, CALLS)
    mismatches = [i for i, got in enumerate(concurrent) if got != sequential[i % len(sequential)]]
    assert not mismatches, f"{len(mismatches)} of {CALLS} concurrent calls differ: {mismatches}"


def test_a_blank_image_stays_blank_among_busy_threads(one_torch_thread):
    """The stale-backbone bug made a blank image inherit another image's detections."""
    blank = np.full((128, 128, 3), 128, np.uint8)
    kwargs = dict(detector="shapes-gdino", segmenter="shapes-sam")
    assert len(segment(blank, "red circle", **kwargs)) == 0

    def call(i: int) -> int:
        image = blank if i % 2 else SCENES[i % len(SCENES)].image
        return len(segment(image, "red circle. blue square. yellow star.", **kwargs))

    counts = _run_concurrently(call, CALLS)
    assert [c for i, c in enumerate(counts) if i % 2] == [0] * (CALLS // 2)
    assert sum(c for i, c in enumerate(counts) if not i % 2) > 0


def test_grounded_sams_sharing_models_from_threads(one_torch_thread):
    shared = GroundedSAM(detector="shapes-gdino", segmenter="shapes-sam", device="cpu")

    def call(i: int):
        gs = GroundedSAM(detector=shared.proposer, segmenter=shared.segmenter)  # models shared
        image, prompt = _job(i)
        gs.set_image(image)
        first = _fingerprint(gs.predict(prompt))
        return first, _fingerprint(gs.predict("purple circle. green square."))

    sequential = [call(i) for i in range(8)]
    concurrent = _run_concurrently(call, CALLS)
    assert all(got == sequential[i % 8] for i, got in enumerate(concurrent))


def test_cold_start_from_four_threads_loads_once(one_torch_thread):
    grounded_seg.clear_model_cache()
    loads = api._warm.loads

    def call(i: int):
        image, prompt = _job(i)
        return _fingerprint(segment(image, prompt, detector="shapes-gdino", segmenter="shapes-sam"))

    concurrent = _run_concurrently(call, 4)
    assert api._warm.loads == loads + 1  # the other three waited for the first load
    sequential = [call(i) for i in range(4)]
    assert concurrent == sequential


def test_models_loaded_by_four_threads_at_once_are_complete(tiny_gdino_dir, tiny_sam_dir):
    """Parallel from_pretrained reported '30 missing keys' (bad weights) before loads took turns."""
    from grounded_seg.segmenters.sam import SamSegmenter

    def load(i: int):
        if i % 2:
            return GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu").model
        return SamSegmenter.from_pretrained(tiny_sam_dir, device="cpu").model

    models = _run_concurrently(load, 8)
    reference = {0: models[0].state_dict(), 1: models[1].state_dict()}
    for i, model in enumerate(models):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, reference[i % 2][key], rtol=0, atol=0)


# ----------------------------------------------------------------- the backbone cache itself


@pytest.fixture(scope="module")
def tiny_proposer(tiny_gdino_dir):
    return GroundingDinoProposer.from_pretrained(tiny_gdino_dir, device="cpu")


def test_backbone_cache_is_installed_without_changing_the_state_dict(tiny_gdino_dir, tiny_proposer):
    from transformers import GroundingDinoForObjectDetection

    stock = GroundingDinoForObjectDetection.from_pretrained(tiny_gdino_dir)
    assert isinstance(tiny_proposer.model.model.backbone, CachedBackbone)
    assert "forward" not in vars(tiny_proposer.model.model.backbone)  # no per-call swap
    ours = tiny_proposer.model.state_dict()
    assert list(ours) == list(stock.state_dict())
    for key, value in stock.state_dict().items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_backbone_runs_once_per_image_and_returns_fresh_lists(tiny_proposer, scene):
    backbone = tiny_proposer.model.model.backbone
    calls = []
    hook = backbone.conv_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        state = tiny_proposer.encode_image(scene)
        prompt = grounded_seg.normalize_prompt("red square. blue car.")
        first = tiny_proposer.propose(state, prompt, 0.0)
        second = tiny_proposer.propose(state, grounded_seg.normalize_prompt("blue car"), 0.0)
        again = tiny_proposer.propose(state, prompt, 0.0)
        assert len(calls) == 1 and len(second) > 0
        np.testing.assert_array_equal(first.xyxy, again.xyxy)
        # GroundingDinoModel appends the extra level's position embedding to the list it gets:
        # the cached lists must not grow with every prompt
        cached_levels = len(state.backbone_cache["output"][1])
        with torch.inference_mode(), backbone_cache(state.backbone_cache):
            _, positions = backbone(state.pixel_values, state.pixel_mask)
        positions.append("appended by the caller")
        assert len(state.backbone_cache["output"][1]) == cached_levels
        # outside a cache block (another thread, or no proposer call) it computes afresh
        with torch.inference_mode():
            backbone(state.pixel_values, state.pixel_mask)
        assert len(calls) == 2
    finally:
        hook.remove()


def test_proposer_model_survives_deepcopy(tiny_proposer, scene):
    prompt = grounded_seg.normalize_prompt("red square. blue car.")
    expected = tiny_proposer.propose(tiny_proposer.encode_image(scene), prompt, 0.0)
    model = copy.deepcopy(tiny_proposer.model)
    clone = GroundingDinoProposer(model, tiny_proposer.tokenizer, tiny_proposer.image_processor)
    got = clone.propose(clone.encode_image(scene), prompt, 0.0)
    np.testing.assert_array_equal(got.xyxy, expected.xyxy)
    # the copy computes with its own weights, not the original's
    original = tiny_proposer.model.model.backbone.conv_encoder
    assert model.model.backbone.conv_encoder is not original


def test_clip_text_embeddings_from_threads(one_torch_thread):
    """A fast tokenizer's padding state is shared: unlocked, threads got each other's settings."""
    from grounded_seg.proposers.clip import ClipProposer
    from grounded_seg.segmenters.sam import SamSegmenter

    sam = SamSegmenter.from_pretrained("shapes-sam", device="cpu")
    scorer = ClipProposer.from_pretrained("shapes-clip", segmenter=sam, device="cpu").scorer
    texts = [
        ("a photo of a red circle.",),
        ("a photo of a blue square.", "background", "a photo of a yellow star."),
        ("a texture", "a photo of a green triangle.", "a plain background"),
    ]
    sequential = [scorer.embed_texts(t) for t in texts]
    got = _run_concurrently(lambda i: scorer.embed_texts(texts[i % 3]), 8 * 30, threads=8)
    for i, embeddings in enumerate(got):
        torch.testing.assert_close(embeddings, sequential[i % 3], rtol=0, atol=0)
