"""mmcourse.data.text: vocabulary, tokenizer, generated captions and their BIO tags."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from mmcourse.data.text import (ENTITY_TYPES, MIN_WORD_COUNT, PAD_ID, SHAPE_FILLERS, SYNONYMS, TAGS, UNK_ID,
                                WORLD_VOCAB, Captions, Tokenizer, Vocab, _split_phrase, bag_of_words, build_vocab,
                                generate_captions, unknown_fraction)
from mmcourse.data.world import ATTRIBUTES

TYPE_TO_ATTRIBUTE = {t: a for a, t in ENTITY_TYPES.items()}


def _captions(dataset) -> Captions:
    return Captions(dataset.text.numpy(), dataset.tags.numpy())


def _spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entity spans (type, start, end) of a valid BIO sequence."""
    spans = []
    for k, tag in enumerate(tags):
        if tag.startswith("B-"):
            spans.append((tag[2:], k, k + 1))
        elif tag.startswith("I-"):
            kind, start, _ = spans[-1]
            spans[-1] = (kind, start, k + 1)
    return spans


def _entity_words(attribute: str, value: str) -> set[tuple[str, ...]]:
    """The entity part of every synonym phrase of one value, as word tuples."""
    return {tuple(w for w, is_entity in _split_phrase(p) if is_entity) for p in SYNONYMS[attribute][value]}


# ---------------------------------------------------------------- vocabulary and tokenizer

def test_vocab_reserves_pad_and_unk_then_sorts_words():
    vocab = Vocab(["b", "a", "b", "<pad>"])
    assert vocab.itos == ["<pad>", "<unk>", "a", "b"]
    assert vocab.stoi["<pad>"] == PAD_ID == 0 and vocab.stoi["<unk>"] == UNK_ID == 1
    assert len(vocab) == 4
    assert vocab.decode([[2, 3, 0, 0], [3, 0, 0, 0]]) == ["a b", "b"]


def test_world_vocab_holds_every_synonym_and_filler():
    words = {w for values in SYNONYMS.values() for phrases in values.values()
             for p in phrases for w, _ in _split_phrase(p)} | set(SHAPE_FILLERS)
    assert words <= set(WORLD_VOCAB.stoi)
    assert WORLD_VOCAB.itos[2:] == sorted(WORLD_VOCAB.itos[2:])


def test_tokenize_lowercases_and_splits_punctuation():
    assert Tokenizer().tokenize("Look, a RED disc!") == ["look", ",", "a", "red", "disc", "!"]


def test_encode_pads_masks_and_maps_unknown_words():
    tok = Tokenizer()
    ids, mask = tok.encode(["a red disc", "Zebra"])
    assert ids.shape == mask.shape == (2, 3) and ids.dtype == np.int64 and mask.dtype == bool
    np.testing.assert_array_equal(ids[0], [WORLD_VOCAB.stoi[w] for w in ("a", "red", "disc")])
    np.testing.assert_array_equal(ids[1], [UNK_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False]])


def test_encode_truncates_to_max_len_and_pads_to_it():
    ids, mask = Tokenizer().encode(["a red disc", "a"], max_len=2)
    assert ids.shape == (2, 2)
    np.testing.assert_array_equal(mask, [[True, True], [True, False]])


def test_encode_batch_of_one_and_empty_batch():
    assert Tokenizer().encode(["a red disc"])[0].shape == (1, 3)
    assert Tokenizer().encode([])[0].shape == (0, 1)


def test_encode_rejects_a_bare_string():
    with pytest.raises(TypeError, match="texts must be a list of strings, got a single str"):
        Tokenizer().encode("a red disc")


def test_tokenize_rejects_a_non_string():
    with pytest.raises(TypeError, match="text must be a str, got int"):
        Tokenizer().tokenize(3)


# ---------------------------------------------------------------- generated captions

def test_tag_set():
    assert TAGS[0] == "O" and len(TAGS) == 1 + 2 * len(ENTITY_TYPES)
    assert {t[2:] for t in TAGS[1:]} == set(ENTITY_TYPES.values())


def test_caption_arrays_shape_dtype_and_padding(small_dataset):
    ids, tags = small_dataset.text.numpy(), small_dataset.tags.numpy()
    assert ids.shape == tags.shape and ids.shape[0] == len(small_dataset)
    assert ids.dtype == tags.dtype == np.int64
    assert tags.min() >= 0 and tags.max() < len(TAGS)
    assert (tags[ids == PAD_ID] == 0).all()
    real = ids != PAD_ID
    # Padding only at the end of a row, and the width is the longest caption.
    assert (np.sort(~real, axis=1, kind="stable") == ~real).all()
    assert real.sum(1).max() == ids.shape[1]


def test_decode_then_encode_gives_the_same_ids(small_dataset):
    captions = _captions(small_dataset)
    ids, _ = Tokenizer().encode(captions.strings())
    np.testing.assert_array_equal(ids, captions.ids)


def test_tags_are_valid_bio(small_dataset):
    for row in _captions(small_dataset).tag_strings():
        previous = "O"
        for tag in row:
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:], row  # I-X only after B-X or I-X
            previous = tag


def test_entity_spans_name_the_true_value_of_mentioned_attributes_only(world, small_dataset):
    captions = _captions(small_dataset)
    scenes = small_dataset.scenes
    mentioned = world.visible(scenes, "text")
    for i, (words, tags) in enumerate(zip(captions.strings(), captions.tag_strings())):
        words = words.split()
        assert len(words) == len(tags)
        spans = _spans(tags)
        kinds = [kind for kind, _, _ in spans]
        for a, kind in ENTITY_TYPES.items():
            if mentioned[a][i]:
                assert kinds.count(kind) == 1, (i, a, words, tags)
            else:
                assert kind not in kinds, (i, a, words, tags)
        for kind, start, end in spans:
            a = TYPE_TO_ATTRIBUTE[kind]
            value = ATTRIBUTES[a][scenes.attrs[a][i]]
            assert tuple(words[start:end]) in _entity_words(a, value), (i, a, value, words)
        if not mentioned["shape"][i]:
            fillers = [w for w, t in zip(words, tags) if w in SHAPE_FILLERS]
            assert len(fillers) == 1 and "SHAPE" not in kinds


