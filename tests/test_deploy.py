"""mmcourse.deploy: a bundle gives back the same logits and refuses another version or half-written weights;
exports run any batch and agree with the eager model; ONNX ignores the values of absent modalities."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from mmcourse import deploy
from mmcourse.data.text import WORLD_VOCAB
from mmcourse.deploy import (BUNDLE_VERSION, OnnxModel, export_onnx, export_program, load_bundle, load_program,
                             save_bundle)
from mmcourse.efficiency import build_model
from mmcourse.inference import InputSpec
from mmcourse.modality import MODALITIES

# Small inputs keep the exports fast: 16-pixel images, 256-sample clips, 8-wide encoders.
SPEC = InputSpec(tuple(f"class {i}" for i in range(4)), image_size=16, audio_samples=256, sample_rate=8000)
ARCH = {"encoders": {"audio": {"family": "cnn", "dim": 8, "widths": [4, 8]},
                     "image": {"family": "cnn", "dim": 8, "widths": [4, 8]},
                     "text": {"family": "bag", "dim": 8}},
        "fusion": {"name": "concat", "hidden": 16}, "num_classes": 4}


def batch(b: int, tokens: int = 5, seed: int = 0):
    """Random inputs {name: (b, ...)} and a presence mask (b, 3) with at least one modality per sample."""
    g = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(b, SPEC.audio_samples, generator=g),
              "image": torch.rand(b, 3, SPEC.image_size, SPEC.image_size, generator=g),
              "text": torch.randint(0, len(WORLD_VOCAB), (b, tokens), generator=g)}
    present = torch.rand(b, 3, generator=g) < 0.6
    present[torch.arange(b), torch.randint(0, 3, (b,), generator=g)] = True
    return inputs, present


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ARCH).eval()


@pytest.fixture
def bundle_dir(model, tmp_path):
    return save_bundle(tmp_path / "bundle", model, ARCH, SPEC, metadata={"accuracy": 0.5})


def eager(model, inputs, present):
    with torch.no_grad():
        return model(inputs, present)


def test_the_bag_text_encoder_averages_the_real_tokens_at_any_batch():
    """Its flat-ids-and-offsets call (export-friendly) is still the mean over non-padding tokens."""
    from mmcourse.efficiency import BagTextEncoder

    torch.manual_seed(0)
    encoder = BagTextEncoder(dim=8)
    ids = torch.tensor([[5, 7, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0], [9, 9, 2, 4]])          # (4, 4), row 2 all padding
    table, real = encoder.embedding.weight, (ids != 0).float()
    mean = (table[ids] * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)   # (4, 8); zeros for row 2
    torch.testing.assert_close(encoder.embedding(ids.reshape(-1), torch.arange(4) * 4), mean)
    torch.testing.assert_close(encoder(ids), encoder.mlp(mean))
    torch.testing.assert_close(encoder(ids[3:]), encoder.mlp(mean[3:]))                      # batch 1


# ----------------------------------------------------------------------------- bundle

def test_bundle_round_trip_gives_the_same_logits(model, bundle_dir):
    bundle = load_bundle(bundle_dir)
    inputs, present = batch(6)
    assert torch.equal(eager(bundle.model, inputs, present), eager(model, inputs, present))
    assert not bundle.model.training and bundle.model.input_spec == SPEC == bundle.spec
    assert bundle.arch == ARCH and bundle.metadata == {"accuracy": 0.5} and bundle.path == bundle_dir
    assert bundle.vocab.itos == WORLD_VOCAB.itos and bundle.class_names == SPEC.class_names
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["bundle.json", "weights.pt"]   # no temporary left


def _edit_manifest(directory, **changes):
    path = directory / deploy.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_bundle_of_another_version_is_refused_naming_both_versions(bundle_dir):
    _edit_manifest(bundle_dir, version=BUNDLE_VERSION + 1)
    with pytest.raises(ValueError, match=f"format version {BUNDLE_VERSION + 1}; this code reads version "
                                         f"{BUNDLE_VERSION}"):
        load_bundle(bundle_dir)


def test_tampered_weights_are_refused(bundle_dir):
    path = bundle_dir / deploy.WEIGHTS
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_bundle(bundle_dir)


def test_a_save_that_crashed_before_its_manifest_is_refused(model, bundle_dir, monkeypatch):
    """New weights over an old bundle, then a crash: the old manifest's hash no longer fits -> refused."""
    write = deploy.atomic_write

    def crash_on_manifest(path, fill):
        if path.name == deploy.MANIFEST:
            raise KeyboardInterrupt("power cut")
        return write(path, fill)

    torch.manual_seed(1)
    other = build_model(ARCH)
    monkeypatch.setattr(deploy, "atomic_write", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(bundle_dir, other, ARCH, SPEC)
    with pytest.raises(ValueError, match="half-written"):
        load_bundle(bundle_dir)
    (bundle_dir / deploy.MANIFEST).unlink()                     # a first save that never wrote its manifest
    with pytest.raises(ValueError, match="has no bundle.json"):
        load_bundle(bundle_dir)


def test_weights_that_do_not_fit_the_architecture_are_refused_naming_the_keys(model, bundle_dir, tmp_path):
    wider = json.loads(json.dumps(ARCH))
    wider["fusion"]["hidden"] = 32
    _edit_manifest(bundle_dir, arch=wider)
    with pytest.raises(ValueError, match=r"do not match the architecture: shapes differ .*fusion\."):
        load_bundle(bundle_dir)
    with pytest.raises(ValueError, match=r"unexpected keys \[.encoders\.audio\.blocks\.1"):  # saving checks too
        save_bundle(tmp_path / "other", model, {**ARCH, "encoders": {**ARCH["encoders"], "audio":
                                                                     {"family": "cnn", "dim": 8, "widths": [4]}}},
                    SPEC)


def test_missing_or_wrong_paths_give_clear_errors(bundle_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is not a model bundle: a bundle is a directory"):
        load_bundle(bundle_dir / deploy.WEIGHTS)
    (bundle_dir / deploy.WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="weights file weights.pt is missing"):
        load_bundle(bundle_dir)
    with pytest.raises(TypeError, match="spec must be"):
        save_bundle(tmp_path / "b", build_model(ARCH), ARCH, spec={"image_size": 16})
    with pytest.raises(ValueError, match="metadata must be JSON-able"):
        save_bundle(tmp_path / "b", build_model(ARCH), ARCH, SPEC, metadata={"when": object()})


# ----------------------------------------------------------------------------- torch.export

def test_exported_program_runs_any_batch_and_agrees_with_eager(model, tmp_path):
    inputs, present = batch(64, tokens=7)
    path = export_program(model, ({m: x[:2] for m, x in inputs.items()}, present[:2]), tmp_path / "m.pt2")
    program = load_program(path).module()
    for b, tokens in ((1, 3), (64, 7)):
        x, p = batch(b, tokens, seed=b)
        torch.testing.assert_close(program(x, p), eager(model, x, p))
    with pytest.raises(ValueError, match="batch of at least 2"):
        export_program(model, ({m: x[:1] for m, x in inputs.items()}, present[:1]), tmp_path / "one.pt2")
    short, p = batch(2, tokens=1)
    with pytest.raises(ValueError, match="captions must have at least 2 tokens"):
        export_program(model, (short, p), tmp_path / "short.pt2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_program(tmp_path / "none.pt2")


def test_a_sliced_example_drags_its_whole_tensor_into_the_file_unless_cloned(model, tmp_path):
    inputs, present = batch(2)
    big = {m: x.repeat(500, *[1] * (x.dim() - 1)) for m, x in inputs.items()}    # (1000, ...): ~3.2 MB of image
    example = ({m: x[:2] for m, x in big.items()}, present)
    cloned = export_program(model, example, tmp_path / "cloned.pt2").stat().st_size
    viewed = export_program(model, example, tmp_path / "viewed.pt2", clone=False).stat().st_size
    whole = sum(x.numel() * x.element_size() for x in big.values())
    assert viewed - cloned > 0.9 * whole, (viewed, cloned, whole)


# ----------------------------------------------------------------------------- ONNX

@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, SPEC, tmp_path_factory.mktemp("onnx") / "model.onnx", arch=ARCH)


@pytest.fixture(scope="module")
def onnx_model(onnx_path):
    return OnnxModel(onnx_path)


def test_onnx_signature_has_a_dynamic_batch_and_caption_length(onnx_model):
    shapes = {i.name: (i.shape, i.type) for i in onnx_model.session.get_inputs()}
    assert list(shapes) == [*MODALITIES, "present"]
    assert shapes["text"][1] == "tensor(int64)" and shapes["present"][1] == "tensor(bool)"
    assert all(isinstance(shape[0], str) for shape, _ in shapes.values())           # B symbolic in every input
    assert isinstance(shapes["text"][0][1], str) and shapes["present"][0][1] == 3
    assert shapes["image"][0][1:] == [3, SPEC.image_size, SPEC.image_size]


@pytest.mark.parametrize("b", [1, 64])
def test_onnx_agrees_with_eager_with_modalities_absent_per_sample(model, onnx_model, b):
    inputs, present = batch(b, tokens=1 if b == 1 else 7, seed=b)          # L = 1 as well: L is dynamic too
    if b > 1:
        assert not present.all() and present.any(1).all()       # some samples do lack a modality
    torch.testing.assert_close(onnx_model(inputs, present), eager(model, inputs, present), rtol=1e-4, atol=1e-5)


def test_onnx_ignores_the_values_of_absent_modalities(model, onnx_model):
    inputs, present = batch(16, seed=3)
    present[:, MODALITIES.index("audio")] = False
    present[::2, MODALITIES.index("image")] = False
    present[:, MODALITIES.index("text")] = True
    noisy = dict(inputs, audio=1e3 * torch.randn_like(inputs["audio"]))
    noisy["image"] = torch.where(present[:, 1, None, None, None], inputs["image"], torch.rand_like(inputs["image"]))
    zeros = dict(inputs, audio=torch.zeros_like(inputs["audio"]))
    assert torch.equal(onnx_model(noisy, present), onnx_model(zeros, present))
    without_audio = {m: x for m, x in inputs.items() if m != "audio"}                # an absent key, as in torch
    torch.testing.assert_close(onnx_model(without_audio), eager(model, without_audio, None), rtol=1e-4, atol=1e-5)


def test_onnx_carries_its_metadata_and_refuses_files_without_it(onnx_path, onnx_model, tmp_path):
    assert onnx_model.input_spec == SPEC and onnx_model.vocab.itos == WORLD_VOCAB.itos
    assert onnx_model.modalities == MODALITIES and onnx_model.arch == ARCH
    proto = onnx.load(str(onnx_path))
    for key, value, match in [(None, None, "has no mmcourse metadata"),
                              ("mmcourse.bundle_version", "7", "bundle version 7; this code reads version 1")]:
        props = {p.key: p.value for p in proto.metadata_props}
        del proto.metadata_props[:]
        if key is not None:
            onnx.helper.set_model_props(proto, {**props, key: value})
        bad = tmp_path / "bad.onnx"
        onnx.save(proto, str(bad))
        with pytest.raises(ValueError, match=match):
            OnnxModel(bad)
        onnx.helper.set_model_props(proto, props)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ValueError, match="is not an ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxModel(tmp_path / "none.onnx")


def test_onnx_model_runs_on_the_threads_it_is_given(onnx_path, model):
    one = OnnxModel(onnx_path, threads=1)
    options = one.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    inputs, present = batch(8, seed=5)
    torch.testing.assert_close(one(inputs, present), eager(model, inputs, present), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="threads"):
        OnnxModel(onnx_path, threads=0)
