"""Stage 3: adapters, prompt tuning, the methods, the downstream task's data."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from mmcourse.adapt import (Adapted, Adapter, PromptTuning, add_adapters, add_lora, add_prompts,
                            downstream_data, downstream_world, few_shot, fine_tune_classifier, last_layers,
                            lora_parameters, make_downstream_model, merge_lora, prepare, train_adapted)
from mmcourse.config import METHODS, stage3_config
from mmcourse.data import bayes_table, generate, make_loader
from mmcourse.data.world import SIZE_AND_MATERIAL
from mmcourse.encoders import MeanPoolTextEncoder, TransformerTextEncoder, UnimodalClassifier
from mmcourse.models import count_parameters
from mmcourse.pretrain import make_contrastive_model
from mmcourse.training import TrainConfig, train


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))


def grads_of(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def batch():
    world = downstream_world("smoke")
    data = generate(world, 64, seed=3)
    return next(iter(make_loader(data, 16)))


# ----------------------------------------------------------------------------- LoRA

def test_lora_with_zero_b_leaves_outputs_unchanged_and_only_lora_gets_gradients():
    net, x = small_net().eval(), torch.randn(4, 3, 4, 4)
    before = net(x)
    names = add_lora(net, rank=2)
    assert names == ["0", "4", "6"]
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    net.requires_grad_(False)
    for p in lora_parameters(net):
        p.requires_grad_(True)
    got = grads_of(net, x)
    assert got and all(n.endswith((".A", ".B")) for n in got)
    assert {f"{i}.parametrizations.weight.0.{m}" for i in (0, 4, 6) for m in "AB"} == got


def test_lora_weight_equals_the_low_rank_update_written_out():
    torch.manual_seed(1)
    layer = nn.Linear(6, 4)
    w0 = layer.weight.detach().clone()
    add_lora(layer, rank=3, alpha=6.0, targets=[""])
    lora = layer.parametrizations.weight[0]
    with torch.no_grad():
        lora.B.normal_()
    x = torch.randn(5, 6)
    expected = x @ (w0 + 2.0 * lora.B @ lora.A).T + layer.bias
    torch.testing.assert_close(layer(x), expected)
    assert not layer.parametrizations.weight.original.requires_grad


def test_lora_on_a_convolution_and_merge_gives_plain_layers_with_equal_outputs():
    net, x = small_net().eval(), torch.randn(2, 3, 4, 4)
    add_lora(net, rank=2)
    with torch.no_grad():
        for p in lora_parameters(net):
            p.normal_(std=0.1)
    adapted = net(x)
    merge_lora(net)
    assert not lora_parameters(net)
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in (net[0], net[4], net[6]))
    torch.testing.assert_close(net(x), adapted, rtol=1e-5, atol=1e-6)
    assert not net[0].weight.requires_grad     # the merged weight stays frozen like the original


def test_lora_survives_deepcopy_and_state_dict_round_trip():
    net = small_net()
    add_lora(net, rank=2)
    with torch.no_grad():
        for p in lora_parameters(net):
            p.normal_()
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(twin.eval()(x), net.eval()(x))
    fresh = small_net()
    add_lora(fresh, rank=2)
    fresh.load_state_dict(net.state_dict())
    torch.testing.assert_close(fresh.eval()(x), net(x))


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank must be a positive int"),
    (dict(targets=["nope"]), "no submodule 'nope'"),
    (dict(targets=["2"]), "'2' \\(ReLU\\) has no weight matrix"),
    (dict(targets="0"), "must be a list of module names"),
])
def test_add_lora_rejects_bad_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        add_lora(small_net(), **kwargs)


def test_add_lora_twice_on_the_same_layer_is_refused():
    net = small_net()
    add_lora(net, targets=["0"])
    with pytest.raises(ValueError, match="already has a parametrized weight"):
        add_lora(net, targets=["0"])
    assert add_lora(net) == ["4", "6"]                   # the default skips adapted layers


# ----------------------------------------------------------------------------- adapters

def test_adapter_starts_as_identity_and_only_adapters_get_gradients():
    net, x = small_net().eval(), torch.randn(3, 3, 4, 4)
    before = net(x)
    assert add_adapters(net, ["0", "4"], bottleneck=4) == ["0", "4"]
    assert isinstance(net[0], Adapted) and net[0].adapter.channel_dim == 1 and net[4].adapter.dim == 16
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    net.requires_grad_(False)
    for m in (net[0].adapter, net[4].adapter):
        m.requires_grad_(True)
    got = grads_of(net, x)
    assert got and all(".adapter." in n for n in got)
    assert any(n.endswith("up.weight") for n in got)


def test_adapter_applies_to_the_first_element_of_a_tuple_output():
    class Pair(nn.Module):
        out_dim = 4

        def forward(self, x):
            return x, x.sum()

    wrapped = Adapted(Pair(), Adapter(4, 2))
    with torch.no_grad():
        wrapped.adapter.up.weight.fill_(1.0)
    x = torch.randn(2, 3, 4)
    h, total = wrapped(x)
    assert h.shape == x.shape and not torch.equal(h, x) and torch.equal(total, x.sum())
    assert wrapped.out_dim == 4


def test_adapter_errors_name_the_problem():
    with pytest.raises(ValueError, match="bottleneck must be a positive int"):
        Adapter(8, 0)
    with pytest.raises(ValueError, match="expects 8 features along dim -1, got shape \\(2, 5\\)"):
        Adapter(8)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="cannot tell the output width of '2'"):
        add_adapters(small_net(), ["2"])
    assert add_adapters(small_net(), ["2"], dims={"2": 8}) == ["2"]


# ----------------------------------------------------------------------------- prompts

def test_prompts_keep_token_outputs_aligned_and_only_prompts_get_gradients():
    torch.manual_seed(0)
    enc = TransformerTextEncoder(vocab_size=20, dim=16, heads=2, layers=1)
    ids = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0]])
    feats, mask = enc.tokens(ids)
    assert add_prompts(enc, n_tokens=3) == [""]
    assert isinstance(enc.prompt, PromptTuning) and enc.prompt.prompts.shape == (3, 16)
    prompted, mask2 = enc.tokens(ids)
    assert prompted.shape == feats.shape and torch.equal(mask2, mask)
    assert not torch.allclose(prompted, feats)            # the prompts do steer the tokens
    enc.requires_grad_(False)
    enc.prompt.requires_grad_(True)
    enc.zero_grad()
    enc(ids).sum().backward()
    assert {n for n, p in enc.named_parameters() if p.grad is not None} == {"prompt.prompts"}


def test_prompt_tuning_on_a_model_without_token_encoders_is_refused():
    with pytest.raises(ValueError, match="no token encoder with a `prompt` slot"):
        add_prompts(small_net())
    with pytest.raises(ValueError, match="expected x \\(B, L, 4\\) and mask \\(B, L\\)"):
        PromptTuning(2, 4).prepend(torch.randn(1, 3, 5), torch.ones(1, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- prepare

def downstream(seed=0):
    torch.manual_seed(seed)
    return make_downstream_model(make_contrastive_model(), SIZE_AND_MATERIAL.num_classes)


def test_every_method_trains_the_head_and_reports_what_it_trains(batch):
    inputs, _ = batch
    head = sum(p.numel() for n, p in downstream().named_parameters() if not n.startswith("encoders."))
    full = sum(p.numel() for p in downstream().parameters())
    reports = {}
    for method in METHODS[:-1]:
        model = downstream().eval()
        before = model(inputs)
        report = prepare(model, method)
        reports[method] = report
        assert report.method == method and report.trainable == count_parameters(model, trainable_only=True)
        assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("encoders."))
        if method != "top_layers":            # LoRA, adapters: exactly the pretrained function at the start
            torch.testing.assert_close(model.eval()(inputs), before, rtol=1e-5, atol=1e-6)
    assert reports["linear_probe"].trainable == head
    assert reports["full"].trainable == full == reports["full"].total
    top = sum(p.numel() for n, p in downstream().encoders.named_parameters()
              if n.startswith(("audio.project.", "image.project.", "text.mlp.2.")))
    assert reports["top_layers"].trainable == head + top
    lora = downstream()
    prepare(lora, "lora", rank=4)
    assert reports["lora"].trainable == head + sum(p.numel() for p in lora_parameters(lora))
    assert reports["adapters"].added == ("audio", "image", "text")
    assert head < reports["lora"].trainable < reports["full"].trainable


def test_prompt_method_on_a_bag_of_words_model_says_why_it_cannot():
    with pytest.raises(ValueError, match="bag-of-words or CNN encoder has nowhere to put prompt tokens"):
        prepare(downstream(), "prompt")


def test_frozen_batchnorm_keeps_its_running_statistics_while_the_model_trains(batch):
    model = downstream()
    prepare(model, "lora", rank=2)
    bn = model.encoders["image"].blocks[0][1]
    stats = bn.running_mean.clone()
    model.train()
    loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
    loss.backward()
    assert torch.equal(bn.running_mean, stats)
    full = downstream()
    prepare(full, "full")
    full.train()(batch[0])
    assert not torch.equal(full.encoders["image"].blocks[0][1].running_mean, stats)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="finetune"), "unknown method 'finetune'; valid: linear_probe, top_layers"),
    (dict(method="full", backbone="towers"), "backbone: FusionModel has no submodule 'towers'"),
    (dict(method="top_layers", top=["image.nope"]), "top: ModuleDict has no submodule 'image.nope'"),
])
def test_prepare_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare(downstream(), **kwargs)


def test_prepare_refuses_a_model_prepared_before():
    model = downstream()
    prepare(model, "linear_probe")
    with pytest.raises(ValueError, match="already prepared for 'linear_probe'"):
        prepare(model, "lora")


def test_last_layers_are_the_top_of_each_encoder():
    assert last_layers(downstream().encoders) == ["audio.project", "image.project", "text.mlp.2"]


def test_lora_training_changes_only_lora_and_head_and_the_loss_falls(batch):
    model = downstream()
    prepare(model, "lora", rank=2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    history = train(model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), [batch] * 10,
                    TrainConfig(epochs=3, lr=1e-2, progress=False), "cpu")
    assert history.train_loss[-1] < history.train_loss[0]
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_linear_probe_head_is_one_linear_layer():
    model = downstream()
    assert isinstance(model.head, nn.Linear) and len(model.fusion.mlp) == 0
    assert model.head.in_features == 3 * 64 + 3


def test_downstream_model_copies_the_stage1_encoders():
    stage1 = make_contrastive_model()
    model = make_downstream_model(stage1, 8)
    with torch.no_grad():
        model.encoders["text"].embedding.weight.add_(1.0)
    assert not torch.equal(model.encoders["text"].embedding.weight, stage1.encoders["text"].embedding.weight)
    with pytest.raises(TypeError, match="stage1 must have an nn.ModuleDict .encoders"):
        make_downstream_model(nn.Linear(2, 2), 8)


def _placements(model: nn.Module) -> set[tuple[str, torch.dtype]]:
    return {(p.device.type, p.dtype) for p in model.parameters()}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "prompt"])
@pytest.mark.parametrize("device, dtype", [("cpu", torch.float64), ("meta", torch.float32)])
def test_what_prepare_adds_is_created_where_the_model_is(method, device, dtype):
    # Before: adapters were float32 on the CPU whatever the model, so chapter 08's adapters could not run on a GPU.
    # No GPU here: float64 shows that the dtype follows, the meta device that the device follows.
    stage1 = make_contrastive_model().to(device=device, dtype=dtype)
    model = make_downstream_model(stage1, SIZE_AND_MATERIAL.num_classes)
    assert _placements(model) == {(device, dtype)}                       # the new head too
    report = prepare(model, method)
    assert _placements(model) == {(device, dtype)}, report
    if method in ("lora", "adapters"):
        added = lora_parameters(model) if method == "lora" else [p for n, p in model.named_parameters()
                                                                  if ".adapter." in n]
        assert added and {(p.device.type, p.dtype) for p in added} == {(device, dtype)}


@pytest.mark.parametrize("method", ["lora", "adapters"])
def test_an_adapted_float64_model_runs_in_float64(method):
    net = small_net().double()
    prepare(net, method, backbone="", adapter_targets=["0", "4"])
    out = net(torch.randn(2, 3, 4, 4, dtype=torch.float64))              # (B, 5)
    assert out.dtype == torch.float64 and out.shape == (2, 5)


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float64), ("meta", torch.float32)])
def test_prompts_are_created_where_the_token_encoder_is(device, dtype):
    enc = TransformerTextEncoder(dim=16, layers=1, heads=2).to(device=device, dtype=dtype)
    add_prompts(enc, n_tokens=3)
    assert (enc.prompt.prompts.device.type, enc.prompt.prompts.dtype) == (device, dtype)
    adapter = Adapter(4, 2, device=device, dtype=dtype)
    assert _placements(adapter) == {(device, dtype)}


def test_downstream_model_seed_fixes_the_new_layers_and_leaves_the_global_generator_alone():
    stage1 = make_contrastive_model()
    torch.manual_seed(1)
    a = make_downstream_model(stage1, 8, layers=1, seed=3)
    after_a = torch.random.get_rng_state()
    torch.manual_seed(2)
    b = make_downstream_model(stage1, 8, layers=1, seed=3)
    c = make_downstream_model(stage1, 8, layers=1, seed=4)
    torch.manual_seed(1)
    assert torch.equal(torch.random.get_rng_state(), after_a)            # the seeded call drew nothing globally
    new = [n for n in a.state_dict() if not n.startswith("encoders.")]
    assert new and all(torch.equal(a.state_dict()[n], b.state_dict()[n]) for n in new)
    assert not torch.equal(a.head.weight, c.head.weight)
    scratch = [make_downstream_model(None, 8, seed=5) for _ in range(2)]  # fresh encoders come from the seed too
    assert all(torch.equal(v, scratch[1].state_dict()[k]) for k, v in scratch[0].state_dict().items())
    with pytest.raises(TypeError, match="seed must be an int or None, got float"):
        make_downstream_model(stage1, 8, seed=1.0)


# ----------------------------------------------------------------------------- data

def test_downstream_task_has_its_own_labels_and_exact_bayes_limits():
    world = downstream_world("smoke")
    assert world.class_names == SIZE_AND_MATERIAL.class_names and len(world.class_names) == 8
    table = bayes_table(world)
    expected = {(): 0.125, ("audio",): 0.825, ("image",): 0.25, ("text",): 0.62, ("audio", "image"): 0.85,
                ("audio", "text"): 0.924, ("image", "text"): 0.775, ("audio", "image", "text"): 0.955}
    assert table == pytest.approx(expected, abs=1e-9)


def test_downstream_data_sizes_and_labels():
    data = downstream_data("smoke", 0)
    cfg = stage3_config("smoke")
    assert [len(data[k]) for k in ("train", "dev", "test")] == [cfg.train_size, cfg.dev_size, cfg.test_size]
    s = data["train"].scenes
    assert np.array_equal(data["train"].labels.numpy(), 4 * s.attrs["size"] + s.attrs["material"])


def test_few_shot_takes_exactly_k_per_class_nested_and_seeded():
    data = generate(downstream_world("smoke"), 400, seed=1)
    one, five = few_shot(data, 1, seed=2), few_shot(data, 5, seed=2)
    assert np.bincount(five.labels.numpy(), minlength=8).tolist() == [5] * 8
    assert np.bincount(one.labels.numpy(), minlength=8).tolist() == [1] * 8
    rows = {tuple(r) for r in five.audio[:, :8].tolist()}
    assert all(tuple(r) in rows for r in one.audio[:, :8].tolist())
    assert torch.equal(few_shot(data, 5, seed=2).images, five.images)
    assert not torch.equal(few_shot(data, 5, seed=3).images, five.images)
    with pytest.raises(ValueError, match="has only .* fewer than per_class=400"):
        few_shot(data, 400)
    with pytest.raises(ValueError, match="per_class must be a positive int"):
        few_shot(data, 0)


# ----------------------------------------------------------------------------- training recipes

def _loss_on(model, dataset):
    inputs, labels = next(iter(make_loader(dataset, len(dataset))))
    with torch.no_grad():
        return nn.functional.cross_entropy(model.eval()(inputs), labels).item()


def test_train_adapted_trains_what_prepare_chose_and_the_loss_falls():
    data = generate(downstream_world("smoke"), 96, seed=4)
    stage1 = make_contrastive_model()
    torch.manual_seed(0)                                      # train_adapted's seed: the same fresh head
    before = _loss_on(make_downstream_model(stage1, 8), data)
    model, report, seconds = train_adapted(stage1, "top_layers", data, 30, lr=1e-2, batch_size=32, device="cpu")
    assert report.method == "top_layers" and report.trainable < report.total and seconds > 0
    assert not model.training and _loss_on(model, data) < 0.8 * before
    frozen = dict(stage1.encoders.named_parameters())
    for name, p in model.encoders.named_parameters():   # outside the top layers the stage-1 weights are untouched
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), name
    again, _, _ = train_adapted(stage1, "top_layers", data, 30, lr=1e-2, batch_size=32, device="cpu")
    assert torch.equal(model.head.weight, again.head.weight)                     # same seed, same run


def test_train_adapted_scratch_ignores_stage1_and_trains_everything():
    data = generate(downstream_world("smoke"), 32, seed=5)
    model, report, _ = train_adapted(make_contrastive_model(), "scratch", data, 2, lr=1e-3, batch_size=64,
                                     device="cpu")
    assert report.method == "full" and report.trainable == report.total
    with pytest.raises(ValueError, match="unknown method 'probe'"):
        train_adapted(None, "probe", data, 2, lr=1e-3, batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_adapted(None, "full", data, 0, lr=1e-3, batch_size=8, device="cpu")


def test_fine_tune_classifier_uses_the_head_learning_rate_and_keeps_frozen_weights():
    data = generate(downstream_world("smoke"), 64, seed=6)
    torch.manual_seed(0)
    model = UnimodalClassifier(MeanPoolTextEncoder(), 8)
    prepare(model, "linear_probe", backbone="encoder")
    encoder_before = copy.deepcopy(model.encoder.state_dict())
    start_loss = _loss_on(model, data)
    assert fine_tune_classifier(model, data, 40, lr=1e-4, head_lr=3e-2, batch_size=32, device="cpu") > 0
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert _loss_on(model, data) < 0.9 * start_loss                 # the head learned at its own, larger rate
    slow = UnimodalClassifier(MeanPoolTextEncoder(), 8)
    prepare(slow, "linear_probe", backbone="encoder")
    fine_tune_classifier(slow, data, 40, lr=1e-4, head_lr=1e-6, batch_size=32, device="cpu")
    assert _loss_on(slow, data) > _loss_on(model, data)
    with pytest.raises(TypeError, match="must have .encoder and .head"):
        fine_tune_classifier(nn.Linear(2, 2), data, 1, lr=1e-3, head_lr=1e-3, batch_size=8, device="cpu")
