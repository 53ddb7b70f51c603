"""mmcourse.losses: values and gradients against per-sample loops written here,
equality with torch.nn.functional, gradcheck in float64, the properties the
notebook claims (stability, softmax - one-hot, log(B) at uniform logits, the
CLIP temperature cap) and the errors raised on bad input."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from mmcourse.losses import (DEFAULT_LOGIT_SCALE, MAX_LOGIT_SCALE, ContrastiveLoss, LinearFusionClassifier,
                             contrastive_loss_from_logits, cross_entropy, feature_penalty, info_nce, log_softmax,
                             logsumexp, naive_cross_entropy, penalised_loss, weight_penalty)


def _batch(b=6, c=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g, dtype=dtype) * 3
    target = torch.randint(0, c, (b,), generator=g)
    weight = torch.rand(c, generator=g, dtype=dtype) + 0.2
    return logits, target, weight


def _reference_cross_entropy(logits, target, smoothing=0.0, weight=None, reduction="mean"):
    """Cross-entropy one sample at a time, from the definition (torch scalar ops, so autograd works)."""
    b, c = logits.shape
    w = [1.0] * c if weight is None else [weight[k] for k in range(c)]
    losses, total_weight = [], 0.0
    for i in range(b):
        row = [logits[i, k] for k in range(c)]
        top = max(float(z.detach()) for z in row)
        log_norm = top + torch.log(sum(torch.exp(z - top) for z in row))
        minus_log_p = [log_norm - z for z in row]
        y = int(target[i])
        loss = (1 - smoothing) * w[y] * minus_log_p[y] + smoothing / c * sum(w[k] * minus_log_p[k] for k in range(c))
        losses.append(loss)
        total_weight = total_weight + w[y]
    if reduction == "none":
        return torch.stack(losses)
    total = sum(losses)
    return total / total_weight if reduction == "mean" else total


# --- logsumexp ---------------------------------------------------------------

def test_logsumexp_equals_torch_including_infinite_rows():
    x = torch.randn(4, 7, dtype=torch.float64) * 50
    x[1] = -math.inf                     # a row with no mass: -inf, not nan
    x[2, 3] = math.inf                   # an infinite logit: +inf
    x[3, :2] = -math.inf                 # some impossible classes
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, dim=-1))
    torch.testing.assert_close(logsumexp(x, dim=0, keepdim=True), torch.logsumexp(x, dim=0, keepdim=True))


def test_logsumexp_does_not_overflow_where_the_naive_form_does():
    x = torch.tensor([[1e4, 0.0, -1e4]])
    assert logsumexp(x).item() == 1e4
    assert torch.isinf(torch.log(torch.exp(x).sum(-1))).all()       # the textbook formula overflows
    target = torch.tensor([1])
    assert not torch.isfinite(naive_cross_entropy(x, target))
    torch.testing.assert_close(cross_entropy(x, target), torch.tensor(1e4))


def test_logsumexp_gradient_is_softmax():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    logsumexp(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.softmax(x.detach(), dim=-1))


def test_naive_cross_entropy_agrees_for_moderate_logits():
    logits, target, _ = _batch()
    torch.testing.assert_close(naive_cross_entropy(logits, target), F.cross_entropy(logits, target))
    torch.testing.assert_close(naive_cross_entropy(logits, target, reduction="none"),
                               F.cross_entropy(logits, target, reduction="none"))


def test_log_softmax_equals_torch():
    logits, _, _ = _batch()
    torch.testing.assert_close(log_softmax(logits), torch.log_softmax(logits, dim=-1))


# --- cross_entropy -----------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_torch(smoothing, weighted, reduction):
    logits, target, weight = _batch()
    w = weight if weighted else None
    ours = cross_entropy(logits, target, label_smoothing=smoothing, weight=w, reduction=reduction)
    theirs = F.cross_entropy(logits, target, weight=w, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("smoothing, weighted, reduction",
                         [(0.0, False, "mean"), (0.2, True, "mean"), (0.3, False, "sum"), (0.1, True, "none")])
def test_cross_entropy_value_and_gradient_equal_a_loop(smoothing, weighted, reduction):
    logits, target, weight = _batch()
    w = weight if weighted else None
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = cross_entropy(a, target, label_smoothing=smoothing, weight=w, reduction=reduction)
    ref = _reference_cross_entropy(b, target, smoothing, w, reduction)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("reduction, scale", [("mean", 1 / 6), ("sum", 1.0)])
def test_gradient_is_softmax_minus_one_hot(reduction, scale):
    logits, target, _ = _batch(b=6)
    z = logits.clone().requires_grad_(True)
    cross_entropy(z, target, reduction=reduction).backward()
    expected = (torch.softmax(logits, dim=1) - F.one_hot(target, 5).to(logits.dtype)) * scale
    torch.testing.assert_close(z.grad, expected)


def test_gradcheck_cross_entropy_with_smoothing_and_weights():
    logits, target, weight = _batch(b=3, c=4)
    z = logits.clone().requires_grad_(True)
    w = weight[:4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z, w: cross_entropy(z, target, label_smoothing=0.2, weight=w), (z, w))
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, target, label_smoothing=0.1, reduction="none"), (z,))


def test_cross_entropy_works_in_float32_and_batch_one():
    logits, target, _ = _batch(b=1, dtype=torch.float32)
    loss = cross_entropy(logits, target)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


# --- the worked case (§4.3) --------------------------------------------------

@pytest.mark.parametrize("b", [1, 4])
def test_linear_fusion_classifier_shapes_and_maps(b):
    torch.manual_seed(0)
    model = LinearFusionClassifier(text_dim=3, image_dim=5, fused_dim=4, num_classes=6)
    xt, xi = torch.randn(b, 3), torch.randn(b, 5)
    logits, fused = model(xt, xi)
    assert logits.shape == (b, 6) and fused.shape == (b, 4)
    torch.testing.assert_close(fused, torch.cat([xt, xi], 1) @ model.fuse.weight.T)   # x = [x_t, x_i] W_f
    torch.testing.assert_close(logits, fused @ model.classify.weight.T)              # z = W_c x
    assert model.fuse.bias is None and model.classify.bias is None                    # the article's maps
    assert sum(p.numel() for p in model.parameters()) == 8 * 4 + 4 * 6


def test_linear_fusion_classifier_with_bias():
    model = LinearFusionClassifier(2, 2, 3, 4, bias=True)
    assert model.fuse.bias.shape == (3,) and model.classify.bias.shape == (4,)


def test_feature_penalty_and_penalised_loss_equal_a_loop():
    logits, target, _ = _batch(b=4, c=3)
    fused = torch.randn(4, 7, dtype=torch.float64)
    penalty = sum(sum(float(fused[i, j]) ** 2 for j in range(7)) for i in range(4)) / 4
    assert feature_penalty(fused).item() == pytest.approx(penalty, rel=1e-12)
    lam = 0.3
    expected = _reference_cross_entropy(logits, target) + lam * penalty
    torch.testing.assert_close(penalised_loss(logits, fused, target, lam), expected)


def test_gradcheck_penalised_loss():
    logits, target, _ = _batch(b=3, c=4)
    z = logits.clone().requires_grad_(True)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, x: penalised_loss(z, x, target, lam=0.7), (z, x))


def test_penalised_loss_gradient_through_the_model():
    """d/dx of lam * mean_b sum_j x_j**2 is 2 * lam * x / B: check on the fused features."""
    torch.manual_seed(0)
    model = LinearFusionClassifier(2, 3, 4, 5).double()
    xt, xi = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    target = torch.randint(0, 5, (6,))
    logits, fused = model(xt, xi)
    fused.retain_grad()
    lam = 0.25
    penalised_loss(logits, fused, target, lam).backward()
    p = torch.softmax(logits.detach(), 1)
    expected = ((p - F.one_hot(target, 5).double()) @ model.classify.weight.detach()) / 6 + 2 * lam * fused.detach() / 6
    torch.testing.assert_close(fused.grad, expected)


def test_weight_penalty_counts_weight_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    expected = 0.5 * sum(float(w) ** 2 for layer in (model[0], model[2]) for w in layer.weight.detach().flatten())
    assert weight_penalty(model, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert weight_penalty(torch.nn.Sequential(torch.nn.ReLU()), 1.0).item() == 0.0


def test_sgd_weight_decay_equals_the_penalty_in_the_loss():
    """SGD's weight_decay = 2 lam takes the same steps as adding lam * sum(theta**2) to the loss."""
    torch.manual_seed(0)
    xt, xi, target = torch.randn(8, 2), torch.randn(8, 3), torch.randint(0, 4, (8,))
    a = LinearFusionClassifier(2, 3, 5, 4)
    b = LinearFusionClassifier(2, 3, 5, 4)
    b.load_state_dict(a.state_dict())
    lam, lr = 0.05, 0.1
    opt_a = torch.optim.SGD(a.parameters(), lr=lr)
    opt_b = torch.optim.SGD(b.parameters(), lr=lr, weight_decay=2 * lam)
    for _ in range(5):
        loss_a = cross_entropy(a(xt, xi)[0], target) + weight_penalty(a, lam)
        loss_b = cross_entropy(b(xt, xi)[0], target)
        for opt, loss in ((opt_a, loss_a), (opt_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


# --- contrastive loss --------------------------------------------------------

def _reference_contrastive(logits):
    b = logits.shape[0]
    rows = [logsumexp(logits[i]) - logits[i, i] for i in range(b)]
    cols = [logsumexp(logits[:, j]) - logits[j, j] for j in range(b)]
    return (sum(rows) / b + sum(cols) / b) / 2


def test_contrastive_loss_value_and_gradient_equal_a_loop():
    logits = torch.randn(5, 5, dtype=torch.float64) * 2
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours, ref = contrastive_loss_from_logits(a), _reference_contrastive(b)
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("b", [1, 2, 8, 64])
def test_contrastive_loss_is_log_b_at_uniform_logits(b):
    logits = torch.full((b, b), 3.7)
    assert contrastive_loss_from_logits(logits).item() == pytest.approx(math.log(b), abs=1e-6)


def test_info_nce_equals_the_logits_form():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    expected = contrastive_loss_from_logits(math.exp(1.5) * an @ bn.T)
    torch.testing.assert_close(info_nce(a, b, 1.5), expected)
    torch.testing.assert_close(info_nce(3 * a, 0.5 * b, 1.5), expected)                   # scale-free


def test_info_nce_lower_for_aligned_pairs_than_shuffled():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 16, generator=g)
    b = a + 0.3 * torch.randn(32, 16, generator=g)                     # paired: b_i is close to a_i
    shuffled = b[torch.randperm(32, generator=g)]
    aligned, mixed = info_nce(a, b, DEFAULT_LOGIT_SCALE), info_nce(a, shuffled, DEFAULT_LOGIT_SCALE)
    assert aligned < 0.5 < math.log(32) < mixed


def test_gradcheck_info_nce():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(info_nce, (a, b, scale))


def test_contrastive_module_initialisation_and_temperature():
    loss_fn = ContrastiveLoss()
    assert loss_fn.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert DEFAULT_LOGIT_SCALE == pytest.approx(math.log(1 / 0.07)) and MAX_LOGIT_SCALE == pytest.approx(math.log(100))
    assert loss_fn.temperature == pytest.approx(0.07)
    assert [name for name, _ in loss_fn.named_parameters()] == ["logit_scale"]


def test_contrastive_module_clamps_the_scale_at_log_100():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    loss_fn = ContrastiveLoss()
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)                                # far above the cap
    assert loss_fn.temperature == pytest.approx(0.01)
    loss = loss_fn(a, b)
    torch.testing.assert_close(loss, info_nce(a, b, math.log(100)))
    loss.backward()
    assert loss_fn.logit_scale.grad.item() == 0.0                      # clamped: no gradient
    below = ContrastiveLoss()
    below(a, b).backward()
    assert below.logit_scale.grad.item() != 0.0                        # under the cap: learns


