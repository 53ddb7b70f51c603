"""mmcourse.pretrain: the contrastive and masked models, zero-shot prompts, the retrieval ceiling, stage-1 runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mmcourse.config import get_profile, stage1_config
from mmcourse.data import WORLD_VOCAB, Split, make_loader, take
from mmcourse.data.text import PAD_ID, SYNONYMS
from mmcourse.data.world import ATTRIBUTES
from mmcourse.encoders import make_encoder
from mmcourse.metrics import recall_at_k
from mmcourse.pretrain import (MASK_ID, MASKED_PROMPTS, ContrastiveModel, embed_dataset, embed_texts,
                               load_stage1, make_contrastive_model, make_masked_model,
                               mask_tokens, masked_zero_shot_predict, pretrain_stage1, prompts, retrieval_ceiling,
                               stage1_checkpoint, stage1_data, zero_shot_accuracies,
                               zero_shot_classifier, zero_shot_predict)


@pytest.fixture
def batch(small_dataset):
    return next(iter(make_loader(small_dataset, 16)))[0]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return make_contrastive_model(embed_dim=16, dim=16)


# ----------------------------------------------------------------------------- contrastive model

@pytest.mark.parametrize("size", [1, 16])
def test_embeddings_are_unit_vectors_of_width_e(model, batch, size):
    z = model.embed({k: v[:size] for k, v in batch.items()})
    assert list(z) == ["audio", "image", "text"] == list(model.encoders)
    for m, e in z.items():
        assert e.shape == (size, 16), m
        assert torch.allclose(e.norm(dim=1), torch.ones(size), atol=1e-5)


def test_loss_is_the_mean_of_one_info_nce_per_pair_with_text_as_hub(model, batch):
    out = model.loss(batch)
    assert model.pairs == (("audio", "text"), ("image", "text"))
    assert set(out) == {"loss", "audio-text", "image-text"}
    z = model.embed(batch)
    scale = torch.tensor(1 / 0.07)
    for (a, b) in model.pairs:                         # reference: CLIP's loss written out
        logits = scale * z[a] @ z[b].T
        target = torch.arange(len(logits))
        expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        assert torch.allclose(out[f"{a}-{b}"], expected, atol=1e-5)
    assert torch.allclose(out["loss"], (out["audio-text"] + out["image-text"]) / 2)


def test_batch_of_one_gives_zero_loss(model, batch):
    with torch.no_grad():
        out = model.loss({k: v[:1] for k, v in batch.items()})
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)   # one candidate: nothing to tell apart


def test_every_parameter_receives_a_gradient(model, batch):
    model.loss(batch)["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_fixed_temperature_is_not_trained(batch):
    model = make_contrastive_model(embed_dim=16, dim=16, audio=None, temperature=0.5, learn_temperature=False)
    assert model.pairs == (("image", "text"),)
    assert model.temperatures == {"image-text": pytest.approx(0.5)}
    model.loss(batch)["loss"].backward()
    assert model.losses["image-text"].logit_scale.grad is None


def test_pairs_without_text_default_to_every_pair():
    encoders = {"audio": make_encoder("audio", "cnn", dim=8), "image": make_encoder("image", "cnn", dim=8)}
    assert ContrastiveModel(encoders, 8).pairs == (("audio", "image"),)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(pairs=[("image", "sound")]), ValueError, r"two different modalities of \['audio', 'image', 'text'\]"),
    (dict(pairs=[("text", "text")]), ValueError, "two different modalities"),
    (dict(pairs=[]), ValueError, "pairs is empty"),
    (dict(embed_dim=0), ValueError, "embed_dim must be a positive int"),
    (dict(temperature=0.001), ValueError, "temperature must be >= 0.01"),
])
def test_bad_construction_raises(kwargs, error, message):
    encoders = {m: make_encoder(m, f, dim=8) for m, f in (("audio", "cnn"), ("image", "cnn"), ("text", "mean_pool"))}
    with pytest.raises(error, match=message):
        ContrastiveModel(encoders, **{"embed_dim": 8, **kwargs})


def test_bad_inputs_name_the_problem(model, batch):
    with pytest.raises(ValueError, match=r"inputs have no 'audio' entry \(keys: \['image', 'text'\]\)"):
        model.embed({"image": batch["image"], "text": batch["text"]})
    with pytest.raises(ValueError, match=r"no 'depth' encoder"):
        model.embed(batch, ["depth"])
    with pytest.raises(ValueError, match=r"same batch size B, got \{'audio': 16, 'image': 16, 'text': 4\}"):
        model.loss({**batch, "text": batch["text"][:4]})
    with pytest.raises(TypeError, match=r"encoders\['image'\] must be an mmcourse.encoders.Encoder"):
        ContrastiveModel({"image": torch.nn.Linear(2, 2), "text": make_encoder("text", "mean_pool")})


# ----------------------------------------------------------------------------- masked modelling

def test_mask_tokens_hides_only_real_tokens_and_at_least_one_per_caption(small_dataset):
    ids = small_dataset.text[:500]
    masked, targets = mask_tokens(ids, 0.15, torch.Generator().manual_seed(0))
    hidden = targets != -100
    real = ids != PAD_ID
    assert not (hidden & ~real).any()
    assert hidden[real.any(1)].any(1).all()                            # every caption teaches something
    assert torch.equal(masked[hidden], torch.full((int(hidden.sum()),), MASK_ID))
    assert torch.equal(masked[~hidden], ids[~hidden]) and torch.equal(targets[hidden], ids[hidden])
    assert 0.13 < hidden.sum() / real.sum() < 0.22                      # 15 % plus the forced ones
    with pytest.raises(ValueError, match=r"ids must be token ids \(B, L\), got torch.float32 of shape \(3,\)"):
        mask_tokens(torch.zeros(3), 0.3)
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\]"):
        mask_tokens(ids, 0.0)


@pytest.mark.parametrize("size", [1, 8])
def test_masked_model_shapes_and_the_image_gets_gradients(batch, size):
    torch.manual_seed(0)
    mlm = make_masked_model(dim=16, heads=2, layers=1)
    inputs = {k: v[:size] for k, v in batch.items()}
    logits = mlm(inputs["image"], inputs["text"])
    assert logits.shape == (size, inputs["text"].shape[1], mlm.head.out_features)
    out = mlm.loss(inputs)
    assert set(out) == {"loss", "masked_accuracy"} and out["loss"].dim() == 0
    out["loss"].backward()
    grads = [p.grad for p in mlm.encoders["image"].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads), "the image encoder must learn from the loss"
    with pytest.raises(ValueError, match=r"same batch size, got \(8, 3, 32, 32\) and \(2, "):
        mlm(batch["image"][:8], batch["text"][:2])


def test_masked_zero_shot_equals_a_loop_over_the_synonyms_probabilities(batch):
    torch.manual_seed(0)
    mlm = make_masked_model(dim=16, heads=2, layers=1).eval()
    images = batch["image"][:6]
    predicted = masked_zero_shot_predict(mlm, images, "colour", batch_size=4)     # two chunks
    ids = torch.tensor([[WORLD_VOCAB.stoi["a"], MASK_ID, WORLD_VOCAB.stoi["thing"]]])
    for i in range(6):
        with torch.no_grad():
            p = torch.softmax(mlm(images[i:i + 1], ids)[0, 1], -1)               # (V,) at the blank
        scores = [sum(float(p[WORLD_VOCAB.stoi[w]]) for w in SYNONYMS["colour"][v] if " " not in w)
                  for v in ATTRIBUTES["colour"]]
        assert predicted[i] == int(np.argmax(scores)), i
    assert set(MASKED_PROMPTS) == {"shape", "colour", "size"}
    with pytest.raises(ValueError, match="attribute must be one of"):
        masked_zero_shot_predict(mlm, images, "position")


# ----------------------------------------------------------------------------- zero-shot

def test_prompts_fill_one_slot_with_every_synonym():
    assert prompts("colour", "red", ["a {colour} {shape}"]) == ["a red thing", "a crimson thing", "a bright red thing"]
    assert prompts("position", "top left", ["a {shape} {position}"], synonyms=1) == ["a thing in the top left"]
    assert prompts("shape", "cross", ["there is a {size} {shape}"]) == ["there is a cross", "there is a plus sign"]
    assert len(prompts("size", "small")) == 4 * 3                     # the 4 grammar templates x 3 synonyms


@pytest.mark.parametrize("args, message", [
    (("weight", "heavy"), "unknown attribute 'weight'"),
    (("colour", "pink"), "unknown colour 'pink'"),
    (("colour", "red", ["a {shape}"]), r"template 'a \{shape\}' has no \{colour\} slot"),
    (("colour", "red", "a {colour}"), "templates must be a non-empty list"),
])
def test_prompts_reject_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        prompts(*args)


def test_zero_shot_equals_an_explicit_argmax_over_prompt_similarities(model, small_dataset):
    model.eval()
    data = small_dataset
    z = embed_dataset(model, data, "cpu")
    templates = ["a {colour} {shape}", "look , a {colour} {shape}"]
    classifier = zero_shot_classifier(model, "colour", templates)
    predicted = zero_shot_predict(z["image"][:50], classifier)
    for i in range(50):                                                # the reference: loops
        best, best_score = None, -np.inf
        for v, value in enumerate(ATTRIBUTES["colour"]):
            vectors = [embed_texts(model, [p])[0] for p in prompts("colour", value, templates)]
            mean = sum(vectors) / len(vectors)
            score = float(z["image"][i] @ (mean / mean.norm()))
            if score > best_score:
                best, best_score = v, score
        assert predicted[i] == best, i
    accs = zero_shot_accuracies(model, data, "cpu", embeddings=z)
    assert set(accs) == {"shape", "colour", "size", "position", "material", "material, all clips"}
    struck = data.scenes.events["audio.strike"]
    pred = zero_shot_predict(z["audio"], zero_shot_classifier(model, "material")).numpy()
    assert accs["material"] == pytest.approx((pred == data.scenes.attrs["material"])[struck].mean())


def test_zero_shot_predict_rejects_mismatched_widths():
    with pytest.raises(ValueError, match=r"embeddings must be \(N, E\) and classifier \(V, E\) with the same E, "
                                         r"got \(4, 8\) and \(3, 16\)"):
        zero_shot_predict(torch.ones(4, 8), torch.ones(3, 16))


# ----------------------------------------------------------------------------- retrieval ceiling

def _ideal_scores(world, scenes) -> np.ndarray:
    """Posterior odds that caption j belongs to image i, by loops over pairs and attributes."""
    named, shown = world.visible(scenes, "text"), world.visible(scenes, "image")
    n = len(scenes)
    s = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            for a in ATTRIBUTES:
                if a in shown and shown[a][i] and named[a][j]:
                    same = scenes.attrs[a][i] == scenes.attrs[a][j]
                    s[i, j] *= len(ATTRIBUTES[a]) if same else 0.0
    return s


def test_retrieval_ceiling_is_the_mean_recall_of_the_ideal_ranker_with_random_tie_breaks(world, small_dataset):
    scenes = small_dataset.scenes[:40]
    scores = _ideal_scores(world, scenes)
    rng = np.random.default_rng(0)
    runs = {"image->text": [], "text->image": []}
    for _ in range(400):                       # jitter < 1 breaks ties at random and keeps every strict order
        jitter = scores + rng.random(scores.shape) * 0.5
        runs["image->text"].append(recall_at_k(jitter, (1, 5)))
        runs["text->image"].append(recall_at_k(jitter.T, (1, 5)))
    ceiling = retrieval_ceiling(world, scenes, (1, 5))
    for direction, draws in runs.items():
        for k in (1, 5):
            assert ceiling[direction][k] == pytest.approx(np.mean([d[k] for d in draws]), abs=0.01), (direction, k)
    assert ceiling["image->text"][1] < ceiling["image->text"][5] <= 1


def test_take_keeps_the_first_scenes_and_their_attributes(small_dataset):
    head = take(small_dataset, 7)
    assert len(head) == 7 and len(head.scenes) == 7
    assert torch.equal(head[3][0]["image"], small_dataset[3][0]["image"])
    assert np.array_equal(head.scenes.attrs["shape"], small_dataset.scenes.attrs["shape"][:7])
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        take(small_dataset, 0)


# ----------------------------------------------------------------------------- stage-1 runs

def test_pretraining_lowers_the_loss_and_the_checkpoint_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path))
    profile = get_profile("smoke", split=Split(train=512, dev=128, test=64))
    assert stage1_config(profile).train_size == 512
    path = stage1_checkpoint(profile, 3)
    assert path == tmp_path / "checkpoints" / "stage1_smoke_seed3.pt" and not path.exists()
    torch.manual_seed(0)
    model, history = pretrain_stage1(profile, 3, "cpu", progress=False)
    assert path.is_file() and not model.training
    assert history.train_loss[-1] < history.train_loss[0], history.train_loss
    assert set(history.metrics) >= {"dev_zero_shot", "dev_recall1", "train_image-text", "train_audio-text"}
    loaded = load_stage1(profile, 3, "cpu")
    assert not loaded.training and list(loaded.encoders) == ["audio", "image", "text"]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # aligned pairs score better than shuffled ones once trained
    inputs = next(iter(make_loader(stage1_data(profile, 3)["train"], 128)))[0]
    with torch.no_grad():
        aligned = model.loss(inputs)["image-text"]
        shuffled = model.loss({**inputs, "text": inputs["text"].roll(1, 0)})["image-text"]
    assert aligned < shuffled
    path.unlink()                                    # no checkpoint: load_stage1 trains one
    again = load_stage1(profile, 3, "cpu")
    assert path.is_file() and isinstance(again, ContrastiveModel)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), f"{name}: the same seed must give the same stage-1 weights"
