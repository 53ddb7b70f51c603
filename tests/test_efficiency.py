"""Chapter 14's helpers: settings, int8 quantisation, pruning, distillation, timing (all on tiny models)."""
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse import efficiency as eff
from mmcourse.config import PROFILES
from mmcourse.data.text import PAD_ID
from mmcourse.models import count_parameters

TINY = eff.architecture((4, 4, 4), 16, 16)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return eff.build_model(TINY).eval()


def tiny_batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 30, (b, 7), generator=g)
    text[:, 4:] = PAD_ID                                    # padded captions
    text[0, 1:] = PAD_ID                                    # one of a single token
    return {"audio": torch.randn(b, 1024, generator=g), "image": torch.rand(b, 3, 32, 32, generator=g), "text": text}


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_has_settings_and_a_quarter_size_student(name):
    config = eff.efficiency_config(name)
    assert config == eff.efficiency_config(PROFILES[name])
    teacher = count_parameters(eff.build_model(eff.teacher_architecture(config)))
    student = count_parameters(eff.build_model(eff.student_architecture(config)))
    assert 0.2 <= student / teacher <= 0.3


@pytest.mark.parametrize("change, message", [({"prune_fraction": 1.5}, "prune_fraction"), ({"train": 0}, "train"),
                                             ({"few_labels": 10**6}, "few_labels"), ({"lr": 0.0}, "lr")])
def test_bad_settings_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(eff.efficiency_config("smoke"), **change)


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError):
        eff.efficiency_config("huge")


# ----------------------------------------------------------------------------- int8

def test_per_channel_quantisation_matches_a_row_by_row_reference():
    torch.manual_seed(0)
    w = torch.randn(6, 9) * torch.logspace(-2, 1, 6)[:, None]      # rows of very different magnitudes
    q, scale = eff.quantize_per_channel(w)
    for o in range(6):                                               # reference: one row at a time
        s = w[o].abs().max() / 127.5
        assert math.isclose(scale[o].item(), s.item(), rel_tol=1e-6)
        assert torch.equal(q[o], torch.clamp(torch.round(w[o] / s), -128, 127).to(torch.int8))
    error = (eff.dequantize_per_channel(q, scale) - w).abs()
    assert (error <= scale[:, None] / 2 + 1e-7).all()               # at most half a step per weight
    assert q.dtype == torch.int8 and q.abs().max() >= 127            # the row maximum uses the range


def test_quantisation_matches_torchao_scales():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(24, 8))
    q, scale = eff.quantize_per_channel(layer[0].weight.detach())
    quantize_(layer, Int8DynamicActivationInt8WeightConfig())
    assert torch.allclose(layer[0].weight.scale.flatten(), scale, rtol=1e-6)
    assert (layer[0].weight.qdata.int() - q.int()).abs().max() <= 1


def test_int8_linear_is_the_integer_product_dequantised_and_close_to_float():
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 16), torch.randn(5, 16), torch.randn(5)
    q, s = eff.quantize_per_channel(w)
    qx, sx = eff.quantize_per_channel(x)
    expected = torch.tensor([[sum(int(qx[i, k]) * int(q[j, k]) for k in range(16)) * sx[i].item() * s[j].item()
                              + b[j].item() for j in range(5)] for i in range(3)])   # loops of Python ints
    out = eff.int8_linear(x, q, s, b)
    assert torch.allclose(out, expected, atol=1e-5)
    assert (out - (x @ w.T + b)).abs().max() < 0.05 * (x @ w.T).abs().max()


def test_quantisation_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="weight must have shape"):
        eff.quantize_per_channel(torch.randn(4))
    with pytest.raises(ValueError, match="int8"):
        eff.dequantize_per_channel(torch.zeros(2, 3, dtype=torch.int32), torch.ones(2))


