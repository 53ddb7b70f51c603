"""mmcourse.frontiers: the target renderer, CORAL, gradient reversal, the adaptation losses, the graph."""
import numpy as np
import pytest
import torch

from mmcourse import frontiers as fr
from mmcourse.data import World, bayes_accuracy

CFG = fr.FrontiersConfig(source=64, target=64, test=64, epochs=3, batch_size=16, dim=8, widths=(4, 4, 4), hidden=8)


def test_render_target_shapes_and_determinism():
    world = fr.target_world()
    s1, a = fr.sample_images(world, 5, 0, fr.DomainShift())
    s2, b = fr.sample_images(world, 5, 0, fr.DomainShift())
    _, src = fr.sample_images(world, 5, 0)
    assert a.shape == (5, 3, 32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.array_equal(s1.label, s2.label) and not np.array_equal(a, src)
    assert fr.sample_images(world, 1, 0, fr.DomainShift())[1].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="uint8"):
        fr.render_target(a.astype(np.float32), fr.DomainShift(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="cast"):
        fr.DomainShift(cast=(1.0, 0.0, 1.0))


def test_coral_loss_matches_a_loop_and_is_zero_for_equal_batches():
    torch.manual_seed(0)
    s, t = torch.randn(10, 3), torch.randn(12, 3) * 2
    cov = lambda x: sum(torch.outer(r - x.mean(0), r - x.mean(0)) for r in x) / (len(x) - 1)
    expected = ((cov(s) - cov(t)) ** 2).sum() / (4 * 9)
    assert torch.allclose(fr.coral_loss(s, t), expected, atol=1e-6)
    assert fr.coral_loss(s, s).item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="two rows"):
        fr.coral_loss(s[:1], t)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        fr.coral_loss(s, t[:, :2])


def test_gradient_reversal_gradcheck():
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    layer = fr.GradientReversal(0.7)
    assert torch.equal(layer(x), x)
    (layer(x) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.4))


def test_domain_losses_fall_and_repeat():
    world = fr.target_world(16)
    scenes, src = fr.sample_images(world, 64, 0)
    _, tgt = fr.sample_images(world, 64, 1, fr.DomainShift())
    data = fr.DomainData(torch.from_numpy(src), torch.from_numpy(scenes.label), torch.from_numpy(tgt))
    finals = []
    for method in fr.METHODS:
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            model = fr.DomainModel(8, CFG.dim, CFG.widths, CFG.hidden)
            history = fr.fit_classifier(model, data, None, CFG, "cpu", loss=fr.AdaptLoss(method, 1.0))
            runs.append(history.train_loss)
        assert runs[0] == runs[1], method                                 # same seed, same numbers
        finals.append(runs[0])
    assert finals[0][-1] < finals[0][0]                                   # the source-only loss falls
    with pytest.raises(ValueError, match="method"):
        fr.AdaptLoss("mmd")


def test_few_shot_rows():
    labels = np.array([0, 1, 0, 1, 0, 1, 2, 2])
    rows = fr.few_shot_rows(labels, 2, 3, 0)
    assert len(rows) == 6 and all((labels[rows] == c).sum() == 2 for c in range(3))
    with pytest.raises(ValueError, match="per_class"):
        fr.few_shot_rows(labels, 3, 3, 0)


def test_graph_and_composition_match_a_loop():
    graph = fr.world_graph()
    assert graph.class_named("ringing wedge") == "ringing triangle"
    assert graph.class_named("muted plus sign") == "muted cross"
    with pytest.raises(ValueError, match="knows no word"):
        graph.class_named("ringing banana")
    torch.manual_seed(0)
    ps, pm = torch.rand(4, 5).softmax(1), torch.rand(4, 4).softmax(1)
    scores = fr.compose_with_graph(graph, ps, pm)
    assert scores.shape == (4, 10)
    for n in range(4):
        for c, name in enumerate(World().class_names):
            family, shape = name.split(" ", 1)
            mats = [m for m, mat in enumerate(("metal", "glass", "wood", "rubber"))
                    if (mat in ("metal", "glass")) == (family == "ringing")]
            expected = torch.log(ps[n, ("circle", "square", "triangle", "cross", "diamond").index(shape)]) \
                + torch.log(pm[n, mats].sum())
            assert torch.allclose(scores[n, c], expected, atol=1e-6)
    assert fr.compose_with_graph(graph, ps[:1], pm[:1]).shape == (1, 10)
    with pytest.raises(ValueError, match="p_shape"):
        fr.compose_with_graph(graph, pm, ps)


def test_bayes_by_class_averages_to_the_course_enumeration():
    world = World()
    per_class = fr.bayes_by_class(world, fr.KG_MODALITIES)
    assert per_class.shape == (10,)
    # uniform classes: the mean of the per-class accuracies is the Bayes accuracy (ties broken at random or not)
    assert per_class.mean() == pytest.approx(bayes_accuracy(world, fr.KG_MODALITIES), abs=1e-9)


def test_rule_and_prior_removal():
    p = torch.tensor([[0.5, 0.5], [0.8, 0.2]])
    q = fr.remove_prior(p, torch.tensor([0.5, 0.5]))
    assert torch.allclose(q, p)
    feats = torch.randn(30, 4)
    labels = (feats[:, 0] > 0).long()
    rule = fr.fit_rule(feats, labels, 2, steps=100)
    assert (rule(feats).argmax(1) == labels).float().mean() > 0.9
    with pytest.raises(ValueError, match="features"):
        fr.fit_rule(feats, labels[:3], 2)


def test_config_profiles():
    assert fr.frontiers_config("smoke").seeds == (0,)
    with pytest.raises(ValueError, match="unknown profile"):
        fr.frontiers_config("nope")