def test_mention_frequencies_match_the_config(world, probe_train):
    """The share of captions with an entity of each type equals mention_prob within 4 SE."""
    n = len(probe_train)
    present = {kind: np.zeros(n, bool) for kind in ENTITY_TYPES.values()}
    tags = probe_train.tags.numpy()
    for kind in present:
        present[kind] = (tags == TAGS.index(f"B-{kind}")).any(1)
    for a, p in world.config.mention_prob.items():
        freq = present[ENTITY_TYPES[a]].mean()
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n), (a, freq, p)


def test_generate_captions_batch_of_one_and_determinism(world):
    scenes = world.sample(1, np.random.default_rng(0))
    mentioned = {a: np.array([True]) for a in ATTRIBUTES}
    a = generate_captions(scenes, mentioned, np.random.default_rng(3))
    b = generate_captions(scenes, mentioned, np.random.default_rng(3))
    assert a.ids.shape == a.tags.shape and a.ids.shape[0] == 1
    np.testing.assert_array_equal(a.ids, b.ids)
    assert len(_spans(a.tag_strings()[0])) == len(ATTRIBUTES)


def test_nothing_mentioned_gives_a_caption_without_entities(world):
    scenes = world.sample(50, np.random.default_rng(0))
    captions = generate_captions(scenes, {a: np.zeros(50, bool) for a in ATTRIBUTES}, np.random.default_rng(0))
    assert (captions.tags == 0).all()
    assert all(len(set(c.split()) & set(SHAPE_FILLERS)) == 1 for c in captions.strings())


def test_text_probe_recovers_every_mentioned_attribute(probe_train, probe_test, world):
    """Bag-of-words logistic regression per attribute, trained and scored on captions that mention it.

    Measured: 1.000 for every attribute on the 2000 fresh scenes.
    """
    def bag_of_words(ds):
        ids = ds.text.numpy()
        counts = np.zeros((len(ids), len(WORLD_VOCAB)))
        np.add.at(counts, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.ravel()), 1)
        counts[:, PAD_ID] = 0
        return counts

    x_train, x_test = bag_of_words(probe_train), bag_of_words(probe_test)
    seen_train = world.visible(probe_train.scenes, "text")
    seen_test = world.visible(probe_test.scenes, "text")
    for a in ATTRIBUTES:
        probe = LogisticRegression(max_iter=2000).fit(x_train[seen_train[a]],
                                                      probe_train.scenes.attrs[a][seen_train[a]])
        pred = probe.predict(x_test[seen_test[a]])
        score = float((pred == probe_test.scenes.attrs[a][seen_test[a]]).mean())
        assert score >= 0.99, (a, score)


def test_decode_takes_one_row_or_a_batch():
    ids, _ = Tokenizer().encode(["a red disc", "a thing"])
    assert WORLD_VOCAB.decode(ids[0]) == ["a red disc"]
    assert WORLD_VOCAB.decode(ids) == ["a red disc", "a thing"]
    with pytest.raises(ValueError, match=r"ids must be \(L,\) or \(N, L\), got shape \(1, 2, 3\)"):
        WORLD_VOCAB.decode(np.zeros((1, 2, 3), dtype=np.int64))


def test_bag_of_words_counts_words_and_ignores_padding():
    ids = torch.tensor([[5, 5, 7, PAD_ID], [UNK_ID, PAD_ID, PAD_ID, PAD_ID]])
    counts = bag_of_words(ids, 10)
    expected = torch.zeros(2, 10)
    expected[0, 5], expected[0, 7], expected[1, UNK_ID] = 2, 1, 1
    assert torch.equal(counts, expected)
    # Extra padding columns change nothing.
    assert torch.equal(bag_of_words(torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1), 10), counts)


def test_bag_of_words_rejects_bad_ids():
    with pytest.raises(ValueError, match=r"ids must be token ids \(N, L\)"):
        bag_of_words(torch.zeros(3), 10)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 10\)"):
        bag_of_words(torch.tensor([[3, 10]]), 10)


def test_build_vocab_keeps_words_seen_min_count_times():
    texts = ["A red disc.", "a RED block", "a blue disc"]
    assert build_vocab(texts).itos == ["<pad>", "<unk>", "a", "disc", "red"]          # MIN_WORD_COUNT = 2
    assert build_vocab(texts, min_count=1).itos[2:] == [".", "a", "block", "blue", "disc", "red"]
    assert MIN_WORD_COUNT == 2
    ids, _ = Tokenizer(build_vocab(texts)).encode(["a green disc"])
    assert ids.tolist() == [[2, UNK_ID, 3]]


def test_build_vocab_rejects_bad_arguments():
    with pytest.raises(TypeError, match="texts must be a list of strings, got a single str"):
        build_vocab("a red disc")
    with pytest.raises(ValueError, match="min_count must be an int >= 1, got 0"):
        build_vocab(["a"], min_count=0)


def test_unknown_fraction_counts_real_tokens_only():
    assert unknown_fraction(np.array([[2, UNK_ID, 0], [UNK_ID, 0, 0]])) == pytest.approx(2 / 3)
    assert unknown_fraction(np.zeros((2, 3), np.int64)) == 0.0