# --- errors ------------------------------------------------------------------

def test_cross_entropy_rejects_bad_shapes_and_targets():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=re.escape("logits must be (B, C) with B, C >= 1, got shape (4,)")):
        cross_entropy(torch.randn(4), target)
    with pytest.raises(ValueError, match=re.escape("target must be (B,) = (4,) to match logits (4, 3), got shape (4, 1)")):
        cross_entropy(logits, target[:, None])
    with pytest.raises(ValueError, match=re.escape("outside [0, 3): min 0, max 3")):
        cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=re.escape("outside [0, 3): min -1, max 2")):
        cross_entropy(logits, torch.tensor([0, -1, 2, 1]))
    with pytest.raises(TypeError, match="target must be an int64 tensor"):
        cross_entropy(logits, target.float())
    with pytest.raises(TypeError, match="logits must be a floating tensor"):
        cross_entropy(logits.long(), target)


def test_cross_entropy_rejects_bad_options():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=re.escape("weight must be a tensor (C,) = (3,), got shape (4,)")):
        cross_entropy(logits, target, weight=torch.ones(4))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=re.escape(f"label_smoothing must be a number in [0, 1), got {bad}")):
            cross_entropy(logits, target, label_smoothing=bad)
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(logits, target, reduction="avg")


def test_logsumexp_rejects_integer_tensors():
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        logsumexp(torch.arange(3))


