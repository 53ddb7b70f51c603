"""mmcourse.joint: hard-negative mining never returns the positive, the joint model's shapes and gradients,
the multi-task loss against a reference, OGM-GE's coefficients against the paper's formula, stage-1
initialisation, and a short joint training run whose loss falls."""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mmcourse import joint
from mmcourse.data import make_loader
from mmcourse.data.matching import caption_fits
from mmcourse.encoders import encode, make_encoder
from mmcourse.joint import (MINING_MODES, AnnotatedDataset, GradientModulation, ITMHead, JointModel, MultitaskLoss,
                            embed_pairs, identical_rows, itm_scores,
                            mine_hard_negatives, modality_probes,
                            modality_scores, ogm_coefficients)
from mmcourse.metrics import linear_probe_accuracy
from mmcourse.modality import presence_without
from mmcourse.robustness import missing_modality_table
from mmcourse.training import TrainConfig, train

CLASSES = 10


def _encoders(seed: int = 0) -> dict[str, nn.Module]:
    """Small encoders of the stage-1 families (audio CNN, image CNN, text mean-pool), width 16."""
    torch.manual_seed(seed)
    return {"audio": make_encoder("audio", "cnn", dim=16, widths=(4, 4, 8)),
            "image": make_encoder("image", "cnn", dim=16, widths=(4, 8, 8)),
            "text": make_encoder("text", "mean_pool", dim=16)}


def _model(**options) -> JointModel:
    model = JointModel(_encoders(), CLASSES, hidden=16, embed_dim=8, **options)
    torch.manual_seed(1)
    return model


@pytest.fixture(scope="module")
def batch(small_dataset):
    return next(iter(make_loader(small_dataset, 12)))


# ----------------------------------------------------------------------------- hard negatives

def _similarities(b: int, seed: int) -> list[torch.Tensor]:
    """Random, positive-favouring, tied and duplicate-row similarity matrices (B, B)."""
    g = torch.Generator().manual_seed(seed)
    random = torch.randn(b, b, generator=g)
    favour = random + 100 * torch.eye(b)                      # the positive is by far the most similar
    ties = torch.zeros(b, b)                                  # every candidate equally similar
    duplicate = random[:1].expand(b, b).clone()               # identical rows (duplicate images)
    return [random, favour, ties, duplicate, favour.round()]


@pytest.mark.parametrize("mode", MINING_MODES)
@pytest.mark.parametrize("b", [2, 3, 17])
def test_mining_never_returns_the_positive(mode, b):
    for seed in range(20):
        for sim in _similarities(b, seed):
            neg = mine_hard_negatives(sim, mode, torch.Generator().manual_seed(seed))
            assert neg.shape == (b,) and neg.dtype == torch.int64
            assert not (neg == torch.arange(b)).any(), (mode, sim, neg)
            assert ((0 <= neg) & (neg < b)).all()


@pytest.mark.parametrize("mode", MINING_MODES)
def test_mining_a_batch_of_two_returns_the_other_one(mode):
    for sim in _similarities(2, 0):
        assert mine_hard_negatives(sim, mode).tolist() == [1, 0]


def test_mining_survives_non_finite_similarities():
    sim = torch.tensor([[0.0, float("nan"), float("-inf")],
                        [float("inf"), float("inf"), float("-inf")],
                        [float("-inf"), float("-inf"), float("-inf")]])
    for mode in MINING_MODES:
        for seed in range(10):
            neg = mine_hard_negatives(sim, mode, torch.Generator().manual_seed(seed))
            assert not (neg == torch.arange(3)).any(), (mode, neg)


def test_hardest_is_the_most_similar_other_column_lowest_index_on_ties():
    g = torch.Generator().manual_seed(3)
    sim = torch.randint(0, 3, (9, 9), generator=g).float()    # many ties
    expected = []
    for i in range(9):
        best = max(v for j, v in enumerate(sim[i].tolist()) if j != i)
        expected.append(next(j for j, v in enumerate(sim[i].tolist()) if j != i and v == best))
    assert mine_hard_negatives(sim, "hardest").tolist() == expected


