"""The factored image<->text attention returns what transformers' BiMultiHeadAttention returns
(outputs, attention weights, gradients, dropout included), and installing it keeps the model's
outputs and its state dict."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
from transformers.models.grounding_dino.modeling_grounding_dino import (
    GroundingDinoBiMultiHeadAttention,
)

from grounded_seg.proposers.fusion import FactoredBiAttention, install_factored_fusion

from tiny_models import tiny_gdino_config


def _pair(dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    # the enhancer's own sizes: d_model 256, 4 heads of 256 (fusion width 1024)
    config = GroundingDinoConfig(fusion_dropout=dropout)
    original = GroundingDinoBiMultiHeadAttention(config)
    for parameter in original.parameters():  # non-zero biases, logits of a useful spread
        torch.nn.init.normal_(parameter, std=0.05)
    return original, FactoredBiAttention(copy.deepcopy(original))


def _inputs(batch: int = 2, vision: int = 700, text: int = 7, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, vision, 256, generator=gen)
    y = torch.randn(batch, text, 256, generator=gen)
    vision_mask = torch.zeros(batch, vision, dtype=torch.bool)
    text_mask = torch.zeros(batch, text, dtype=torch.bool)
    vision_mask[-1, vision - 100 :] = True  # padding in the second image and the second caption
    text_mask[-1, text - 2 :] = True
    return x, y, vision_mask, text_mask


def _assert_same(got, expected) -> None:
    (vision, vision_weights), (text, text_weights) = got
    (vision_e, vision_weights_e), (text_e, text_weights_e) = expected
    assert vision.shape == vision_e.shape and text.shape == text_e.shape
    assert vision_weights.shape == vision_weights_e.shape
    assert text_weights.shape == text_weights_e.shape
    torch.testing.assert_close(vision, vision_e, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(text, text_e, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(vision_weights, vision_weights_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_weights, text_weights_e, rtol=1e-5, atol=1e-7)
    assert float(vision_e.detach().abs().max()) > 0.5 and float(text_e.detach().abs().max()) > 0.05


@pytest.mark.parametrize("masks", [True, False])
def test_same_outputs_and_weights_as_transformers(masks: bool) -> None:
    original, factored = _pair()
    x, y, vision_mask, text_mask = _inputs()
    args = (x, y, vision_mask, text_mask) if masks else (x, y)
    with torch.no_grad():
        expected = original.eval()(*args)
        got = factored.eval()(*args)
    _assert_same(got, expected)
    if masks:  # padding gets no attention either way
        assert float(got[0][1].view(2, 4, 700, 7)[1, :, :, 5:].abs().max()) == 0.0
        assert float(got[1][1].view(2, 4, 7, 700)[1, :, :, 600:].abs().max()) == 0.0


def test_same_with_dropout_in_training_and_same_gradients() -> None:
    """Dropout is drawn on the same tensors in the same order, so a shared seed gives the same
    masks; the text side's bias term then needs the dropped rows' true mass."""
    original, factored = _pair(dropout=0.2)
    x, y, vision_mask, text_mask = _inputs(vision=300, seed=3)
    results = []
    for module in (original.train(), factored.train()):
        xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        torch.manual_seed(123)
        out = module(xs, ys, vision_mask, text_mask)
        (out[0][0].square().sum() + out[1][0].square().sum()).backward()
        grads = [
            xs.grad,
            ys.grad,
            module.vision_proj.weight.grad,
            module.values_vision_proj.bias.grad,
        ]
        results.append((out, grads))
    (expected, expected_grads), (got, got_grads) = results
    _assert_same(got, expected)
    for ours, theirs in zip(got_grads, expected_grads, strict=True):
        scale = float(theirs.abs().max())
        assert scale > 0
        # other summation orders over the 300 image tokens: within 1e-5 of the largest entry
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * scale)


def test_installed_model_keeps_outputs_and_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    config = tiny_gdino_config()
    model = GroundingDinoForObjectDetection(config).eval()
    for module in model.modules():  # the layer scale starts at 1e-4: make the fusion matter
        if type(module).__name__ == "GroundingDinoFusionLayer":
            module.vision_param.data.fill_(0.5)
            module.text_param.data.fill_(0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[101, 500, 600, 1012, 700, 1012, 102]])
    inputs = {
        "pixel_values": torch.randn(1, 3, 64, 96),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
    }
    with torch.inference_mode():
        before = model(**inputs)
    assert install_factored_fusion(model) == config.encoder_layers
    assert install_factored_fusion(model) == config.encoder_layers  # idempotent
    assert not any(isinstance(m, GroundingDinoBiMultiHeadAttention) for m in model.modules())
    after_state = model.state_dict()
    assert list(after_state) == list(state)
    assert all(torch.equal(after_state[k], state[k]) for k in state)
    with torch.inference_mode():
        after = model(**inputs)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(after.pred_boxes, before.pred_boxes, rtol=0, atol=1e-5)
    # copies and saved folders keep working (and load back into the stock class); pickling
    # the whole model is refused by transformers' own output-capturing hooks, installed or not
    clone = copy.deepcopy(model)
    with torch.inference_mode():
        torch.testing.assert_close(clone(**inputs).logits, after.logits, rtol=0, atol=0)
    pickle.loads(pickle.dumps(clone.model.encoder.layers[0].fusion_layer))
    model.save_pretrained(tmp_path)
    reloaded = GroundingDinoForObjectDetection.from_pretrained(tmp_path).eval()
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**inputs).logits, before.logits, rtol=0, atol=1e-4)


def test_refuses_a_module_that_is_not_the_bi_attention() -> None:
    with pytest.raises(ValueError, match="GroundingDinoBiMultiHeadAttention"):
        FactoredBiAttention(torch.nn.Linear(4, 4))
    _, factored = _pair()
    with pytest.raises(ValueError, match="text_features"):
        factored(torch.randn(2, 10, 256), torch.randn(3, 4, 256))