def test_linear_fusion_classifier_rejects_wrong_inputs():
    model = LinearFusionClassifier(3, 5, 4, 6)
    with pytest.raises(ValueError, match=re.escape("text_features must be (B, 3), got shape (2, 4)")):
        model(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match=re.escape("image_features must be (B, 5), got shape (2, 5, 1)")):
        model(torch.randn(2, 3), torch.randn(2, 5, 1))
    with pytest.raises(ValueError, match=re.escape("same batch size, got (2, 3) and (3, 5)")):
        model(torch.randn(2, 3), torch.randn(3, 5))
    with pytest.raises(ValueError, match=re.escape("fused_dim must be a positive int, got 0")):
        LinearFusionClassifier(3, 5, 0, 6)


def test_penalties_reject_bad_input():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=re.escape("fused must be (B, d) with B = 4 as in logits (4, 3), got shape (3, 2)")):
        penalised_loss(logits, torch.randn(3, 2), target, 0.1)
    with pytest.raises(ValueError, match=re.escape("lam must be >= 0, got -1")):
        penalised_loss(logits, torch.randn(4, 2), target, -1)
    with pytest.raises(ValueError, match=re.escape("fused must be (B, d) with B >= 1, got shape (4,)")):
        feature_penalty(torch.randn(4))
    with pytest.raises(ValueError, match=re.escape("lam must be >= 0, got -0.5")):
        weight_penalty(torch.nn.Linear(2, 2), -0.5)


def test_contrastive_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match=re.escape("logits must be square (B, B) with B >= 1, got shape (3, 4)")):
        contrastive_loss_from_logits(torch.randn(3, 4))
    with pytest.raises(ValueError, match=re.escape("a and b must both be (B, D) with B >= 1, got shapes (3, 4) and (3, 5)")):
        info_nce(torch.randn(3, 4), torch.randn(3, 5), 1.0)
    with pytest.raises(ValueError, match="init_logit_scale .* must not exceed max_logit_scale"):
        ContrastiveLoss(init_logit_scale=5.0)
