"""mmcourse.fusion: every method's shapes, gradients and missing-modality guarantee; tensor and low-rank
fusion against loops; input errors; FusionModel training with modality dropout; the cached-feature dataset."""
from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch import nn

from mmcourse.data import make_loader
from mmcourse.data.text import PAD_ID
from mmcourse.fusion import (FUSIONS, BagOfWords, ConcatFusion, CrossAttentionFusion, FeatureDataset, FiLMFusion,
                             FusionModel, LowRankFusion, TensorFusion, make_fusion)
from mmcourse.training import fit

DIMS = {"audio": 5, "image": 7, "text": 3}
MODS = ("audio", "image", "text")
HIDDEN, CLASSES = 8, 4
NAMES = list(FUSIONS)

# Every non-empty subset once, plus one row with everything: each modality is present in
# some rows and absent in others, and every kind of "missing" path is exercised.
MIXED = torch.tensor([[a, i, t] for a, i, t in itertools.product([True, False], repeat=3) if a or i or t]
                     + [[True, True, True]])


def _fusion(name: str, **options):
    torch.manual_seed(0)
    return make_fusion(name, DIMS, HIDDEN, CLASSES, **options)


def _features(b: int, seed: int = 1, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, d, generator=g).to(dtype) for m, d in DIMS.items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("b", [1, 5])
def test_output_shape(name, b):
    fusion = _fusion(name)
    assert fusion.modalities == MODS and fusion.in_dims == DIMS
    assert fusion.out_dim == (CLASSES if name == "late" else HIDDEN)
    assert fusion(_features(b)).shape == (b, fusion.out_dim)
    assert fusion(_features(b), MIXED[:b]).shape == (b, fusion.out_dim)


