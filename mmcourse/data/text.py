"""Captions, vocabulary, tokenizer and entity tags.

Captions come from a small grammar with synonyms. They are generated directly
as token ids (vectorised: one table lookup per slot, no loop per scene) with a
BIO entity tag per token (COLOR, SHAPE, SIZE, POS, MATERIAL; several synonyms
span two or three tokens, so I- tags matter). Strings are made only when asked
for, by :meth:`Vocab.decode`. Real captions get a vocabulary built from their
training split (:func:`build_vocab`) instead of the grammar's ``WORLD_VOCAB``.

Shape letters: N captions, L tokens.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from .world import ATTRIBUTES, Scenes

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

# Entity type of each attribute (the tag set of chapter 09's tagger).
ENTITY_TYPES = {"colour": "COLOR", "shape": "SHAPE", "size": "SIZE", "position": "POS", "material": "MATERIAL"}
TAGS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES.values() for p in ("B", "I"))

# Synonym phrases per attribute value. A phrase is a string; words before a
# "|" are context (tag O), the rest is the entity.
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disc", "round disc"),
        "square": ("square", "block", "square block"),
        "triangle": ("triangle", "wedge"),
        "cross": ("cross", "plus sign"),
        "diamond": ("diamond", "rhombus"),
    },
    "colour": {
        "red": ("red", "crimson", "bright red"),
        "green": ("green", "jade", "dark green"),
        "blue": ("blue", "navy", "cobalt blue"),
        "yellow": ("yellow", "golden", "lemon yellow"),
    },
    "size": {
        "small": ("small", "tiny", "very small"),
        "large": ("large", "big", "very large"),
    },
    "position": {
        "top left": ("in the | top left", "at the | upper left", "in the | top left corner"),
        "top right": ("in the | top right", "at the | upper right", "in the | top right corner"),
        "bottom left": ("in the | bottom left", "at the | lower left", "in the | bottom left corner"),
        "bottom right": ("in the | bottom right", "at the | lower right", "in the | bottom right corner"),
    },
    "material": {
        "metal": ("metal", "steel", "stainless steel"),
        "glass": ("glass", "glassy"),
        "wood": ("wooden", "timber"),
        "rubber": ("rubber", "rubbery"),
    },
}
# Noun used when the shape is not mentioned.
SHAPE_FILLERS = ("thing", "shape", "figure")

# Templates: literal words and {attribute} slots. A slot whose attribute is not
# mentioned disappears (the shape slot falls back to a filler noun).
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {material} {shape} {position}",
    "{position} there is a {size} {colour} {material} {shape}",
    "look , a {colour} {size} {material} {shape} {position}",
    "{position} you can see a {material} {size} {colour} {shape}",
)


def _split_phrase(phrase: str) -> list[tuple[str, bool]]:
    """'in the | top left' -> [('in', False), ('the', False), ('top', True), ('left', True)]."""
    context, _, entity = phrase.rpartition("|")
    return [(w, False) for w in context.split()] + [(w, True) for w in entity.split()]


def _all_words() -> set[str]:
    words = set(SHAPE_FILLERS)
    for values in SYNONYMS.values():
        for phrases in values.values():
            words.update(w for p in phrases for w, _ in _split_phrase(p))
    for t in TEMPLATES:
        words.update(w for w in re.sub(r"\{\w+\}", " ", t).replace(",", " , ").split())
    return words


class Vocab:
    """Word <-> id mapping: ``<pad>`` = 0, ``<unk>`` = 1, then words in sorted order."""

    def __init__(self, words):
        self.itos: list[str] = [PAD, UNK] + sorted(set(words) - {PAD, UNK})
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def decode(self, ids) -> list[str]:
        """Token ids (N, L) -> caption strings, padding dropped (one row (L,) gives one string)."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2):
            raise ValueError(f"ids must be (L,) or (N, L), got shape {ids.shape}")
        return [" ".join(self.itos[i] for i in row if i != PAD_ID) for row in np.atleast_2d(ids).tolist()]


WORLD_VOCAB = Vocab(_all_words())


class Tokenizer:
    """Lower-cases, splits into words and punctuation, maps words to ids.

    Unknown words map to ``<unk>``; batches are right-padded with ``<pad>``.
    """

    PATTERN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

    def __init__(self, vocab: Vocab = WORLD_VOCAB):
        self.vocab = vocab

    @classmethod
    def tokenize(cls, text: str) -> list[str]:
        """Lower-cased words and punctuation marks of ``text`` (no vocabulary needed)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return cls.PATTERN.findall(text.lower())

    def encode(self, texts, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode strings to padded ids and a mask of real tokens: (N, L) int64, (N, L) bool.

        Args:
            texts: a list of strings.
            max_len: truncate to this many tokens (default: longest text).
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str")
        rows = [[self.vocab.stoi.get(w, UNK_ID) for w in self.tokenize(t)] for t in texts]
        length = max([len(r) for r in rows] + [1]) if max_len is None else max_len
        ids = np.full((len(rows), length), PAD_ID, dtype=np.int64)
        for i, r in enumerate(rows):
            r = r[:length]
            ids[i, : len(r)] = r
        return ids, ids != PAD_ID


# A word must occur this often in the training captions to get its own id. With 2, words seen
# once become <unk> in training too, so the model learns what an unknown word looks like
# before it meets the unseen words of dev and test (the usual "min_freq" cut-off).
MIN_WORD_COUNT = 2


def build_vocab(texts, min_count: int = MIN_WORD_COUNT) -> Vocab:
    """The vocabulary of ``texts`` (the training captions): every word seen at least ``min_count`` times.

    Words are split as :meth:`Tokenizer.tokenize` splits them.

    Raises:
        TypeError: if ``texts`` is a single string.
        ValueError: if ``min_count`` is not an int >= 1.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str")
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    counts = Counter(w for t in texts for w in Tokenizer.tokenize(t))
    return Vocab(w for w, c in counts.items() if c >= min_count)