def test_sampling_follows_the_softmax_over_the_other_columns():
    sim = torch.tensor([[5.0, 1.0, 0.0, -1.0]] * 4)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([mine_hard_negatives(sim, "sample", g) for _ in range(4000)])   # (4000, 4)
    row0 = torch.bincount(draws[:, 0], minlength=4).float() / len(draws)
    expected = torch.cat([torch.zeros(1), F.softmax(sim[0, 1:], 0)])
    assert row0[0] == 0
    assert torch.allclose(row0, expected, atol=0.03), (row0, expected)
    uniform = torch.stack([mine_hard_negatives(sim, "random", g) for _ in range(3000)])
    freq = torch.bincount(uniform[:, 3], minlength=4).float() / len(uniform)
    assert torch.allclose(freq, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]), atol=0.04), freq


def test_mining_is_deterministic_for_a_seed():
    sim = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    a = mine_hard_negatives(sim, "sample", torch.Generator().manual_seed(5))
    b = mine_hard_negatives(sim, "sample", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_exclude_is_respected_unless_nothing_else_is_left():
    sim = torch.arange(16.0).reshape(4, 4)                   # column 3 is the hardest for rows 0-2
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 3] = True                                     # row 0: use column 2 instead
    exclude[1, [0, 2, 3]] = True                             # row 1: every other column excluded -> fallback
    neg = mine_hard_negatives(sim, "hardest", exclude=exclude)
    assert neg.tolist() == [2, 3, 3, 2]
    for seed in range(30):
        neg = mine_hard_negatives(sim, "sample", torch.Generator().manual_seed(seed), exclude)
        assert neg[0] != 3 and neg[0] != 0 and neg[1] != 1


def test_mining_errors_name_the_argument_and_shape():
    with pytest.raises(ValueError, match=r"at least 2.*\(1, 1\)"):
        mine_hard_negatives(torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"similarity must be square.*\(3, 4\)"):
        mine_hard_negatives(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="similarity must be a floating-point"):
        mine_hard_negatives(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="mode must be one of"):
        mine_hard_negatives(torch.zeros(3, 3), "easiest")
    with pytest.raises(ValueError, match=r"exclude must have the shape.*\(2, 2\)"):
        mine_hard_negatives(torch.zeros(3, 3), exclude=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="exclude must be a bool"):
        mine_hard_negatives(torch.zeros(3, 3), exclude=torch.zeros(3, 3))


def test_identical_rows():
    text = torch.tensor([[1, 2, 0], [1, 2, 0], [1, 3, 0]])
    expected = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert torch.equal(identical_rows(text), expected)


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("b", [1, 5])
def test_shapes(batch, b):
    model = _model().eval()
    inputs = {m: x[:b] for m, x in batch[0].items()}
    features = model.features(inputs)
    assert {m: f.shape for m, f in features.items()} == {m: (b, 16) for m in ("audio", "image", "text")}
    assert model(inputs).shape == (b, CLASSES)
    assert model(inputs, torch.tensor([[False, True, True]] * b)).shape == (b, CLASSES)
    assert {m: z.shape for m, z in model.modality_logits(features).items()} == {m: (b, CLASSES) for m in features}
    image, text = model.embed(features)
    assert image.shape == text.shape == (b, 8)
    assert torch.allclose(image.norm(dim=1), torch.ones(b)) and torch.allclose(text.norm(dim=1), torch.ones(b))
    assert model.similarity(image, text).shape == (b, b)
    assert model.itm(image, text).shape == (b,)
    assert modality_scores(model, features, batch[1][:b]).shape == (3,)


def test_late_fusion_modality_logits_are_its_branches(batch):
    model = _model().eval()
    features = model.features(batch[0])
    logits = model.modality_logits(features)
    for m, f in features.items():
        torch.testing.assert_close(logits[m], model.fusion.heads[m](f))
    torch.testing.assert_close(model.classify(features), torch.stack(list(logits.values())).mean(0))


