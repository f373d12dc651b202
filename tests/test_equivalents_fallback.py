"""Each equivalent installed into a transformers model checks what it replaces first (a source
fingerprint and a self-check on a tiny input): on the verified stack all four install; when the
replaced code changed (its source, or its numbers) the stock module stays, the model answers as
the stock model does, and one INFO line says what was kept and why."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from transformers import GroundingDinoForObjectDetection, SamModel

from grounded_seg import _equivalents
from grounded_seg.proposers import backbone_cache, deformable, fusion
from grounded_seg.segmenters import rel_pos

from tiny_models import tiny_gdino_config, tiny_sam_config

LOGGER = "grounded_seg._equivalents"


def _gdino() -> torch.nn.Module:
    torch.manual_seed(0)
    return GroundingDinoForObjectDetection(tiny_gdino_config()).eval()


def _gdino_answers(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[101, 500, 600, 1012, 102]])  # [CLS] w w . [SEP]
    with torch.inference_mode():
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))
    return out.logits, out.pred_boxes


def _sam() -> torch.nn.Module:
    torch.manual_seed(0)
    model = SamModel(tiny_sam_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name:  # zeros at init: make the bias matter
                param.normal_()
    return model


def _sam_answers(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return (model.get_image_embeddings(pixels),)


@dataclasses.dataclass(frozen=True)
class Case:
    install: Callable[[torch.nn.Module], int]
    module: ModuleType  # where the installer, its EQUIVALENT and VERIFIED_FINGERPRINTS live
    replaced: Callable[[torch.nn.Module], bool]  # the stock modules the installer replaces
    member: str  # the stock method that the tests change
    model: Callable[[], torch.nn.Module]
    answers: Callable[[torch.nn.Module], tuple[torch.Tensor, ...]]
    installed: int  # on the verified stack, for the tiny model


def _named(*names: str) -> Callable[[torch.nn.Module], bool]:
    return lambda module: type(module).__name__ in names


CASES = {
    "deformable": Case(
        deformable.install_deformable_sampler,
        deformable,
        _named("MultiScaleDeformableAttention"),
        "forward",
        _gdino,
        _gdino_answers,
        3,
    ),
    "fusion": Case(
        fusion.install_factored_fusion,
        fusion,
        _named(*fusion.ORIGINAL_CLASS_NAME),
        "forward",
        _gdino,
        _gdino_answers,
        1,
    ),
    "backbone": Case(
        backbone_cache.install_backbone_cache,
        backbone_cache,
        _named(*backbone_cache.ORIGINAL_CLASS_NAME),
        "forward",
        _gdino,
        _gdino_answers,
        1,
    ),
    "rel_pos": Case(
        rel_pos.contiguous_rel_pos,
        rel_pos,
        lambda module: bool(getattr(module, "use_rel_pos", False)),
        "get_decomposed_rel_pos",
        _sam,
        _sam_answers,
        2,
    ),
}


def _stock_class(case: Case, model: torch.nn.Module) -> type:
    return next(type(m) for m in model.modules() if case.replaced(m))


def _stock_count(case: Case, model: torch.nn.Module) -> int:
    """How many stock modules run as transformers wrote them (not replaced, no builder set; a
    replaced deformable kernel stays inside the gather, as its fallback on other devices)."""
    spare = {
        id(m.fallback)
        for m in model.modules()
        if isinstance(m, deformable.GatherDeformableAttention)
    }
    return sum(
        case.replaced(m) and "get_decomposed_rel_pos" not in vars(m) and id(m) not in spare
        for m in model.modules()
    )


def _fallback_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= 20]


@pytest.mark.parametrize("name", list(CASES))
def test_on_the_verified_stack_the_equivalent_installs(name, caplog) -> None:
    case = CASES[name]
    model = case.model()
    cls = _stock_class(case, model)
    assert _equivalents.fingerprint(cls, case.module.EQUIVALENT.members) in (
        case.module.VERIFIED_FINGERPRINTS
    )
    stock_module = next(m for m in model.modules() if case.replaced(m))
    assert _equivalents.refusal(case.module.EQUIVALENT, stock_module) is None  # self-check too
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert case.install(model) == case.installed
        assert case.install(model) == case.installed  # idempotent
    assert _stock_count(case, model) == 0
    assert _fallback_lines(caplog) == []


def _same_code_new_source(original: Callable) -> Callable:
    def changed(self, *args, **kwargs):  # what a new transformers might hold: new source
        return original(self, *args, **kwargs)

    return changed


def _check_fallback(case: Case, caplog, *words: str) -> None:
    """Install on the tiny model: nothing installed, the stock modules kept, the stock model's
    answers, one INFO line naming the kept class and the reason."""
    model = case.model()
    stock = copy.deepcopy(model)
    before = _stock_count(case, model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert case.install(model) == 0
    assert _stock_count(case, model) == before > 0
    for got, expected in zip(case.answers(model), case.answers(stock), strict=True):
        assert torch.equal(got, expected)
    lines = _fallback_lines(caplog)
    assert len(lines) == 1, lines
    assert _stock_class(case, model).__name__ in lines[0]
    assert "not installed" in lines[0]
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("name", list(CASES))
def test_a_replaced_method_with_new_source_keeps_the_stock_module(name, monkeypatch, caplog):
    case = CASES[name]
    cls = _stock_class(case, case.model())
    monkeypatch.setattr(cls, case.member, _same_code_new_source(getattr(cls, case.member)))
    _check_fallback(case, caplog, "fingerprint", "verified: transformers")


def _scaled(original: Callable) -> Callable:
    """The same method, its (first) output 0.1% larger: new numbers under a known source."""

    def changed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out * 1.001
        (vision, vision_weights), text = out  # the fusion's two directions
        return (vision * 1.001, vision_weights), text

    return changed


@pytest.mark.parametrize("name", ["deformable", "fusion", "rel_pos"])
def test_a_replaced_method_with_new_numbers_keeps_the_stock_module(name, monkeypatch, caplog):
    case = CASES[name]
    cls = _stock_class(case, case.model())
    monkeypatch.setattr(cls, case.member, _scaled(getattr(cls, case.member)))
    members = case.module.EQUIVALENT.members
    found = _equivalents.fingerprint(cls, members)  # accepted: only the self-check can tell
    monkeypatch.setitem(case.module.VERIFIED_FINGERPRINTS, found, "a test")
    _check_fallback(case, caplog, "self-check", "max difference")


def test_a_backbone_with_a_new_output_keeps_the_stock_backbone(monkeypatch, caplog) -> None:
    """The cache returns what the backbone returned; a backbone that now returns a mapping
    (the model reads it as a mapping too) fails the self-check and is left alone."""
    case = CASES["backbone"]
    cls = _stock_class(case, case.model())
    original = cls.forward

    class Output(dict):
        def __iter__(self):  # unpacks as (features, positions), like the tuple it was
            return iter(self.values())

    def changed(self, pixel_values, pixel_mask):
        features, positions = original(self, pixel_values, pixel_mask)
        return Output(features=features, positions=positions)

    monkeypatch.setattr(cls, "forward", changed)
    found = _equivalents.fingerprint(cls, backbone_cache.EQUIVALENT.members)
    monkeypatch.setitem(backbone_cache.VERIFIED_FINGERPRINTS, found, "a test")
    _check_fallback(case, caplog, "self-check")


def test_the_self_check_runs_once_per_class(monkeypatch) -> None:
    calls = []

    def counted(stock: torch.nn.Module) -> str | None:
        calls.append(type(stock))
        return fusion._self_check(stock)

    equivalent = dataclasses.replace(
        fusion.EQUIVALENT, name="fusion, counted (a test)", self_check=counted
    )
    monkeypatch.setattr(fusion, "EQUIVALENT", equivalent)
    monkeypatch.setattr(_equivalents, "_CHECKED", {})
    assert fusion.install_factored_fusion(_gdino()) == 1
    assert fusion.install_factored_fusion(_gdino()) == 1
    assert len(calls) == 1


def test_a_failing_self_check_is_a_refusal_not_an_error() -> None:
    def broken(stock: torch.nn.Module) -> str | None:
        raise RuntimeError("shapes changed")

    equivalent = dataclasses.replace(
        fusion.EQUIVALENT, name="fusion, broken (a test)", self_check=broken
    )
    model = _gdino()
    stock = next(m for m in model.modules() if CASES["fusion"].replaced(m))
    reason = _equivalents.refusal(equivalent, stock)
    assert reason is not None and "RuntimeError: shapes changed" in reason


def test_the_fingerprint_reads_code_not_docstrings_annotations_or_layout() -> None:
    class Stock:
        def forward(self, x: torch.FloatTensor, scale: float = 2.0) -> torch.FloatTensor:
            """Scale x."""
            y: torch.FloatTensor = x * scale  # the product
            return y

    class Retyped:
        def forward(self, x: torch.Tensor, scale=2.0):
            y = x * scale
            return y

    class Changed:
        def forward(self, x: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
            """Scale x."""
            y: torch.Tensor = x * scale + 0
            return y

    stock = _equivalents.fingerprint(Stock, ("forward",))
    assert _equivalents.fingerprint(Retyped, ("forward",)) == stock
    assert _equivalents.fingerprint(Changed, ("forward",)) != stock
    assert _equivalents.fingerprint(Stock, ("missing",)) == "no source"
