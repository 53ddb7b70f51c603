"""mmcourse.modality: the one modality convention. Names, key and tensor checks, presence masks (rates,
keep-one, determinism, masks from absent keys) and modality dropout."""
from __future__ import annotations

import re

import pytest
import torch

from mmcourse.data.world import World
from mmcourse.modality import (MODALITIES, ModalityDropout, check_keys, check_modalities, check_presence, check_rates,
                               check_tensor, ensure_one_present, presence_of, presence_without, sample_presence)

MODS = ("audio", "image", "text")
BIG = 40_000  # rows for rate estimates: one standard error of a rate <= 0.0025, tolerances below are 4-5 of them


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- names and checks ---

def test_modalities_are_the_sorted_modalities_of_the_world():
    assert MODALITIES == MODS == tuple(sorted(World().observation))
    assert check_modalities(MODALITIES) == MODALITIES


def test_check_modalities_rejects_empty_duplicate_and_non_str_names():
    with pytest.raises(ValueError, match="must name at least one modality, got none"):
        check_modalities(())
    with pytest.raises(ValueError, match=re.escape("got ('audio', 'audio'); use ('audio',)")):
        check_modalities(("audio", "audio"))
    with pytest.raises(TypeError, match=re.escape("modality names must be str, got ('audio', 3)")):
        check_modalities(("audio", 3))


def test_check_keys_returns_the_sorted_keys_and_allows_absent_ones():
    assert check_keys({"text": 1, "audio": 2}, MODS) == ("audio", "text")
    assert check_keys({}, MODS) == ()
    assert check_keys({"anything": 1}, None) == ("anything",)
    assert check_keys({"a": 1, "b": 2}, ("a", "b"), required=("a", "b")) == ("a", "b")


def test_check_keys_names_unknown_and_missing_keys():
    message = "inputs has unknown keys ['video'] and lacks the required keys ['text'] (got ['audio', 'video']; " \
              "valid keys: ['audio', 'image', 'text'])"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_keys({"audio": 1, "video": 2}, MODS, required=("text",))
    with pytest.raises(ValueError, match=re.escape("features has unknown keys ['annotations'] (got ['annotations',")):
        check_keys({"audio": 1, "annotations": 2}, MODS, what="features")
    with pytest.raises(TypeError, match=re.escape("inputs must be a dict {modality: tensor}, got list")):
        check_keys([("audio", 1)], MODS)


