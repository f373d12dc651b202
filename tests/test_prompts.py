"""Prompt normalisation, class token spans with the real WordPiece vocabulary, phrases, passes."""

from __future__ import annotations

import itertools

import pytest
import torch

from grounded_seg.prompts import (
    build_caption,
    class_scores,
    normalize_prompt,
    phrase_for,
    plan_text_passes,
)


@pytest.mark.parametrize(
    ("prompt", "classes"),
    [
        ("black cat", ("black cat",)),
        ("  Black   CAT  ", ("black cat",)),
        ("the running girl", ("the running girl",)),
        ("cat. dog.", ("cat", "dog")),
        ("cat . dog", ("cat", "dog")),
        ("Cat.\n\tPotted  Plant.", ("cat", "potted plant")),
        ("cat. . dog. cat.", ("cat", "dog")),  # empty pieces dropped, repeats kept once
        (["Cat", " potted plant. "], ("cat", "potted plant")),
        (("dog",), ("dog",)),
    ],
)
def test_normalize_prompt(prompt, classes):
    assert normalize_prompt(prompt).classes == classes


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        ("", ValueError, "expected text"),
        ("   ", ValueError, "expected text"),
        (" . . ", ValueError, "expected text"),
        ([], ValueError, "at least one class"),
        (["cat", ""], ValueError, r"prompt\[1\]: expected a non-empty class"),
        (["cat", "Cat"], ValueError, r"repeats prompt\[0\]"),
        (["cat. dog"], ValueError, "may not contain '.'"),
        (["cat", 3], TypeError, r"prompt\[1\]: expected str, got int"),
        (None, TypeError, "expected a str or a list of str, got NoneType"),
        (42, TypeError, "got int"),
        (b"cat", TypeError, "got bytes"),
    ],
)
def test_normalize_prompt_rejects(prompt, error, match):
    with pytest.raises(error, match=match):
        normalize_prompt(prompt)


def test_caption_and_char_spans():
    caption, spans = build_caption(["cat", "potted plant"])
    assert caption == "cat. potted plant."
    assert [caption[s:e] for s, e in spans] == ["cat", "potted plant"]
    assert normalize_prompt(["cat", "potted plant"]).caption == caption


def tokens(tokenizer, text_pass):
    return tokenizer.convert_ids_to_tokens(list(text_pass.input_ids))


def test_word_pieces_map_to_whole_class(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt("pottedplant."), bert_tokenizer, 256)
    expected = ["[CLS]", "pot", "##ted", "##pl", "##ant", ".", "[SEP]"]
    assert tokens(bert_tokenizer, text_pass) == expected
    assert text_pass.input_ids[0] == 101 and text_pass.input_ids[-1] == 102
    assert text_pass.input_ids[5] == 1012
    assert text_pass.class_token_spans == ((1, 5),)
    assert [(w.start, w.end) for w in text_pass.words] == [(1, 5)]


def test_class_list_spans(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt(["cat", "potted plant"]), bert_tokenizer, 256)
    assert tokens(bert_tokenizer, text_pass) == [
        "[CLS]", "cat", ".", "pot", "##ted", "plant", ".", "[SEP]",
    ]  # fmt: skip
    assert text_pass.class_token_spans == ((1, 2), (3, 6))
    assert text_pass.class_ids == (0, 1)
    assert text_pass.class_names == ("cat", "potted plant")


def probs_for(text_pass, **token_probs):
    """A (T,) probability row: 0.05 everywhere, chosen token positions set."""
    row = torch.full((len(text_pass.input_ids),), 0.05)
    for position, value in token_probs.items():
        row[int(position.removeprefix("t"))] = value
    return row


def test_phrase_is_whole_words_never_pieces(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt("melon zucchini"), bert_tokenizer, 256)
    assert tokens(bert_tokenizer, text_pass)[1:6] == ["mel", "##on", "zu", "##cchi", "##ni"]
    # only the piece "zu" fires: the phrase is the whole word "zucchini"
    assert phrase_for(probs_for(text_pass, t3=0.9), text_pass, 0, 0.25) == "zucchini"
    # only "##on" fires: "melon", not "on"
    assert phrase_for(probs_for(text_pass, t2=0.9), text_pass, 0, 0.25) == "melon"
    both = probs_for(text_pass, t1=0.9, t5=0.3)
    assert phrase_for(both, text_pass, 0, 0.25) == "melon zucchini"
    # nothing above text_threshold: the class itself, never ""
    assert phrase_for(probs_for(text_pass), text_pass, 0, 0.25) == "melon zucchini"