def test_modality_scores_against_a_loop(batch):
    model = _model().eval()
    features = model.features(batch[0])
    logits = model.modality_logits(features)
    scores = modality_scores(model, features, batch[1])
    for j, m in enumerate(model.modalities):
        p = [F.softmax(logits[m][i], 0)[batch[1][i]].item() for i in range(len(batch[1]))]
        assert math.isclose(scores[j].item(), sum(p) / len(p), rel_tol=1e-5)


def test_model_errors():
    with pytest.raises(ValueError, match=r"at least the keys \['image', 'text'\].*\['audio', 'image'\]"):
        JointModel({"audio": make_encoder("audio", "cnn"), "image": make_encoder("image", "cnn")}, CLASSES)
    with pytest.raises(TypeError, match=r"encoders\['text'\] must be an nn.Module with an int out_dim"):
        JointModel({"image": make_encoder("image", "cnn"), "text": nn.Linear(3, 4)}, CLASSES)
    with pytest.raises(ValueError, match=r"image and text must both be \(B, E\) with E = 8.*\(2, 8\).*\(3, 8\)"):
        ITMHead(8)(torch.zeros(2, 8), torch.zeros(3, 8))


class _Stage1(nn.Module):
    """The parts of a stage-1 ContrastiveModel that from_stage1 reads."""

    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict(_encoders(seed=7))
        self.projections = nn.ModuleDict({m: nn.Linear(16, 8) for m in ("audio", "image", "text")})
        self.losses = nn.ModuleDict({"image-text": nn.Module()})
        self.losses["image-text"].logit_scale = nn.Parameter(torch.tensor(3.0))


