"""mmcourse.robustness: presence masks (rates, keep-one, determinism), modality dropout, corruption,
and the evaluation helpers on a toy model whose accuracy under every mask is known exactly."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mmcourse.data import make_loader
from mmcourse.fusion import FeatureDataset
from mmcourse.robustness import (ModalityDropout, corrupt, corrupt_inputs, evaluate, missing_modality_table,
                                 missing_rate_curve, noise_rate_curve, presence_without, sample_presence)
from mmcourse.training import accuracy_on

MODS = ("audio", "image", "text")
BIG = 40_000  # rows for rate estimates: one standard error of a rate <= 0.0025, tolerances below are 4-5 of them


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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

def _batch(b: int) -> dict[str, torch.Tensor]:
    return {m: torch.zeros(b, 2) for m in MODS}


def test_modality_dropout_in_eval_returns_the_mask_unchanged():
    dropout = ModalityDropout(0.9).eval()
    given = presence_without(4, MODS, ("audio",))
    assert dropout(_batch(4), given) is given and dropout(_batch(4)) is None


def test_modality_dropout_in_training_drops_only_present_modalities_and_keeps_one():
    dropout = ModalityDropout(0.5, generator=_gen()).train()
    given = torch.rand(BIG, 3, generator=_gen(1)) < 0.7
    given[:10] = False                       # rows with nothing given stay empty
    given[10:20] = torch.tensor([False, True, False])
    out = dropout(_batch(BIG), given)
    assert not (out & ~given).any(), "dropout must never add a modality the batch lacks"
    assert not out[:10].any() and torch.equal(out[10:20], given[10:20])   # the only modality is kept
    assert (out.any(1) == given.any(1)).all()
    none_given = dropout(_batch(BIG))
    assert none_given.any(1).all()
    torch.testing.assert_close((~none_given).float().mean(0), torch.full((3,), 0.5 - 0.5**3 / 3), atol=0.01, rtol=0)
    assert ModalityDropout(0.0).train()(_batch(4)) is None


# --- corrupt ---

def test_corrupt_replaces_rows_by_other_samples_rows():
    x = torch.randn(BIG, 3, generator=_gen(1))
    out = corrupt(x, 0.3, _gen())
    changed = (out != x).any(1)
    assert abs(changed.float().mean() - 0.3) < 0.01
    assert torch.equal(out[~changed], x[~changed])
    x_small = torch.randn(50, 4, generator=_gen(2))
    out_small = corrupt(x_small, 1.0, _gen())
    for i in range(50):   # every row is another sample's row
        matches = [j for j in range(50) if torch.equal(out_small[i], x_small[j])]
        assert matches and i not in matches


def test_corrupt_rate_zero_and_one_are_exact_and_inputs_keep_their_dtype():
    tokens = torch.randint(2, 30, (64, 7), generator=_gen(1))
    assert torch.equal(corrupt(tokens, 0.0), tokens)
    out = corrupt(tokens, 1.0, _gen())
    assert out.dtype == torch.int64 and (out != tokens).any(1).all()
    assert torch.equal(tokens, torch.randint(2, 30, (64, 7), generator=_gen(1)))   # the input is untouched


def test_corrupt_is_deterministic_and_checks_its_arguments():
    x = torch.randn(100, 3, 4, 4, generator=_gen(1))
    assert torch.equal(corrupt(x, 0.5, _gen(3)), corrupt(x, 0.5, _gen(3)))
    assert not torch.equal(corrupt(x, 0.5, _gen(3)), corrupt(x, 0.5, _gen(4)))
    with pytest.raises(ValueError, match=re.escape("rate must be a number in [0, 1], got 2")):
        corrupt(x, 2)
    message = "at least 2 rows to take another sample's row, got x of shape (1, 3)"
    with pytest.raises(ValueError, match=re.escape(message)):
        corrupt(torch.zeros(1, 3), 0.5)


def test_corrupt_inputs_touches_only_the_named_modalities():
    inputs = {m: torch.randn(20, 2, generator=_gen(i)) for i, m in enumerate(MODS)}
    out = corrupt_inputs(inputs, 1.0, ("image",), _gen())
    assert out["audio"] is inputs["audio"] and out["text"] is inputs["text"]
    assert (out["image"] != inputs["image"]).any(1).all()
    with pytest.raises(ValueError, match=re.escape("modalities ['video'] are not in the inputs")):
        corrupt_inputs(inputs, 0.5, ("video",))


# --- evaluation on a toy model with known answers ---

class _Toy(nn.Module):
    """logits = 2 a [a present] + b [b present]: "a" always tells the label, "b" in 70 % of the rows."""

    modalities = ("a", "b")

    def forward(self, inputs, present=None):
        if present is None:
            present = torch.ones(len(inputs["a"]), 2, dtype=torch.bool)
        return 2 * inputs["a"] * present[:, :1] + inputs["b"] * present[:, 1:]


def _toy_loader(batch_size: int = 32):
    labels = torch.arange(100) % 2
    one_hot = nn.functional.one_hot(labels, 2).float()
    b = torch.where(torch.arange(100).unsqueeze(1) < 70, one_hot, 1 - one_hot)   # wrong in the last 30 rows
    return make_loader(FeatureDataset({"a": one_hot, "b": b}, labels), batch_size)


def test_missing_modality_table_on_a_toy_model():
    table = missing_modality_table(_Toy(), _toy_loader(), ("a", "b"), "cpu")
    assert table == {("a",): 1.0, ("b",): 0.7, ("a", "b"): 1.0}
    assert missing_modality_table(_Toy(), _toy_loader(), None, "cpu") == table   # modalities from the model


def test_evaluate_without_masks_equals_accuracy_on():
    loader = _toy_loader()
    assert evaluate(_Toy(), loader, "cpu") == accuracy_on(_Toy(), loader, "cpu") == 1.0
    only_b = evaluate(_Toy(), loader, "cpu", present_fn=lambda b, device: presence_without(b, ("a", "b"), ("a",)))
    assert only_b == 0.7


def test_missing_rate_curve_is_deterministic_and_starts_at_full_accuracy():
    curve = missing_rate_curve(_Toy(), _toy_loader(), [0.0, 0.5, 1.0], "cpu", seed=0)
    assert curve[0] == 1.0 and 0.7 <= curve[2] <= curve[1] <= 1.0
    # At rate 1 each sample keeps one modality, "a" (always right) or "b" (right in 70 %): about 0.85.
    assert abs(curve[2] - 0.85) < 0.1
    assert curve == missing_rate_curve(_Toy(), _toy_loader(), [0.0, 0.5, 1.0], "cpu", seed=0)
    assert curve[1:] != missing_rate_curve(_Toy(), _toy_loader(), [0.5, 1.0], "cpu", seed=1)
    # Only "a" removed, at rate 0 and 1: "b" alone is right in 70 % of the rows.
    assert missing_rate_curve(_Toy(), _toy_loader(), [{"a": 0.0}, {"a": 1.0}], "cpu") == [1.0, 0.7]
    with pytest.raises(ValueError, match=re.escape("missing_rate must be a number in [0, 1], got 2")):
        missing_rate_curve(_Toy(), _toy_loader(), [0.5, 2], "cpu")
    with pytest.raises(ValueError, match=re.escape("has no .modalities attribute; pass modalities=")):
        missing_rate_curve(nn.Identity(), _toy_loader(), [0.5], "cpu")


def test_noise_rate_curve():
    # Noise in "b" never overrules "a" (logit 2 against 1): accuracy stays 1.
    assert noise_rate_curve(_Toy(), _toy_loader(), [0.0, 1.0], "cpu", modalities=("b",)) == [1.0, 1.0]
    curve = noise_rate_curve(_Toy(), _toy_loader(), [0.0, 0.5, 1.0], "cpu", seed=0)
    assert curve[0] == 1.0 and curve[2] < 0.8   # with "a" replaced, the answer follows another sample's label
    assert curve == noise_rate_curve(_Toy(), _toy_loader(), [0.0, 0.5, 1.0], "cpu", seed=0)