def _grads(fusion, present) -> dict[str, torch.Tensor | None]:
    out = fusion(_features(len(MIXED)), present)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    return {n: p.grad for n, p in fusion.named_parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_with_all_present(name):
    grads = _grads(_fusion(name), None)
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    # Only the learned "missing" embeddings are unused when nothing is missing.
    zero = [n for n, g in grads.items() if not g.abs().sum() > 0]
    assert all(n.startswith("missing.") for n in zero), zero


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_with_mixed_presence(name):
    grads = _grads(_fusion(name), MIXED)
    zero = [n for n, g in grads.items() if g is None or not g.abs().sum() > 0]
    assert not zero, f"no gradient reaches {zero}"


@pytest.mark.parametrize("name", ["product", "tensor", "low_rank", "gated", "film", "cross_attention"])
def test_gradcheck_float64(name):
    fusion = _fusion(name).double()
    feats = _features(3, dtype=torch.float64)
    for x in feats.values():
        x.requires_grad_(True)
    present = MIXED[[0, 1, 3]]

    def fn(*xs):
        return fusion(dict(zip(MODS, xs)), present)

    assert torch.autograd.gradcheck(fn, tuple(feats[m] for m in MODS))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("masked", MODS)
def test_a_masked_modality_cannot_change_the_output(name, masked):
    fusion = _fusion(name)
    present = MIXED.clone()
    present[:, MODS.index(masked)] = False
    feats = _features(len(present))
    other = dict(feats)
    other[masked] = 1e3 * torch.randn(feats[masked].shape, generator=torch.Generator().manual_seed(3))
    before, after = fusion(feats, present), fusion(other, present)
    assert torch.equal(before, after), f"{name}: changing masked {masked} changed the output"
    # ... while the same change with the modality present does change it.
    assert not torch.allclose(fusion(feats), fusion(other))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("absent", MODS)
def test_an_absent_key_is_a_modality_masked_for_every_sample(name, absent):
    fusion, feats = _fusion(name), _features(len(MIXED))
    without = {m: x for m, x in feats.items() if m != absent}
    masked = torch.ones(len(MIXED), 3, dtype=torch.bool)
    masked[:, MODS.index(absent)] = False
    torch.testing.assert_close(fusion(without), fusion(feats, masked), rtol=0, atol=0)
    # With a mask for the samples too: the absent key's column must say absent.
    present = MIXED.clone()
    present[:, MODS.index(absent)] = False
    torch.testing.assert_close(fusion(without, present), fusion(feats, present), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_stay_finite_with_an_absent_key(name):
    fusion = _fusion(name)
    feats = {m: x.requires_grad_(True) for m, x in _features(4).items() if m != "image"}
    fusion(feats).sum().backward()
    grads = [p.grad for p in fusion.parameters() if p.grad is not None] + [x.grad for x in feats.values()]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_a_mask_that_marks_an_absent_key_present_is_rejected():
    feats = {m: x for m, x in _features(2).items() if m != "text"}
    with pytest.raises(ValueError, match=re.escape("present marks ['text'] present for some samples, but inputs")):
        _fusion("sum")(feats, torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("name", NAMES)
def test_all_present_mask_equals_none(name):
    fusion, feats = _fusion(name), _features(6)
    torch.testing.assert_close(fusion(feats, torch.ones(6, 3, dtype=torch.bool)), fusion(feats), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_a_sample_with_nothing_present_gets_a_finite_output(name):
    fusion = _fusion(name)
    out = fusion(_features(2), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[1])  # nothing seen, nothing to tell the samples apart


def test_tensor_fusion_equals_an_outer_product_loop():
    torch.manual_seed(0)
    k = 2
    fusion = TensorFusion(DIMS, HIDDEN, proj_dim=k)
    feats, present = _features(len(MIXED)), MIXED
    z = {m: fusion.project[m](feats[m]).detach() for m in MODS}
    expected = torch.zeros(len(MIXED), HIDDEN)
    for b in range(len(MIXED)):
        ext = {m: [float(z[m][b, i]) * bool(present[b, j]) for i in range(k)] + [1.0] for j, m in enumerate(MODS)}
        # Row-major order over (audio, image, text): one entry per modality, multiplied.
        flat = [ext["audio"][i] * ext["image"][j] * ext["text"][t]
                for i, j, t in itertools.product(range(k + 1), repeat=3)]
        expected[b] = fusion.out(torch.tensor(flat))
    torch.testing.assert_close(fusion(feats, present), expected)
    assert fusion.outer(list(feats.values()), present).shape == (len(MIXED), (k + 1) ** 3)


def test_low_rank_fusion_equals_its_formula():
    torch.manual_seed(0)
    rank = 3
    fusion = LowRankFusion(DIMS, HIDDEN, rank=rank)
    with torch.no_grad():
        fusion.bias.normal_()
    feats, present = _features(len(MIXED)), MIXED
    expected = torch.zeros(len(MIXED), HIDDEN)
    for b in range(len(MIXED)):
        total = fusion.bias.detach().clone()
        for r in range(rank):
            term = torch.ones(HIDDEN)
            for j, m in enumerate(MODS):
                x = torch.cat([feats[m][b] if present[b, j] else torch.zeros(DIMS[m]), torch.ones(1)])
                term = term * (x @ fusion.factors[m][r])   # (D_m + 1) @ (D_m + 1, H) -> (H,)
            total = total + term
        expected[b] = torch.relu(total)
    torch.testing.assert_close(fusion(feats, present), expected)


def test_low_rank_rank_one_equals_tensor_fusion_with_a_rank_one_weight():
    """LMF computes W . (outer product) for the weight tensor W = sum_r outer(W_audio[r], W_image[r], W_text[r])."""
    torch.manual_seed(0)
    dims = {"a": 2, "b": 3}
    fusion = LowRankFusion(dims, hidden=1, rank=1)
    feats = {"a": torch.randn(4, 2), "b": torch.randn(4, 3)}
    wa, wb = fusion.factors["a"][0, :, 0], fusion.factors["b"][0, :, 0]     # (3,), (4,)
    xa = torch.cat([feats["a"], torch.ones(4, 1)], 1)
    xb = torch.cat([feats["b"], torch.ones(4, 1)], 1)
    outer = xa.unsqueeze(2) * xb.unsqueeze(1)                                 # (B, 3, 4)
    expected = torch.relu((outer * torch.outer(wa, wb)).sum((1, 2)) + fusion.bias)
    torch.testing.assert_close(fusion(feats)[:, 0], expected)


def test_gated_and_cross_attention_weights_ignore_absent_modalities():
    feats = _features(len(MIXED))
    gates = _fusion("gated").weights(feats, MIXED)
    assert torch.all(gates[~MIXED] == 0)
    torch.testing.assert_close(gates.sum(1), torch.ones(len(MIXED)))
    uniform = _fusion("sum").weights(feats, MIXED)
    torch.testing.assert_close(uniform, MIXED.float() / MIXED.sum(1, keepdim=True))
    attention = _fusion("cross_attention").weights(feats, MIXED)             # (B, 1 + M), column 0: null
    assert attention.shape == (len(MIXED), 4) and torch.all(attention[:, 1:][~MIXED] == 0)
    torch.testing.assert_close(attention.sum(1), torch.ones(len(MIXED)))


def _text_masked_by_hand(name, fusion, feats):
    """What each simple method must give with text absent, written from its definition."""
    present = [m for m in MODS if m != "text"]
    if name == "sum":
        return sum(fusion.project[m](feats[m]) for m in present) / 2
    if name == "product":
        return torch.tanh(fusion.project["audio"](feats["audio"])) * torch.tanh(fusion.project["image"](feats["image"]))
    if name == "late":
        return sum(fusion.heads[m](feats[m]) for m in present) / 2
    if name == "gated":
        gates = torch.softmax(torch.cat([fusion.gate[m](feats[m]) for m in present], 1), 1)   # (B, 2)
        return sum(gates[:, j : j + 1] * fusion.project[m](feats[m]) for j, m in enumerate(present))
    if name == "film":
        gamma_minus_1, beta = fusion.film["audio"](feats["audio"]).chunk(2, 1)
        return torch.relu((1 + gamma_minus_1) * fusion.project(feats["image"]) + beta)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["sum", "product", "late", "gated", "film"])
def test_text_masked_equals_the_definition_without_text(name):
    fusion, feats = _fusion(name), _features(4)
    present = torch.tensor([[True, True, False]] * 4)
    torch.testing.assert_close(fusion(feats, present), _text_masked_by_hand(name, fusion, feats))


@pytest.mark.parametrize("name", ["early", "concat"])
def test_concat_sees_the_presence_bits_not_only_the_missing_embedding(name):
    fusion, feats = _fusion(name), _features(1)
    with torch.no_grad():
        fusion.missing["text"].copy_(feats["text"][0])   # a real input equal to the "missing" embedding ...
    absent = torch.tensor([[True, True, False]])
    assert not torch.allclose(fusion(feats), fusion(feats, absent))   # ... is still told apart by its bit


def test_film_with_the_base_missing_uses_its_learned_embedding():
    fusion = _fusion("film")
    present = torch.tensor([[False, False, False]])
    torch.testing.assert_close(fusion(_features(1), present)[0], torch.relu(fusion.missing["image"]))


# --- errors ---

def test_unknown_and_missing_keys_are_named():
    feats = _features(2)
    feats["video"] = feats.pop("text")
    message = "features has unknown keys ['video'] (got ['audio', 'image', 'video']; valid keys: ['audio', 'image', 'text'])"
    with pytest.raises(ValueError, match=re.escape(message)):
        _fusion("concat")(feats)


@pytest.mark.parametrize("shape", [(2, 6), (2, 7, 1), (7,)])
def test_a_wrong_shape_names_the_modality_and_the_shape(shape):
    feats = _features(2)
    feats["image"] = torch.zeros(shape)
    with pytest.raises(ValueError, match=re.escape(f"features['image'] must have shape (B, 7), got {shape}")):
        _fusion("sum")(feats)


def test_unequal_batch_sizes_and_integer_features_are_rejected():
    feats = _features(2)
    feats["text"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=re.escape("same batch size B, got {'audio': 2, 'image': 2, 'text': 3}")):
        _fusion("sum")(feats)
    feats["text"] = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("features['text'] must be a floating-point tensor, got dtype torch.int64")):
        _fusion("sum")(feats)
    with pytest.raises(TypeError, match="features must be a dict"):
        _fusion("sum")(list(feats.values()))


@pytest.mark.parametrize("present, error, message", [
    (torch.ones(2, 2, dtype=torch.bool), ValueError, "present must be (B, M) = (2, 3)"),
    (torch.ones(3, 3, dtype=torch.bool), ValueError, "present must be (B, M) = (2, 3)"),
    (torch.ones(2, 3), TypeError, "present must be a bool tensor (B, M), got torch.float32"),
    ([[True] * 3] * 2, TypeError, "present must be a bool tensor (B, M), got list"),
])
def test_bad_masks_are_rejected(present, error, message):
    with pytest.raises(error, match=re.escape(message)):
        _fusion("late")(_features(2), present)


def test_make_fusion_lists_the_valid_names():
    with pytest.raises(ValueError, match=re.escape("unknown fusion 'attention'; valid: early, concat, sum")):
        make_fusion("attention", DIMS, HIDDEN, CLASSES)


@pytest.mark.parametrize("build, error, message", [
    (lambda: FiLMFusion({"audio": 2, "text": 3}, 8), ValueError, "base 'image' is not one of the modalities"),
    (lambda: CrossAttentionFusion(DIMS, 6, heads=4), ValueError, "hidden (6) must be divisible by heads (4)"),
    (lambda: make_fusion("sum", {}, 8, 2), ValueError, "in_dims must name at least one modality"),
    (lambda: make_fusion("sum", {"image": 0}, 8, 2), ValueError, "in_dims['image'] must be a positive int, got 0"),
    (lambda: make_fusion("concat", DIMS, 0, 2), ValueError, "out_dim must be a positive int, got 0"),
    (lambda: make_fusion("concat", {"a.b": 2}, 8, 2), ValueError, "contain no '.'"),
])
def test_constructor_errors(build, error, message):
    with pytest.raises(error, match=re.escape(message)):
        build()


# --- the model, the dataset ---

def _two_bit_task(n: int, seed: int) -> FeatureDataset:
    """Label = 2 * bit_a + bit_b: modality "a" carries bit_a, "b" carries bit_b (half the label each)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, 2), generator=g)
    noise = 0.3 * torch.randn(n, 2, 4, generator=g)
    feats = {m: (2.0 * bits[:, j : j + 1] - 1.0) + noise[:, j] for j, m in enumerate(("a", "b"))}
    return FeatureDataset(feats, 2 * bits[:, 0] + bits[:, 1])


def test_fusion_model_with_modality_dropout_learns_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    train, dev = _two_bit_task(512, seed=0), _two_bit_task(256, seed=1)
    model = FusionModel(make_fusion("concat", {"a": 4, "b": 4}, 16, 4), 4, modality_dropout=0.3)
    history = fit(model, make_loader(train, 32, shuffle=True), make_loader(dev, 256),
                  torch.optim.Adam(model.parameters(), lr=1e-2), epochs=4, device="cpu")
    assert history.train_loss[-1] < 0.6 * history.train_loss[0], history.train_loss
    assert history.dev_accuracy[-1] > 0.95, history.dev_accuracy   # eval: nothing dropped, both bits seen
    inputs, _ = dev.__getitems__(range(64))
    model.eval()
    torch.testing.assert_close(model(inputs), model(inputs), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(inputs), model(inputs)), "modality dropout should act in training mode"


def test_fusion_model_runs_encoders_and_flattens_the_rest():
    torch.manual_seed(0)
    fusion = make_fusion("late", {"image": 12, "text": 5}, 8, 3)
    model = FusionModel(fusion, 3, encoders={"text": BagOfWords(5)})
    inputs = {"image": torch.rand(2, 3, 2, 2), "text": torch.tensor([[2, 3, 3], [4, PAD_ID, PAD_ID]])}
    assert isinstance(model.head, nn.Identity) and model.modalities == ("image", "text")
    assert model(inputs).shape == (2, 3)
    torch.testing.assert_close(model(inputs), fusion(model.features(inputs)))
    present = torch.tensor([[True, False], [False, True]])
    torch.testing.assert_close(model(inputs, present), fusion(model.features(inputs), present))


class _MustNotRun(nn.Module):
    """An encoder that fails if it is called: proves that an absent modality is not encoded."""

    def forward(self, x):
        raise AssertionError("the encoder of an absent modality ran")


def test_fusion_model_skips_the_encoder_of_an_absent_modality():
    torch.manual_seed(0)
    fusion = make_fusion("concat", {"image": 12, "text": 5}, 8, 3)
    model = FusionModel(fusion, 3, encoders={"text": _MustNotRun()}).eval()
    image = torch.rand(4, 3, 2, 2)
    assert model.features({"image": image}).keys() == {"image"}
    logits = model({"image": image})
    masked = torch.tensor([[True, False]] * 4)
    torch.testing.assert_close(logits, model.head(fusion({"image": image.flatten(1), "text": torch.randn(4, 5)},
                                                         masked)), rtol=0, atol=0)
    present = torch.tensor([[True, False], [False, False], [True, False], [True, False]])
    assert model({"image": image}, present).shape == (4, 3)
    with pytest.raises(ValueError, match=re.escape("present marks ['text'] present")):
        model({"image": image}, torch.ones(4, 2, dtype=torch.bool))


def test_fusion_model_with_dropout_never_brings_an_absent_modality_back():
    torch.manual_seed(0)
    fusion = make_fusion("sum", {"a": 2, "b": 2}, 8, 3)
    model = FusionModel(fusion, 3, modality_dropout=0.9).train()
    a = torch.randn(64, 2)
    only_a = model.head(fusion({"a": a}, torch.tensor([[True, False]] * 64)))
    # With "b" absent, keep_one keeps "a" in every row, so dropout changes nothing.
    torch.testing.assert_close(model({"a": a}), only_a, rtol=0, atol=0)


def test_fusion_model_errors():
    with pytest.raises(ValueError, match=re.escape("encoders for unknown modalities ['video']")):
        FusionModel(_fusion("sum"), CLASSES, encoders={"video": nn.Identity()})
    with pytest.raises(ValueError, match=re.escape("the fusion outputs 4 logits, but num_classes is 5")):
        FusionModel(_fusion("late"), 5)
    with pytest.raises(ValueError, match=re.escape("p must be a number in [0, 1], got 1.5")):
        FusionModel(_fusion("sum"), CLASSES, modality_dropout=1.5)
    with pytest.raises(ValueError, match=re.escape("inputs has unknown keys ['annotations'] (got ['annotations', 'audio']")):
        FusionModel(_fusion("sum"), CLASSES)({"audio": torch.zeros(1, 5), "annotations": torch.zeros(1, 15)})
    with pytest.raises(ValueError, match=re.escape("inputs hold no modality (keys: [])")):
        FusionModel(_fusion("sum"), CLASSES)({})


def test_bag_of_words_counts_tokens_but_not_padding():
    text = torch.tensor([[5, 2, 5, PAD_ID], [3, PAD_ID, PAD_ID, PAD_ID]])
    expected = torch.zeros(2, 6)
    for b, row in enumerate(text.tolist()):
        for token in row:
            if token != PAD_ID:
                expected[b, token] += 1
    torch.testing.assert_close(BagOfWords(6)(text), expected)
    with pytest.raises(ValueError, match=re.escape("ids must be token ids (N, L), got torch.float32 of shape (2, 4)")):
        BagOfWords(6)(text.float())


def test_feature_dataset_serves_whole_batches():
    data = _two_bit_task(10, seed=0)
    inputs, labels = next(iter(make_loader(data, 4)))
    assert sorted(inputs) == ["a", "b"] and inputs["a"].shape == (4, 4) and labels.shape == (4,)
    torch.testing.assert_close(inputs["b"], data.features["b"][:4])
    x, y = data[3]
    assert x["a"].shape == (4,) and y == data.labels[3]
    with pytest.raises(ValueError, match=re.escape("one row per label (N = 3), got {'a': 2}")):
        FeatureDataset({"a": torch.zeros(2, 1)}, torch.zeros(3, dtype=torch.long))


def test_standardize_uses_the_reference_statistics():
    train, dev = _two_bit_task(200, seed=0), _two_bit_task(50, seed=1)
    z_train, z_dev = train.standardize(), dev.standardize(train)
    torch.testing.assert_close(z_train.features["a"].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z_train.features["a"].std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    x, ref = dev.features["b"], train.features["b"]
    torch.testing.assert_close(z_dev.features["b"], (x - ref.mean(0)) / ref.std(0, unbiased=False), atol=1e-4, rtol=0)
    assert torch.equal(z_dev.labels, dev.labels) and torch.isfinite(
        FeatureDataset({"a": torch.ones(3, 2)}, torch.zeros(3, dtype=torch.long)).standardize().features["a"]).all()
    other = FeatureDataset({"b": torch.ones(3, 4), "c": torch.ones(3, 1)}, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("features has unknown keys ['c'] and lacks the required keys ['a']")):
        other.standardize(train)


def test_concat_fusion_without_layers_is_the_plain_concatenation():
    fusion = ConcatFusion({"a": 3, "b": 2}, hidden=7, layers=0)
    assert fusion.out_dim == 3 + 2 + 2 and len(fusion.mlp) == 0
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    present = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    out = fusion({"a": a, "b": b}, present)
    assert torch.equal(out[0], torch.cat([a[0], b[0], torch.ones(2)]))
    assert torch.equal(out[1, 3:5], fusion.missing["b"].detach())
    with pytest.raises(ValueError, match="layers must be a non-negative int, got -1"):
        ConcatFusion({"a": 3}, hidden=7, layers=-1)