def test_from_stage1_copies_encoders_projections_and_temperature(batch):
    stage1 = _Stage1()
    before = copy.deepcopy(stage1.state_dict())
    model = JointModel.from_stage1(stage1, CLASSES, hidden=16, embed_dim=8)
    for m in ("audio", "image", "text"):
        assert model.encoders[m] is not stage1.encoders[m]
        for (k, a), b in zip(model.encoders[m].state_dict().items(), stage1.encoders[m].state_dict().values()):
            assert torch.equal(a, b), (m, k)
    for m in ("image", "text"):
        assert torch.equal(model.project[m].weight, stage1.projections[m].weight)
    assert model.itc.logit_scale.item() == 3.0
    out = MultitaskLoss()(model.train(), batch)                # training the copy leaves stage 1 untouched
    out["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(torch.equal(v, stage1.state_dict()[k]) for k, v in before.items())
    with pytest.raises(TypeError, match="stage1 must have an nn.ModuleDict .encoders"):
        JointModel.from_stage1(nn.Linear(2, 2), CLASSES)


# ----------------------------------------------------------------------------- the loss

def test_multitask_loss_against_a_reference(batch):
    model = _model().eval()          # eval: no BatchNorm update, so two forward passes agree
    loss_fn = MultitaskLoss(itm_weight=0.5, itc_weight=0.25, mining="hardest")
    out = loss_fn(model, batch)
    assert set(out) == {"loss", "cls", "itc", "itm", "itm_accuracy", "score_audio", "score_image", "score_text"}
    inputs, labels = batch
    features = model.features(inputs)
    cls = F.cross_entropy(model(inputs), labels)
    u, v = (F.normalize(model.project[m](features[m]), dim=1) for m in ("image", "text"))
    scale = model.itc.logit_scale.exp()
    logits = scale * u @ v.T
    target = torch.arange(len(labels))
    itc = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    same = [[inputs["text"][i].tolist() == inputs["text"][j].tolist() for j in range(len(labels))]
            for i in range(len(labels))]
    def hardest(rows):                                                          # noqa: E306
        out = []
        for i, row in enumerate(rows.tolist()):
            allowed = [j for j in range(len(row)) if j != i and not same[i][j]] or \
                      [j for j in range(len(row)) if j != i]
            out.append(max(allowed, key=lambda j: (row[j], -j)))
        return out
    neg_text, neg_image = hardest(logits), hardest(logits.T)
    pairs = [(i, i, 1.0) for i in range(len(labels))] + [(i, neg_text[i], 0.0) for i in range(len(labels))] \
        + [(neg_image[j], j, 0.0) for j in range(len(labels))]
    scores = torch.stack([model.itm(u[[i]], v[[j]])[0] for i, j, _ in pairs])
    itm = F.binary_cross_entropy_with_logits(scores, torch.tensor([y for _, _, y in pairs]))
    torch.testing.assert_close(out["cls"], cls)
    torch.testing.assert_close(out["itc"], itc)
    torch.testing.assert_close(out["itm"], itm)
    torch.testing.assert_close(out["loss"], cls + 0.5 * itm + 0.25 * itc)


def test_annotated_batches_never_mine_a_fitting_caption(world, small_dataset, monkeypatch):
    calls = []
    real = joint.mine_hard_negatives

    def spy(similarity, mode="sample", generator=None, exclude=None):
        out = real(similarity, mode, generator, exclude)
        calls.append((exclude, out))
        return out

    monkeypatch.setattr(joint, "mine_hard_negatives", spy)
    data = AnnotatedDataset(small_dataset, world)
    inputs, labels, annotations = next(iter(make_loader(data, 64, shuffle=True)))
    assert annotations.shape == (64, 15) and sorted(inputs) == ["audio", "image", "text"]   # beside, not inside
    model = _model().eval()
    assert model(inputs).shape == (64, CLASSES)
    for mining in MINING_MODES:
        calls.clear()
        MultitaskLoss(mining=mining)(model, (inputs, labels, annotations))
        fits = caption_fits(annotations)                        # row = image, column = caption
        (to_text, neg_text), (to_image, neg_image) = calls
        assert torch.equal(to_text, fits) and torch.equal(to_image, fits.T)
        rows = torch.arange(64)
        usable = (~fits & ~torch.eye(64, dtype=torch.bool)).any(1)
        assert not fits[rows, neg_text][usable].any(), mining
        usable = (~fits.T & ~torch.eye(64, dtype=torch.bool)).any(1)
        assert not fits.T[rows, neg_image][usable].any(), mining


def test_a_batch_of_one_skips_the_pair_losses(batch):
    model = _model().eval()
    one = ({m: x[:1] for m, x in batch[0].items()}, batch[1][:1])
    out = MultitaskLoss()(model, one)
    assert "itm" not in out and "itc" not in out
    torch.testing.assert_close(out["loss"], out["cls"])


def test_batches_without_annotations_exclude_only_identical_captions(batch, monkeypatch):
    calls = []
    real = joint.mine_hard_negatives
    monkeypatch.setattr(joint, "mine_hard_negatives",
                        lambda similarity, mode, generator, exclude: calls.append(exclude) or real(
                            similarity, mode, generator, exclude))
    MultitaskLoss()(_model().eval(), batch)
    assert torch.equal(calls[0], identical_rows(batch[0]["text"]))


def test_annotations_inside_the_modality_dict_are_rejected(batch):
    inputs = {**batch[0], "annotations": torch.zeros(len(batch[1]), 15)}
    with pytest.raises(ValueError, match=re.escape("inputs has unknown keys ['annotations']")):
        _model()(inputs)


def test_an_absent_modality_is_not_encoded_and_has_no_logits(batch):
    model = _model().eval()
    inputs = {m: x for m, x in batch[0].items() if m != "audio"}
    features = model.features(inputs)
    assert sorted(features) == ["image", "text"] and sorted(model.modality_logits(features)) == ["image", "text"]
    masked = presence_without(len(batch[1]), model.modalities, ("audio",))
    torch.testing.assert_close(model(inputs), model(batch[0], masked), rtol=0, atol=0)
    with pytest.raises(ValueError, match=re.escape("features lacks the required keys ['audio']")):
        modality_scores(model, features, batch[1])


def test_loss_errors():
    with pytest.raises(ValueError, match="itm_weight must be a finite number >= 0, got -1"):
        MultitaskLoss(itm_weight=-1)
    with pytest.raises(ValueError, match="mining must be one of"):
        MultitaskLoss(mining="hard")


def test_gradients_reach_every_parameter(batch):
    model = _model(modality_dropout=0.3).train()
    torch.manual_seed(0)
    MultitaskLoss()(model, batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


# ----------------------------------------------------------------------------- OGM-GE

def _paper_coefficients(scores: list[float], alpha: float) -> list[float]:
    """Peng et al. 2022, Eq. 10, with rho_m = s_m / (mean of the other scores)."""
    out = []
    for m, s in enumerate(scores):
        others = [x for j, x in enumerate(scores) if j != m]
        rho = s / (sum(others) / len(others))
        out.append(1 - math.tanh(alpha * rho) if rho > 1 else 1.0)
    return out


@pytest.mark.parametrize("scores", [[0.9, 0.3], [0.3, 0.9], [0.5, 0.5], [0.5, 0.2, 0.1], [0.18, 0.5, 0.27],
                                    [0.4, 0.4, 0.1]])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 2.0])
