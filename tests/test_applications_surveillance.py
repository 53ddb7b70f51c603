"""Chapter 11's world, renders and detectors (mmcourse.applications.surveillance)."""
import itertools

import numpy as np
import pytest
import torch

from mmcourse.applications import surveillance as sv
from mmcourse.metrics import average_precision
from mmcourse.utils import seed_everything


@pytest.fixture(scope="module")
def world():
    return sv.surveillance_world()


def _brute_joint(subset):
    """P(observation, abnormal) by summing over events and every observed value, written out by hand."""
    cpts = {"video": np.array(sv.VIDEO_CPT), "audio": np.array(sv.AUDIO_CPT), "text": np.array(sv.LOG_CPT)}
    joint = {}
    for e, prior in enumerate(sv.EVENT_PRIOR):
        ranges = [range(cpts[m].shape[1]) for m in sv.SENSORS]
        for values in itertools.product(*ranges):
            p = prior * np.prod([cpts[m][e, v] for m, v in zip(sv.SENSORS, values)])
            key = tuple(v for m, v in zip(sv.SENSORS, values) if m in subset)
            joint.setdefault(key, np.zeros(2))[int(e > 0)] += p
    return np.array(list(joint.values()))                            # (O, 2)


def _pairs_auroc(s, pos, neg):
    """AUROC over every (positive, negative) pair of observations, ties counted 1/2."""
    total = sum(pos[i] * neg[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
                for i in range(len(s)) for j in range(len(s)))
    return total / (pos.sum() * neg.sum())


def _loop_ap(s, pos, neg, pieces=4000):
    """Area under the precision-recall curve: each tie group taken in small equal slices (random order)."""
    area, tp, fp = 0.0, 0.0, 0.0
    for value in sorted(set(np.round(s, 12)), reverse=True):
        g = np.round(s, 12) == value
        dp, dn = pos[g].sum() / pieces, neg[g].sum() / pieces
        for _ in range(pieces):
            tp, fp = tp + dp, fp + dn
            area += dp * tp / (tp + fp)
    return area / pos.sum()


@pytest.mark.parametrize("subset", [("video",), ("audio", "text"), sv.SENSORS])
def test_bayes_table_equals_brute_force(world, subset):
    joint = _brute_joint(subset)
    s, pos, neg = joint[:, 1] / joint.sum(1), joint[:, 1], joint[:, 0]
    table = world.table(subset)
    assert table.auroc() == pytest.approx(_pairs_auroc(s, pos, neg), abs=1e-12)
    assert table.average_precision() == pytest.approx(_loop_ap(s, pos, neg), abs=1e-3)   # slicing error < 1e-3


def test_bayes_posterior_matches_monte_carlo(world):
    cases = world.sample(200_000, np.random.default_rng(1))
    s = world.posterior(cases, sv.SENSORS)[:, 1]
    y = cases["abnormal"]
    assert y.mean() == pytest.approx(0.25, abs=0.005)                # 3.5 standard errors of a 200k mean
    video = cases["video"]
    for v in range(len(sv.VIDEO)):                                   # P(abnormal | video) against counts
        rows = video == v
        assert y[rows].mean() == pytest.approx(world.posterior(cases, ("video",))[rows, 1][0], abs=0.02)
    assert average_precision(s, y) == pytest.approx(world.table(sv.SENSORS).average_precision(), abs=0.01)


def test_world_design_constraints(world):
    report = sv.bayes_report(world)
    aps = [r["ap"] for r in report.values()]
    assert len(set(np.round(aps, 4))) == len(aps), "every subset's Bayes AP is distinct"
    full = report[sv.SENSORS]["ap"]
    assert full < 0.99
    assert all(report[(m,)]["ap"] < full - 0.05 for m in sv.SENSORS), "no single sensor comes within 0.05"
    assert all(report[a]["ap"] < report[b]["ap"] for a in report for b in report if set(a) < set(b))
    prevalence = 1 - sv.EVENT_PRIOR[0]
    assert 0.2 <= prevalence <= 0.3


def test_frame_views_and_additive_ceiling(world):
    views = sv.frame_view_world()
    video = views.table(("video",)).average_precision()
    assert video == pytest.approx(world.table(("video",)).average_precision(), abs=1e-12)
    assert views.table(("last_frame",)).average_precision() < video - 0.05
    assert views.table(("frame_set",)).average_precision() < video - 0.05
    additive = sv.additive_ceiling(world)
    assert additive["ap"] < world.table(sv.SENSORS).average_precision() - 0.03
    best_pair = max(world.table(s).average_precision() for s in world.subsets() if len(s) == 2)
    assert additive["ap"] > best_pair                                  # three additive sensors beat any two exactly


def _decode_video(clips):
    """The video value of each clip from its frames: per frame the pose (box taller than wide) and the count
    of people (lit columns in runs), matched against FRAME_SCRIPT."""
    lit = (clips[:, :, 0] > 0.5).numpy()                               # (N, T, S, S)
    out = []
    for clip in lit:
        script = []
        for frame in clip:
            rows, cols = frame.any(1), frame.any(0)
            pose = int(rows.sum() < sv.STAND_H)                        # lying: lower than a standing figure
            runs = int(np.sum(np.diff(np.concatenate([[0], cols.astype(int)])) == 1))
            script.append((pose, 1 if pose else runs))
        out.append([name for name, s in sv.FRAME_SCRIPT.items() if list(s) == script])
    return np.array([sv.VIDEO.index(o[0]) if len(o) == 1 else -1 for o in out])


def _decode_audio(waves):
    """The sound of each track from its loudest frequency (quiet: no energy)."""
    spectrum = np.abs(np.fft.rfft(waves.numpy(), axis=1))
    freqs = np.fft.rfftfreq(waves.shape[1], 1 / sv.SAMPLE_RATE)
    peak = freqs[spectrum.argmax(1)]
    centres = {name: np.mean(f) for name, (f, _, _) in sv.SOUNDS.items() if f}
    out = np.array([min(centres, key=lambda n: abs(centres[n] - p)) for p in peak])
    out[spectrum.max(1) < 1e-3] = "quiet"
    return np.array([sv.AUDIO.index(o) for o in out])


def test_renders_keep_every_observed_variable_recoverable(world):
    cases = world.sample(1500, np.random.default_rng(3))
    clips = sv.Clips(cases)
    assert (_decode_video(clips.inputs["video"]) == cases["video"]).mean() >= 0.99
    assert (_decode_audio(clips.inputs["audio"]) == cases["audio"]).mean() >= 0.99
    words = [line.split()[-2:] for line in sv.decode_log(clips.inputs["text"])]
    decoded = np.array([[tuple(w) for w in sv.LOG_WORDS.values()].index(tuple(w)) for w in words])
    assert (decoded == cases["log"]).mean() >= 0.99


def test_shapes_same_seed_and_bad_input(world):
    a, b = sv.make_clips(world, 7, seed=5), sv.make_clips(world, 7, seed=5)
    assert all(torch.equal(a.inputs[m], b.inputs[m]) for m in sv.SENSORS)
    assert a.inputs["video"].shape == (7, sv.FRAMES, 3, sv.IMAGE_SIZE, sv.IMAGE_SIZE)
    assert a.inputs["audio"].shape == (7, sv.AUDIO_SAMPLES) and a.inputs["text"].shape == (7, sv.LOG_LENGTH)
    config = sv.surveillance_config("smoke")
    for pool in sv.POOLS:
        enc = sv.video_encoder(config, pool)
        assert enc(a.inputs["video"]).shape == (7, config.dim)
        assert enc(a.inputs["video"][:1]).shape == (1, config.dim)     # batch 1
    model = sv.detector(config, "late").eval()
    one = {m: x[:1] for m, x in a.inputs.items()}
    assert model(one).shape == (1, 2)
    with pytest.raises(ValueError, match="video"):
        sv.video_encoder(config)(a.inputs["video"][:, 0])             # one frame instead of a clip
    with pytest.raises(ValueError, match="unknown pool"):
        sv.video_encoder(config, "max")
    with pytest.raises(ValueError, match="fusion must be"):
        sv.detector(config, "sum")
    with pytest.raises(ValueError, match="lack the variable"):
        sv.render_audio({"audio": np.zeros(3, np.int64)})


def test_temporal_pool_sees_order_and_mean_does_not():
    f = torch.randn(2, sv.FRAMES, 5)
    reverse = f.flip(1)
    assert torch.allclose(sv.MeanOverFrames()(f), sv.MeanOverFrames()(reverse), atol=1e-6)
    seed_everything(0)
    pool = sv.TemporalConvPool(5)
    assert not torch.allclose(pool(f), pool(reverse))
    by_hand = torch.stack([torch.relu(pool.conv.weight[..., 0] @ f[:, t].T + pool.conv.weight[..., 1] @ f[:, t + 1].T
                                      + pool.conv.bias[:, None]).T for t in range(sv.FRAMES - 1)], 1).amax(1)
    assert torch.allclose(pool(f), by_hand, atol=1e-6)


def test_short_training_lowers_the_loss(world):
    seed_everything(0)
    config = sv.surveillance_config("smoke")
    data = sv.make_clips(world, 256, seed=0)
    model = sv.detector(config, "concat")
    history = sv.fit_detector(model, data, config, "cpu", epochs=3)
    assert history.train_loss[-1] < history.train_loss[0]
    feats = sv.features_of(model, data, "cpu")
    assert set(feats.features) == set(sv.SENSORS) and len(feats) == 256
    pooled = sv.pool_features(model, world, 256, seed=0, device="cpu", chunk=100)    # the same clips, in chunks
    assert all(torch.allclose(pooled.features[m], feats.features[m], atol=1e-5) for m in sv.SENSORS)
    head = sv.fusion_head("concat", feats, config)
    assert head(feats.features).shape == (256, 2)