def test_torch_ao_quantised_bag_sums_and_the_fix_restores_the_mean():
    model = tiny_model()
    ids = tiny_batch()["text"]
    mean = model.encoders.text.embedding(ids)                                    # (B, D)
    raw = eff.quantize_torch_ao(model, fix_mean=False).encoders.text.embedding(ids)
    fixed = eff.quantize_torch_ao(model).encoders.text.embedding(ids)
    count = (ids != PAD_ID).sum(1, keepdim=True).float()                         # (B, 1)
    assert torch.allclose(raw, mean * count, atol=0.05 * (mean * count).abs().max().item())   # the pitfall: a sum
    assert torch.allclose(fixed, mean, atol=0.02 * mean.abs().max().item())                  # the fix: the mean
    assert eff.count_quantized(eff.quantize_torch_ao(model))["EmbeddingBag"] == (1, 1)


def test_quantised_bag_takes_flat_ids_with_offsets_like_the_float_bag():
    model = eff.quantize_torchao(tiny_model())
    bag = model.encoders.text.embedding
    ids = tiny_batch()["text"]
    offsets = torch.arange(len(ids)) * ids.shape[1]
    assert torch.allclose(bag(ids.reshape(-1), offsets), bag(ids), atol=1e-6)


def test_torchao_converts_linear_layers_only_and_the_model_shrinks():
    model = tiny_model()
    q = eff.quantize_torchao(model)
    counts = eff.count_quantized(q)
    assert counts["Linear"][0] == counts["Linear"][1] > 0 and counts["Conv2d"][0] == 0
    assert eff.state_dict_bytes(q) < eff.state_dict_bytes(model)
    batch = tiny_batch()
    with torch.no_grad():
        assert (q(batch) - model(batch)).abs().max() < 0.1 * model(batch).abs().max() + 1e-3


def test_fold_batchnorm_keeps_the_function_and_removes_every_batchnorm():
    model = tiny_model()
    for m in model.modules():                      # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    folded = eff.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(folded(batch), model(batch), atol=1e-5)


def test_drop_unused_attributes_deletes_only_what_the_graph_does_not_read():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.stale = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    gm = torch.fx.symbolic_trace(Two())
    gm.stale = nn.Linear(3, 2)                      # an attribute the graph never reads
    before = eff.state_dict_bytes(gm)
    eff.drop_unused_attributes(gm)
    assert "stale.weight" not in gm.state_dict() and "used.weight" in gm.state_dict()
    assert eff.state_dict_bytes(gm) < before


# ----------------------------------------------------------------------------- pruning

def test_select_channels_keeps_the_largest_l1_norms_in_order():
    w = torch.zeros(5, 2, 3, 3)
    for c, v in enumerate([0.3, 2.0, 0.1, 1.0, 0.5]):
        w[c] = v
    assert eff.select_channels(w, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="keep"):
        eff.select_channels(w, 6)


def test_channel_pruning_with_nothing_pruned_is_the_same_function():
    model = tiny_model()
    same = eff.prune_channels(model, 0.0)
    assert not same.training
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.allclose(same(batch), model(batch), atol=1e-6)


def test_channel_pruning_rebuilds_smaller_layers_of_the_right_shapes():
    model = eff.build_model(eff.architecture((8, 8, 16), 16, 16)).eval()
    pruned = eff.prune_channels(model, 0.5)
    image, audio = pruned.encoders.image, pruned.encoders.audio
    assert [tuple(b[0].weight.shape) for b in image.blocks] == [(4, 3, 3, 3), (4, 4, 3, 3), (8, 4, 3, 3)]
    assert [b[1].num_features for b in image.blocks] == [4, 4, 8]
    assert tuple(image.project.weight.shape) == (16, 8, 1, 1)
    assert tuple(audio.project.weight.shape) == (16, 8) and audio.blocks[0][0].in_channels == 1
    assert count_parameters(pruned) < count_parameters(model)
    assert pruned(tiny_batch()).shape == (5, 10)
    with pytest.raises(ValueError, match="fraction"):
        eff.prune_channels(model, 1.0)