def test_phrase_keeps_caption_spacing_and_skips_gaps(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt("black-cat. dog"), bert_tokenizer, 256)
    assert tokens(bert_tokenizer, text_pass)[1:4] == ["black", "-", "cat"]
    all_on = probs_for(text_pass, t1=0.9, t2=0.9, t3=0.9)
    assert phrase_for(all_on, text_pass, 0, 0.25) == "black-cat"
    gap = probs_for(text_pass, t1=0.9, t3=0.9)
    assert phrase_for(gap, text_pass, 0, 0.25) == "black cat"
    # the dog token is high but belongs to another class: not in class 0's phrase
    other = probs_for(text_pass, t3=0.9, t5=0.99)
    assert phrase_for(other, text_pass, 0, 0.25) == "cat"


def test_free_text_phrase(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt("the running girl"), bert_tokenizer, 256)
    row = probs_for(text_pass, t2=0.6, t3=0.8)
    assert phrase_for(row, text_pass, 0, 0.25) == "running girl"
    assert phrase_for(row, text_pass, 0, 0.7) == "girl"


def test_class_scores_take_max_inside_each_span(bert_tokenizer):
    (text_pass,) = plan_text_passes(normalize_prompt(["cat", "potted plant"]), bert_tokenizer, 256)
    probs = torch.stack(
        [
            probs_for(text_pass, t1=0.7, t4=0.6),  # cat 0.7, potted plant 0.6
            probs_for(text_pass, t1=0.2, t5=0.9),  # plant token wins
            probs_for(text_pass, t2=0.99, t4=0.3),  # the "." is in no class
        ]
    )
    scores = class_scores(probs, text_pass)
    torch.testing.assert_close(scores, torch.tensor([[0.7, 0.6], [0.2, 0.9], [0.05, 0.3]]))


def test_long_prompt_is_split_into_whole_class_passes(bert_tokenizer):
    classes = [f"{color} {thing}" for color in ("red", "green", "blue", "yellow", "purple", "black")
               for thing in ("car", "bus", "truck", "bicycle", "motorcycle", "traffic light",
                             "fire hydrant", "stop sign", "parking meter", "potted plant",
                             "dining table", "teddy bear", "hair drier", "toothbrush")]  # fmt: skip
    prompt = normalize_prompt(classes)
    passes = plan_text_passes(prompt, bert_tokenizer, 256)
    assert len(passes) > 1
    # every class once, in order, never cut
    assert [i for p in passes for i in p.class_ids] == list(range(len(classes)))
    for text_pass in passes:
        assert len(text_pass.input_ids) <= 256
        assert text_pass.caption == build_caption([classes[i] for i in text_pass.class_ids])[0]
        spans = text_pass.class_token_spans
        for name, (start, end) in zip(text_pass.class_names, spans, strict=True):
            assert bert_tokenizer.decode(list(text_pass.input_ids[start:end])) == name
    # greedy packing is tight: the next class would not have fit in the previous pass
    for previous, following in itertools.pairwise(passes):
        first = classes[following.class_ids[0]]
        extra = len(bert_tokenizer(first, add_special_tokens=False)["input_ids"]) + 1
        assert len(previous.input_ids) + extra > 256


def test_small_window_splits_exactly(bert_tokenizer):
    # [CLS] cat . dog . [SEP] = 6 tokens; "potted plant" alone needs 3 + 1 + 2
    passes = plan_text_passes(normalize_prompt("cat. dog. potted plant."), bert_tokenizer, 6)
    assert [p.class_ids for p in passes] == [(0, 1), (2,)]
    assert [p.caption for p in passes] == ["cat. dog.", "potted plant."]


def test_class_longer_than_window_is_refused_not_cut(bert_tokenizer):
    long_class = " ".join(["word"] * 300)
    with pytest.raises(ValueError, match=r"300 tokens long; the text encoder reads at most 256"):
        plan_text_passes(normalize_prompt(["cat", long_class]), bert_tokenizer, 256)


def test_generated_vocab_keeps_grounding_dino_special_ids(vocab_file):
    from tiny_models import make_tokenizer

    tokenizer = make_tokenizer(vocab_file)
    ids = tokenizer("cat. dog?")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102
    assert tokenizer.convert_tokens_to_ids([".", "?"]) == [1012, 1029]
    assert tokenizer.unk_token_id not in tokenizer("potted plant zucchini")["input_ids"]
