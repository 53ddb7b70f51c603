"""mmcourse.robustness: corruption, and the evaluation helpers on a toy model whose accuracy under every
mask is known exactly (the masks themselves are tested in test_modality.py)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from mmcourse.data import make_loader
from mmcourse.fusion import FeatureDataset
from mmcourse.modality import presence_without
from mmcourse.robustness import (corrupt, corrupt_inputs, evaluate, missing_modality_table, missing_rate_curve,
                                 noise_rate_curve)
from mmcourse.training import accuracy_on

MODS = ("audio", "image", "text")
BIG = 40_000  # rows for rate estimates: one standard error of a rate <= 0.0025, tolerances below are 4-5 of them


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    with pytest.raises(ValueError, match=re.escape("inputs (the modalities to corrupt) lacks the required keys ['video']")):
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