def test_ogm_coefficients_match_the_paper(scores, alpha):
    got = ogm_coefficients(torch.tensor(scores, dtype=torch.float64), alpha).tolist()
    assert got == pytest.approx(_paper_coefficients(scores, alpha), rel=1e-12)
    if len(scores) == 2 and scores[0] > scores[1]:          # two modalities: exactly the paper's ratio s_a / s_v
        assert got == pytest.approx([1 - math.tanh(alpha * scores[0] / scores[1]), 1.0])


def test_ogm_coefficient_errors():
    with pytest.raises(ValueError, match=r"scores must be a tensor \(M,\) with M >= 2.*\(1,\)"):
        ogm_coefficients(torch.tensor([0.5]), 0.5)
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        ogm_coefficients(torch.tensor([0.5, 0.2]), -1.0)
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        GradientModulation(_model(), alpha=0)


def _grads(model, batch, modulation=None) -> dict[str, torch.Tensor]:
    model.zero_grad()
    MultitaskLoss(mining="hardest", modulation=modulation)(model, batch)["loss"].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_modulation_scales_each_encoder_by_its_coefficient(batch):
    model = _model().eval()
    plain = _grads(model, batch)
    features = model.features(batch[0])
    k = ogm_coefficients(modality_scores(model, features, batch[1]), 0.5)
    with GradientModulation(model, alpha=0.5, noise=False) as ogm:
        modulated = _grads(model, batch, ogm)
        assert torch.equal(ogm.coefficients, k)
    assert (k < 1).any() and (k == 1).any()
    for name, g in plain.items():
        if name.startswith("encoders."):
            j = model.modalities.index(name.split(".")[1])
            torch.testing.assert_close(modulated[name], k[j] * g)
        else:
            torch.testing.assert_close(modulated[name], g)
    torch.testing.assert_close(_grads(model, batch), plain)      # removed: plain gradients again


def test_gradient_modulation_noise_touches_only_encoder_weights(batch):
    model = _model().eval()
    plain = _grads(model, batch)
    torch.manual_seed(0)
    with GradientModulation(model, alpha=0.5, noise=True) as ogm:
        noisy = _grads(model, batch, ogm)
    for name, p in model.named_parameters():
        changed = not torch.allclose(noisy[name], ogm.coefficients[model.modalities.index(name.split(".")[1])]
                                     * plain[name]) if name.startswith("encoders.") else False
        assert changed == (name.startswith("encoders.") and p.dim() >= 2), name
        assert torch.isfinite(noisy[name]).all()


# ----------------------------------------------------------------------------- training, probes, curves