@pytest.mark.parametrize("x, kwargs, error, message", [
    (torch.zeros(2, 3), dict(dims=3, float_=True), ValueError, "x must have shape (B, ?, ?), got (2, 3)"),
    (torch.zeros(2, 3, 5, 5), dict(dims=4, float_=True, trailing=(3, 4, 4)), ValueError,
     "x must have shape (B, 3, 4, 4), got (2, 3, 5, 5)"),
    (torch.zeros(2, 4, dtype=torch.long), dict(dims=2, float_=True), ValueError,
     "x must be a floating-point tensor, got dtype torch.int64"),
    (torch.zeros(2, 4), dict(dims=2, float_=False), ValueError, "x must hold integer token ids, got dtype torch.float32"),
    ([[1.0]], dict(dims=2, float_=True), TypeError, "x must be a torch.Tensor, got list"),
])
def test_check_tensor_names_the_tensor_and_what_it_got(x, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        check_tensor(x, "x", **kwargs)


def test_check_tensor_accepts_named_free_sizes_and_returns_the_tensor():
    x = torch.zeros(2, 3, 7, 7)
    assert check_tensor(x, "image", 4, float_=True, trailing=(3, "S", "S")) is x
    assert check_tensor(torch.zeros(1, 5, dtype=torch.int32), "text", 2, float_=False).shape == (1, 5)


def test_check_presence_and_check_rates():
    present = torch.ones(2, 3, dtype=torch.bool)
    assert check_presence(present, 2, MODS) is present
    with pytest.raises(ValueError, match=re.escape("present must be (B, M) = (2, 3), one column per modality")):
        check_presence(present[:, :2], 2, MODS)
    with pytest.raises(TypeError, match=re.escape("present must be a bool tensor (B, M), got torch.float32")):
        check_presence(present.float(), 2, MODS)
    check_rates({"audio": 0.5}, MODS)
    with pytest.raises(ValueError, match=re.escape("missing_rate names unknown modalities ['video']")):
        check_rates({"video": 0.5}, MODS)


# --- presence_of: masks from absent keys ---

def test_presence_of_marks_absent_keys_absent_for_every_sample():
    inputs = {"audio": torch.zeros(4, 2), "text": torch.zeros(4, 5, dtype=torch.long)}
    assert torch.equal(presence_of(inputs, MODS), torch.tensor([[True, False, True]] * 4))
    assert presence_of({m: torch.zeros(1, 2) for m in MODS}, MODS).all()       # batch of one


def test_presence_of_keeps_a_given_mask_of_the_present_keys():
    inputs = {"audio": torch.zeros(3, 2), "image": torch.zeros(3, 2)}
    present = torch.tensor([[True, False, False], [False, True, False], [True, True, False]])
    assert presence_of(inputs, MODS, present) is present


def test_presence_of_rejects_a_mask_that_marks_an_absent_key_present():
    inputs = {"audio": torch.zeros(2, 2)}
    present = torch.tensor([[True, False, False], [True, False, True]])
    with pytest.raises(ValueError, match=re.escape("present marks ['text'] present for some samples, but inputs "
                                                   "have no such key (keys: ['audio'])")):
        presence_of(inputs, MODS, present)


def test_presence_of_rejects_no_key_unknown_keys_and_unequal_batches():
    with pytest.raises(ValueError, match=re.escape("inputs hold no modality (keys: [])")):
        presence_of({}, MODS)
    with pytest.raises(ValueError, match=re.escape("unknown keys ['annotations']")):
        presence_of({"audio": torch.zeros(2, 1), "annotations": torch.zeros(2, 15)}, MODS)
    with pytest.raises(ValueError, match=re.escape("same batch size B, got {'audio': 2, 'text': 3}")):
        presence_of({"audio": torch.zeros(2, 1), "text": torch.zeros(3, 1)}, MODS)


def test_ensure_one_present_fills_only_empty_rows_from_the_allowed_ones():
    present = torch.tensor([[False, False, False], [True, False, False], [False, False, False]])
    allowed = torch.tensor([[False, True, False], [True, True, True], [False, False, False]])
    out = ensure_one_present(present, allowed, _gen())
    assert torch.equal(out, torch.tensor([[False, True, False], [True, False, False], [False, False, False]]))


# --- sample_presence ---

def test_sample_presence_drops_at_the_requested_rate():
    present = sample_presence(BIG, MODS, 0.3, _gen(), keep_one=False)
    assert present.shape == (BIG, 3) and present.dtype == torch.bool
    torch.testing.assert_close((~present).float().mean(0), torch.full((3,), 0.3), atol=0.01, rtol=0)


def test_keep_one_puts_back_one_modality_chosen_uniformly():
    present = sample_presence(BIG, MODS, 0.5, _gen())
    assert present.any(1).all()
    expected = 0.5 - 0.5**3 / 3   # absent unless all three were drawn absent and this one was put back
    torch.testing.assert_close((~present).float().mean(0), torch.full((3,), expected), atol=0.01, rtol=0)
    only_one = sample_presence(BIG, MODS, 1.0, _gen())
    assert (only_one.sum(1) == 1).all()
    torch.testing.assert_close(only_one.float().mean(0), torch.full((3,), 1 / 3), atol=0.01, rtol=0)


def test_per_modality_rates_from_a_dict():
    present = sample_presence(BIG, MODS, {"audio": 1.0, "text": 0.25}, _gen())
    assert not present[:, 0].any() and present[:, 1].all()    # image is never dropped, so keep_one never acts
    assert abs((~present[:, 2]).float().mean() - 0.25) < 0.01


def test_sample_presence_is_deterministic_for_a_generator():
    a = sample_presence(100, MODS, 0.5, _gen(7))
    assert torch.equal(a, sample_presence(100, MODS, 0.5, _gen(7)))
    assert not torch.equal(a, sample_presence(100, MODS, 0.5, _gen(8)))
    assert sample_presence(0, MODS, 0.5).shape == (0, 3)


def test_same_seed_draws_are_nested_across_rates():
    low = sample_presence(1000, MODS, 0.2, _gen(), keep_one=False)
    high = sample_presence(1000, MODS, 0.6, _gen(), keep_one=False)
    assert torch.all(high <= low)   # absent at 0.2 implies absent at 0.6


@pytest.mark.parametrize("rate, message", [
    (1.5, "missing_rate must be a number in [0, 1], got 1.5"),
    (-0.1, "missing_rate must be a number in [0, 1], got -0.1"),
    ("0.5", "missing_rate must be a number in [0, 1], got '0.5'"),
    (True, "missing_rate must be a number in [0, 1], got True"),
    ({"audio": 2.0}, "missing_rate['audio'] must be a number in [0, 1], got 2.0"),
    ({"video": 0.5}, "missing_rate names unknown modalities ['video']; valid: ['audio', 'image', 'text']"),
])
def test_bad_rates_are_rejected(rate, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sample_presence(4, MODS, rate)


def test_modalities_must_be_sorted_names():
    with pytest.raises(ValueError, match=re.escape("must be distinct and sorted (they name the columns")):
        sample_presence(4, ("text", "image"), 0.5)
    with pytest.raises(TypeError, match=re.escape("got a single str 'audio'; write ('audio',)")):
        sample_presence(4, "audio", 0.5)
    with pytest.raises(ValueError, match=re.escape("batch_size must be a non-negative int, got -1")):
        sample_presence(-1, MODS, 0.5)


def test_presence_without():
    present = presence_without(3, MODS, ("audio", "text"))
    assert torch.equal(present, torch.tensor([[False, True, False]] * 3))
    assert presence_without(2, MODS, ()).all()
    with pytest.raises(ValueError, match=re.escape("missing names unknown modalities ['video']")):
        presence_without(2, MODS, ("video",))
    with pytest.raises(TypeError, match=re.escape("write ('audio',)")):
        presence_without(2, MODS, "audio")


# --- ModalityDropout ---

def test_modality_dropout_in_eval_returns_the_mask_unchanged():
    dropout = ModalityDropout(0.9).eval()
    given = presence_without(4, MODS, ("audio",))
    assert dropout(given) is given
    assert ModalityDropout(0.0).train()(given) is given


def test_modality_dropout_in_training_drops_only_present_modalities_and_keeps_one():
    dropout = ModalityDropout(0.5, generator=_gen()).train()
    given = torch.rand(BIG, 3, generator=_gen(1)) < 0.7
    given[:10] = False                       # rows with nothing given stay empty
    given[10:20] = torch.tensor([False, True, False])
    out = dropout(given)
    assert not (out & ~given).any(), "dropout must never add a modality the batch lacks"
    assert not out[:10].any() and torch.equal(out[10:20], given[10:20])   # the only modality is kept
    assert (out.any(1) == given.any(1)).all()
    all_given = dropout(torch.ones(BIG, 3, dtype=torch.bool))
    assert all_given.any(1).all()
    torch.testing.assert_close((~all_given).float().mean(0), torch.full((3,), 0.5 - 0.5**3 / 3), atol=0.01, rtol=0)


def test_modality_dropout_draws_what_sample_presence_draws():
    # The same numbers as sample_presence for the same generator, so seeded runs are reproducible.
    out = ModalityDropout(0.4, keep_one=False, generator=_gen(3)).train()(torch.ones(50, 3, dtype=torch.bool))
    assert torch.equal(out, sample_presence(50, MODS, 0.4, _gen(3), keep_one=False))


def test_modality_dropout_rejects_a_mask_that_is_not_bool_b_m():
    with pytest.raises(TypeError, match=re.escape("present must be a bool tensor (B, M), got torch.float32 of shape "
                                                  "(4, 3)")):
        ModalityDropout(0.5).train()(torch.ones(4, 3))
    with pytest.raises(TypeError, match=re.escape("got dict of shape ()")):
        ModalityDropout(0.5)({"audio": torch.zeros(4, 2)})
