"""mmcourse.inference: predict() on raw inputs (caption strings, pixels, waveforms) equals the model on a
batch, passes only the given modalities plus a presence mask, and rejects malformed inputs clearly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcourse.adapt import make_downstream_model
from mmcourse.data import WORLD_VOCAB, Tokenizer, World, WorldConfig, generate
from mmcourse.inference import InputSpec, Prediction, accuracy_by_modalities, predict, raw_inputs
from mmcourse.modality import MODALITIES

IMAGE_SIZE = 16   # small images: the CNN image encoder's tokens are then 2 x 2 positions


@pytest.fixture(scope="module")
def test():
    """Six scenes of the downstream task (8 classes), rendered at 16 pixels."""
    return generate(World(WorldConfig(image_size=IMAGE_SIZE, label_rule="size_and_material")), 6, seed=11)


@pytest.fixture(scope="module")
def model(test):
    """An (untrained) downstream model over the three modalities, with the input spec run_pipeline attaches."""
    torch.manual_seed(0)
    model = make_downstream_model(None, num_classes=len(test.class_names)).eval()
    world = World(WorldConfig(image_size=IMAGE_SIZE, label_rule="size_and_material"))
    model.input_spec = InputSpec(world.class_names, IMAGE_SIZE, world.config.audio_samples, world.config.sample_rate)
    return model


@pytest.fixture(scope="module")
def raw(test):
    """The six scenes as raw inputs: caption strings, uint8 HWC pixels, waveforms."""
    return {"captions": WORLD_VOCAB.decode(test.text[:6].numpy()), "images": test.images[:6].permute(0, 2, 3, 1).numpy(),
            "audio": test.audio[:6].numpy()}


def _inputs_seen(model, monkeypatch) -> list[dict]:
    """Record what predict() hands the model: the modality dict and the mask of every call."""
    seen, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda inputs, present=None: seen.append((inputs, present)) or forward(
        inputs, present))
    return seen


def test_only_the_given_modalities_reach_the_model_with_their_mask(model, raw, monkeypatch):
    seen = _inputs_seen(model, monkeypatch)
    out = predict(model, images=raw["images"], audio=raw["audio"], batch_size=4)
    assert [sorted(inputs) for inputs, _ in seen] == [["audio", "image"]] * 2        # no placeholder for the text
    assert [present.tolist() for _, present in seen] == [[[True, True, False]] * 4, [[True, True, False]] * 2]
    assert out.present.tolist() == [[True, True, False]] * 6
    seen.clear()
    predict(model, captions=[None, *raw["captions"][1:]], images=raw["images"])
    (inputs, present), = seen
    assert sorted(inputs) == ["image", "text"] and present[:, MODALITIES.index("audio")].sum() == 0
    assert present[:, MODALITIES.index("text")].tolist() == [False] + [True] * 5


def test_predict_classifies_raw_inputs_like_the_model_on_a_batch(model, test, raw):
    out = predict(model, **raw)
    assert isinstance(out, Prediction) and out.probs.shape == (6, 8) and out.present.all()
    torch.testing.assert_close(out.probs.sum(1), torch.ones(6))
    assert out.labels == [out.class_names[i] for i in out.probs.argmax(1)]
    assert out.class_names == test.class_names
    inputs, _ = test.__getitems__(list(range(6)))
    with torch.no_grad():
        expected = torch.softmax(model.eval()(inputs), 1)
    torch.testing.assert_close(out.probs, expected)                                    # tokenizer round trip too
    floats = predict(model, captions=raw["captions"], images=inputs["image"], audio=torch.from_numpy(raw["audio"]),
                     batch_size=4)
    torch.testing.assert_close(floats.probs, out.probs)                                # float CHW = uint8 HWC / 255
    assert model.training is False


def test_a_missing_modality_is_masked_not_zero_filled(model, raw):
    out = predict(model, images=raw["images"], captions=[raw["captions"][0], None, *raw["captions"][2:]])
    assert out.present[:, MODALITIES.index("audio")].sum() == 0
    assert out.present[:, MODALITIES.index("text")].tolist() == [True, False, True, True, True, True]
    # What the mask marks absent never reaches the output: any values there give the same logits.
    images = torch.from_numpy(raw["images"]).permute(0, 3, 1, 2).float() / 255
    captions = [raw["captions"][0], "a large rubber thing", *raw["captions"][2:]]       # sample 1's caption is masked
    ids = torch.from_numpy(Tokenizer().encode(captions)[0])
    with torch.no_grad():
        other = model({"image": images, "audio": torch.randn(6, 1024), "text": ids}, out.present)
    torch.testing.assert_close(out.probs, torch.softmax(other, 1))
    only_audio = predict(model, audio=raw["audio"])
    assert only_audio.present.tolist() == [[True, False, False]] * 6


@pytest.mark.parametrize("kwargs, error, message", [
    ({}, ValueError, r"needs at least one of captions=, images=, audio= \(got none\)"),
    ({"captions": "a small metal thing"}, TypeError, "captions must be a list of str, got a single str"),
    ({"captions": ["a thing", 3]}, TypeError, r"captions\[1\] must be a str \(or None: missing\), got int"),
    ({"captions": ["a thing", "  "]}, ValueError, r"captions\[1\] is empty"),
    ({"captions": [None, None]}, ValueError, "sample 0 has no modality at all"),
    ({"captions": []}, ValueError, r"empty batch: the inputs hold no sample \(N = 0\)"),
    ({"images": np.zeros((0, 3, 16, 16), np.float32)}, ValueError, r"empty batch"),
    ({"images": [[0.0]]}, TypeError, "images must be a numpy array or a torch tensor, got list"),
    ({"images": np.zeros((3, 16, 16), np.float32)}, ValueError, r"got one image of shape \(3, 16, 16\).*images\[None\]"),
    ({"images": np.zeros((2, 1, 16, 16), np.float32)}, ValueError, r"images must be float \(N, 3, 16, 16\).*\(2, 1, 16, 16\)"),
    ({"images": np.zeros((2, 3, 32, 32), np.float32)}, ValueError, r"got float of shape \(2, 3, 32, 32\)"),
    ({"images": np.zeros((2, 16, 16, 3), np.float32)}, ValueError, r"channels first"),
    ({"images": np.zeros((2, 3, 16, 16), np.int64)}, TypeError, "images must be .* got dtype torch.int64"),
    ({"images": np.full((2, 3, 16, 16), 2.0, np.float32)}, ValueError, r"float images must be in \[0, 1\], got values in \[2, 2\]"),
    ({"images": np.full((2, 3, 16, 16), np.nan, np.float32)}, ValueError, r"images holds NaN or infinite values \(first in sample 0\)"),
    ({"audio": np.zeros((2, 1024), np.int16)}, TypeError, r"audio must be float waveforms .* dtype torch.int16 \(16-bit PCM"),
    ({"audio": np.zeros((2, 500), np.float32)}, ValueError, r"audio must be float waveforms \(N, 1024\) at 8000 Hz, got shape \(2, 500\)"),
    ({"audio": np.zeros(1024, np.float32)}, ValueError, r"got one waveform of shape \(1024,\)"),
    ({"audio": np.array([[0.0] * 1023 + [np.inf]] * 2, np.float32)}, ValueError, r"audio holds NaN or infinite values"),
    ({"audio": np.zeros((2, 1024), np.float32), "captions": ["a thing"] * 3}, ValueError,
     r"same number of samples N, got audio: 2, captions: 3"),
    ({"audio": np.zeros((2, 1024), np.float32), "batch_size": 0}, ValueError, "batch_size must be a positive int"),
])
def test_predict_rejects_malformed_inputs_clearly(model, kwargs, error, message):
    with pytest.raises(error, match=message):
        predict(model, **kwargs)


def test_predict_needs_to_know_the_inputs(model):
    with pytest.raises(ValueError, match="pass spec=InputSpec"):
        predict(torch.nn.Linear(2, 2), captions=["a thing"])
    spec = InputSpec(model.input_spec.class_names, 16, 1024, 8000)
    assert predict(model, captions=["a large rubber thing"], spec=spec).probs.shape == (1, 8)




def test_raw_inputs_are_the_scenes_as_predict_takes_them(test):
    raw = raw_inputs(test, 4)
    assert raw["captions"] == WORLD_VOCAB.decode(test.text[:4].numpy())
    assert raw["images"].dtype == np.uint8 and raw["images"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert raw["audio"].shape == (4, test.audio.shape[1])
    with pytest.raises(ValueError, match=r"n must be at most len\(dataset\) = 6, got 7"):
        raw_inputs(test, 7)


def test_accuracy_by_modalities_scores_predict_with_only_the_given_modalities(model, test, monkeypatch):
    subsets = [MODALITIES, ("audio",), ("image", "text")]
    seen = _inputs_seen(model, monkeypatch)
    got = accuracy_by_modalities(model, test, subsets, 6)
    assert list(got) == subsets
    assert [tuple(sorted(inputs)) for inputs, _ in seen] == subsets
    raw = raw_inputs(test, 6)
    for subset, names in zip(subsets, [("captions", "images", "audio"), ("audio",), ("images", "captions")]):
        expected = (predict(model, **{k: raw[k] for k in names}).probs.argmax(1) == test.labels[:6]).float().mean()
        assert got[subset] == pytest.approx(float(expected), abs=0.0)
    with pytest.raises(ValueError, match="non-empty tuple of names from"):
        accuracy_by_modalities(model, test, [("sound",)], 6)