def test_a_short_joint_run_lowers_the_loss(small_dataset):
    torch.manual_seed(0)
    model = _model()
    loader = make_loader(torch.utils.data.Subset(small_dataset, range(128)), 32, shuffle=True, seed=0)
    config = TrainConfig(epochs=6, lr=1e-2, progress=False)
    history = train(model, MultitaskLoss(), loader, config, "cpu")
    assert history.train_loss[-1] < 0.93 * history.train_loss[0], history.train_loss
    cls = history.metrics["train_cls"]
    assert cls[-1] < 0.97 * cls[0] and all(b <= a for a, b in zip(cls, cls[1:])), cls
    assert {"train_itm", "train_itc", "train_itm_accuracy", "train_score_image"} <= set(history.metrics)


def test_modality_probes_are_linear_probes_of_each_encoder(small_dataset):
    model = _model()
    train_set = torch.utils.data.Subset(small_dataset, range(300))
    test_set = torch.utils.data.Subset(small_dataset, range(300, 500))
    probes = modality_probes(model, train_set, test_set, "cpu")
    assert set(probes) == {"audio", "image", "text"}
    for m, acc in probes.items():
        x, xt = (encode(model.encoders[m], ds, "cpu", key=m) for ds in (train_set, test_set))
        assert acc == linear_probe_accuracy(x, small_dataset.labels[:300], xt, small_dataset.labels[300:500]), m


def test_the_encode_once_table_equals_masking_each_subset_through_forward(small_dataset):
    class ForwardOnly(torch.nn.Module):       # hides features/classify: the table calls model(inputs, present)
        def __init__(self, model):
            super().__init__()
            self.model, self.modalities = model, model.modalities

        def forward(self, inputs, present=None):
            return self.model(inputs, present)

    model = _model(modality_dropout=0.5)
    loader = make_loader(torch.utils.data.Subset(small_dataset, range(100)), 32)
    table = missing_modality_table(ForwardOnly(model), loader, None, "cpu")
    assert missing_modality_table(model, loader, None, "cpu") == table
    chosen = missing_modality_table(model, loader, None, "cpu", [("image",), ("audio", "text")])
    assert list(chosen) == [("image",), ("audio", "text")]
    with pytest.raises(ValueError, match="non-empty sorted tuple"):
        missing_modality_table(model, loader, None, "cpu", [("text", "audio")])


def test_embed_pairs_and_itm_scores_against_a_loop(world, small_dataset):
    model = _model()
    data = torch.utils.data.Subset(AnnotatedDataset(small_dataset, world), range(70))
    image, text, notes = embed_pairs(model, data, "cpu", batch_size=32)
    assert image.shape == text.shape == (70, 8) and notes.shape == (70, 15)
    assert model.training                                # embedded in eval mode, the training mode restored
    model.eval()
    inputs = next(iter(make_loader(data, 70)))[0]
    u, v = model.embed(model.features(inputs))
    torch.testing.assert_close(image, u)
    g = torch.Generator().manual_seed(0)
    scores = itm_scores(model, image, text, notes, batch_size=32, generator=g)
    accepted, hard, rand = [], [], []                           # per batch
    g = torch.Generator().manual_seed(0)
    for s in (0, 32):                                         # the last 6 scenes are dropped
        uu, vv, fits = image[s:s + 32], text[s:s + 32], caption_fits(notes[s:s + 32])
        sim = model.similarity(uu, vv)
        accepted.append(np.mean([model.itm(uu[[i]], vv[[i]]).item() > 0 for i in range(32)]))
        random_neg = mine_hard_negatives(sim, "random", g, fits)
        h, r = [], []
        for i in range(32):
            real = [j for j in range(32) if j != i and not fits[i, j]]
            if real:
                j = max(real, key=lambda j: (sim[i, j].item(), -j))
                h.append(model.itm(uu[[i]], vv[[j]]).item() <= 0)
                r.append(model.itm(uu[[i]], vv[[int(random_neg[i])]]).item() <= 0)
        hard.append(np.mean(h))
        rand.append(np.mean(r))
    assert scores == pytest.approx({"true pairs accepted": np.mean(accepted), "hard negatives rejected": np.mean(hard),
                                    "random negatives rejected": np.mean(rand)})
    with pytest.raises(ValueError, match="batch_size"):
        itm_scores(model, image[:10], text[:10], notes[:10], batch_size=32)
    with pytest.raises(ValueError, match="wrap it in AnnotatedDataset"):
        embed_pairs(model, small_dataset, "cpu")