def test_magnitude_pruning_zeroes_weights_but_saves_no_bytes():
    model = tiny_model()
    masked, dense = eff.magnitude_prune(model, 0.5, remove=False), eff.magnitude_prune(model, 0.5)
    assert abs(eff.zero_fraction(dense) - 0.5) < 0.01
    tensor_bytes = lambda m: sum(t.nbytes for t in m.state_dict().values())
    assert tensor_bytes(masked) > 1.5 * tensor_bytes(model)           # weight_orig and weight_mask
    assert tensor_bytes(dense) == tensor_bytes(model)                   # the zeros are stored like any number


# ----------------------------------------------------------------------------- distillation

def test_distillation_loss_equals_the_hand_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6), torch.tensor([0, 5, 2, 1])
    labelled = torch.tensor([True, False, True, False])
    tau, alpha = 3.0, 0.7
    p_t = torch.softmax(t / tau, 1)
    kl = sum((p_t[i] * (p_t[i].log() - torch.log_softmax(s[i] / tau, 0))).sum() for i in range(4)) / 4
    ce = (F.cross_entropy(s[0:1], y[0:1]) + F.cross_entropy(s[2:3], y[2:3])) / 2
    loss = eff.distillation_loss(s, t, y, tau, alpha, labelled)
    assert torch.allclose(loss, tau**2 * kl + alpha * ce, atol=1e-6)
    assert torch.allclose(eff.distillation_loss(s, t, None, tau, alpha), tau**2 * kl, atol=1e-6)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_distillation_loss_is_zero_when_the_student_copies_the_teacher():
    t = torch.randn(3, 5)
    assert eff.distillation_loss(t.clone(), t, None, 2.0, 0.0).abs() < 1e-6


def test_distillation_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="teacher_logits"):
        eff.distillation_loss(torch.randn(3, 5), torch.randn(3, 4), None, 2.0, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        eff.distillation_loss(torch.randn(3, 5), torch.randn(3, 5), None, 0.0, 0.5)


def test_distillation_data_serves_teacher_logits_and_the_label_mask():
    from mmcourse.data import World, make_splits
    from mmcourse.data.dataset import Split

    data = make_splits(World(), Split(train=20, dev=1, test=1), 0)["train"]
    logits, labelled = torch.randn(20, 10), torch.arange(20) < 5
    inputs, labels, extra = eff.DistillationData(data, logits, labelled).__getitems__([3, 7])
    assert torch.equal(extra["teacher"], logits[[3, 7]]) and extra["labelled"].tolist() == [True, False]
    assert torch.equal(labels, data.labels[[3, 7]]) and set(inputs) == {"audio", "image", "text"}
    with pytest.raises(ValueError, match="one row"):
        eff.DistillationData(data, logits[:3], labelled)


# ----------------------------------------------------------------------------- timing

def test_round_robin_timing_alternates_the_variants():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    ticks = itertools.count()
    times = eff.time_round_robin(fns, repeats=3, warmup=1, clock=lambda: float(next(ticks)))
    assert calls == list("abc") * 4                                 # 1 warm-up round, then 3 timed rounds
    assert times == {name: [1.0, 1.0, 1.0] for name in "abc"}       # each call spans one tick of the fake clock
    with pytest.raises(ValueError, match="at least one"):
        eff.time_round_robin({}, repeats=1)


def test_median_latency_runs_on_one_thread_and_restores_the_setting():
    before = torch.get_num_threads()
    seen = []
    out = eff.median_latency({"x": lambda: seen.append(torch.get_num_threads())}, repeats=3, warmup=0)
    assert seen == [1, 1, 1] and torch.get_num_threads() == before and out["x"] >= 0


# ----------------------------------------------------------------------------- the teacher's checkpoint

def test_teacher_is_trained_once_then_loaded_from_its_checkpoint(tmp_path):
    from mmcourse.data import World, make_splits

    config = dataclasses.replace(eff.efficiency_config("smoke"), train=64, dev=8, test=8, epochs=1, few_labels=8,
                                 widths=(4, 4, 4), dim=16, hidden=16)
    data = make_splits(World(), config.split, 0)["train"]
    path = tmp_path / "teacher.pt"
    first = eff.load_teacher(config, data, "cpu", path)
    assert path.is_file()
    second = eff.load_teacher(config, data, "cpu", path)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