def unknown_fraction(ids) -> float:
    """Share of real (non-padding) tokens that are ``<unk>`` in ids (N, L); 0.0 when there are none."""
    ids = np.asarray(ids)
    real = int((ids != PAD_ID).sum())
    return float((ids == UNK_ID).sum()) / real if real else 0.0


@dataclass
class Captions:
    """Generated captions as ids and BIO tag ids: (N, L) int64 each, 0 = padding / 'O'."""

    ids: np.ndarray
    tags: np.ndarray

    def strings(self, vocab: Vocab = WORLD_VOCAB) -> list[str]:
        return vocab.decode(self.ids)

    def tag_strings(self) -> list[list[str]]:
        return [[TAGS[t] for t, i in zip(trow, irow) if i != PAD_ID]
                for trow, irow in zip(self.tags.tolist(), self.ids.tolist())]


def _phrase_table(attribute: str, vocab: Vocab):
    """Token ids and tag ids of every synonym: (values, synonyms, width), -1 = empty."""
    values = ATTRIBUTES[attribute]
    phrases = [[_split_phrase(p) for p in SYNONYMS[attribute][v]] for v in values]
    width = max(len(p) for ps in phrases for p in ps)
    n_syn = max(len(ps) for ps in phrases)
    ids = np.full((len(values), n_syn, width), -1, np.int64)
    tags = np.zeros_like(ids)
    kind = ENTITY_TYPES[attribute]
    for v, ps in enumerate(phrases):
        for s, words in enumerate(ps):
            first = True
            for k, (w, is_entity) in enumerate(words):
                ids[v, s, k] = vocab.stoi[w]
                if is_entity:
                    tags[v, s, k] = TAGS.index(f"{'B' if first else 'I'}-{kind}")
                    first = False
    counts = np.array([len(ps) for ps in phrases])
    return ids, tags, counts


def generate_captions(scenes: Scenes, mentioned: dict[str, np.ndarray], rng: np.random.Generator,
                      vocab: Vocab = WORLD_VOCAB) -> Captions:
    """Captions naming the attributes where ``mentioned[attr]`` (N,) is True."""
    n = len(scenes)
    slots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for a in ATTRIBUTES:
        ids, tags, counts = _phrase_table(a, vocab)
        value = scenes.attrs[a]
        syn = (rng.random(n) * counts[value]).astype(np.int64)       # uniform synonym per scene
        tok, tag = ids[value, syn], tags[value, syn]                # (N, width)
        hidden = ~mentioned[a]
        tok = np.where(hidden[:, None], -1, tok)
        if a == "shape":
            filler = np.array([vocab.stoi[w] for w in SHAPE_FILLERS])[rng.integers(0, len(SHAPE_FILLERS), n)]
            tok[:, 0] = np.where(hidden, filler, tok[:, 0])
        slots[a] = (tok, np.where((tok < 0) | hidden[:, None], 0, tag))  # a filler is not an entity
    choice = rng.integers(0, len(TEMPLATES), n)
    pieces = []
    for t, template in enumerate(TEMPLATES):
        tok_parts, tag_parts = [], []
        for part in re.split(r"(\{\w+\})", template.replace(",", " , ")):
            for word in ([part] if part.startswith("{") else part.split()):
                if word.startswith("{"):
                    tok, tag = slots[word[1:-1]]
                else:
                    tok, tag = np.full((n, 1), vocab.stoi[word]), np.zeros((n, 1), np.int64)
                tok_parts.append(tok)
                tag_parts.append(tag)
        pieces.append((np.concatenate(tok_parts, 1), np.concatenate(tag_parts, 1)))
    width = max(p[0].shape[1] for p in pieces)
    tok = np.full((n, width), -1, np.int64)
    tag = np.zeros((n, width), np.int64)
    for t, (pt, pg) in enumerate(pieces):
        rows = choice == t
        tok[rows, : pt.shape[1]], tag[rows, : pg.shape[1]] = pt[rows], pg[rows]
    order = np.argsort(tok < 0, axis=1, kind="stable")              # move empty slots to the end
    tok, tag = np.take_along_axis(tok, order, 1), np.take_along_axis(tag, order, 1)
    length = int((tok >= 0).sum(1).max()) if n else 0
    tok, tag = tok[:, :length], tag[:, :length]
    return Captions(ids=np.where(tok < 0, PAD_ID, tok), tags=np.where(tok < 0, 0, tag))


def bag_of_words(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Word counts of token ids: (N, L) int64 -> (N, V) float32; padding (``PAD_ID``) is not counted.

    Raises:
        ValueError: if ``ids`` is not a 2-D integer tensor or holds an id outside [0, V).
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be token ids (N, L), got {getattr(ids, 'dtype', type(ids).__name__)} "
                         f"of shape {tuple(getattr(ids, 'shape', ()))}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got min {int(ids.min())}, max {int(ids.max())}")
    counts = torch.zeros(len(ids), vocab_size, device=ids.device)
    return counts.scatter_add_(1, ids, (ids != PAD_ID).float())