# ----------------------------------------------------------------------------- chapter 07's runs

def test_branch_evaluator_reads_the_table_of_every_modality_and_each_alone(small_dataset):
    model = _model().eval()
    loader = make_loader(torch.utils.data.Subset(small_dataset, range(64)), 32)
    scores = joint.branch_evaluator(loader, "cpu", ["text", "audio", "image"])(model)
    table = missing_modality_table(model, loader, None, "cpu")
    assert scores == {"dev_accuracy": table[("audio", "image", "text")],
                      **{f"dev_{m}_alone": table[(m,)] for m in ("audio", "image", "text")}}


def test_train_joint_with_sgd_and_ogm_removes_its_hooks(small_dataset):
    torch.manual_seed(0)
    model = _model()
    loader = make_loader(torch.utils.data.Subset(small_dataset, range(64)), 32, shuffle=True, seed=0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = joint.train_joint(model, loader, TrainConfig(epochs=1, lr=0.05, progress=False), "cpu",
                                aux_weight=0.25, ogm_alpha=0.5, optimizer=sgd, generator=torch.Generator())
    assert "train_coeff_image" in history.metrics and all(math.isfinite(x) for x in history.train_loss)
    assert all(not p._backward_hooks for p in model.encoders.parameters())      # the run took its hooks off


def test_train_matcher_lowers_the_matching_loss_and_checks_shapes(world, small_dataset):
    g = torch.Generator().manual_seed(0)
    n, e = len(small_dataset), 8
    image = F.normalize(torch.randn(n, e, generator=g), dim=1)                      # (N, E)
    text = F.normalize(image + 0.3 * torch.randn(n, e, generator=g), dim=1)         # (N, E): pairs agree
    notes = AnnotatedDataset(small_dataset, world).annotations                       # (N, 3K)
    torch.manual_seed(0)
    matcher = joint.FrozenMatcher(lambda u, v: 10 * u @ v.T, e)

    def itm_loss() -> float:
        return MultitaskLoss(mining="random", generator=torch.Generator().manual_seed(1)).matching(
            matcher, image[:64], text[:64])[0].item()

    before = itm_loss()
    joint.train_matcher(matcher, image, text, notes, "random", exclude_fitting=True, steps=100, batch_size=32,
                        lr=1e-2, generator=torch.Generator().manual_seed(0))
    assert itm_loss() < 0.5 * before, (before, itm_loss())
    assert [n for n, _ in matcher.named_parameters()] == [n for n, _ in matcher.itm.named_parameters(prefix="itm")]
    with pytest.raises(ValueError, match=r"image and text must be \(N, E\)"):
        joint.train_matcher(matcher, image, text[:5], notes, "random", exclude_fitting=False)


def test_train_joint_without_ogm_noise_is_deterministic_and_with_it_is_not(small_dataset):
    def trained(noise: bool, global_seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = _model()
        loader = make_loader(torch.utils.data.Subset(small_dataset, range(64)), 32, shuffle=True, seed=0)
        torch.manual_seed(global_seed)                     # only the GE noise draws from the global generator
        joint.train_joint(model, loader, TrainConfig(epochs=1, progress=False), "cpu", aux_weight=0.25,
                          ogm_alpha=0.5, ogm_noise=noise, generator=torch.Generator().manual_seed(0))
        return torch.cat([p.detach().flatten() for p in model.encoders.parameters()])

    assert torch.equal(trained(False, 1), trained(False, 2))
    assert not torch.equal(trained(True, 1), trained(True, 2))
