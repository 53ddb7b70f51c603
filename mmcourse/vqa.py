"""Chapter 16, visual question answering on easy-VQA: the loader, the question tokenizer, the models and their training.

easy-VQA (the PyPI package ``easy-vqa`` 1.0, MIT licence, https://github.com/vzhou842/easy-VQA) holds 64x64 RGB
images of one coloured shape each, and short English questions about them with one-word answers. Its files
(``<root>/answers.txt``, ``<root>/{train,test}/questions.json``: a JSON list of [question, answer, image id],
``<root>/{train,test}/images/<id>.png``) are read by :func:`load_easy_vqa`, validated, and cached under
``build/vqa/`` as uint8 tensors. The package's own module is never imported (its wheel also installs a top-level
``test`` package; :func:`data_root` finds the data folder with ``importlib`` without importing anything).

A question is asked of one image, and an image has about ten questions. A training step therefore takes a
batch of images and *all* their questions: the images are encoded once, (B_img, P, D), and each question
gathers its image's features by an index (``image_index``, (B_q,)). The distinct question texts of the batch
are encoded once too (``texts`` (T, L), ``text_index`` (B_q,)). The gathers use ``index_select``: the backward of
advanced indexing (``v[image_index]``) with repeated indices gave different weights from the same seed on two CPU
threads (measured with the cross-attention head), ``index_select``'s backward repeats exactly. :class:`VQAModel` is encoder + gather + a fusion
head; the heads (``HEADS``) are image-only (a baseline), concatenation and elementwise product (chapter 05's
:class:`~mmcourse.fusion.ConcatFusion` and :class:`~mmcourse.fusion.ProductFusion` on pooled vectors), FiLM
(Perez et al. 2018: the question scales and shifts every channel of the image's feature map) and
cross-attention (the question's words attend to the image's patches). The blind baseline needs no training:
the best question-only predictor is the majority answer of each question text (:func:`majority_answers`).

Shape letters: N images, Q questions, B_img images of a batch, B_q questions of a batch, T distinct texts of a
batch, L tokens of a question, S image side, P image patches (positions of the feature map), D feature width,
H hidden width, C answers (13).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import _check_positive, _table_entry
from .encoders import CNNImageEncoder
from .fusion import ConcatFusion, ProductFusion
from .models import masked_mean
from .training import TrainConfig, classification_loss, train
from .utils import atomic_write, build_dir, inference, prepare_inputs

PACKAGE = "easy_vqa"                      # the PyPI package easy-vqa 1.0 installs its data here
SPLITS = ("train", "test")
IMAGE_SIZE = 64                           # easy-VQA's images are 64x64 RGB
SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")   # easy-VQA's eight colours
YES_NO = ("no", "yes")
QUESTION_TYPES = ("yes/no", "colour", "shape")
PAD, UNK = "<pad>", "<unk>"               # token ids 0 and 1
CACHE_VERSION = 1                         # bump when the cache's contents change


# ----------------------------------------------------------------------------- the loader

def data_root() -> Path:
    """The installed easy-VQA data folder, found by ``importlib`` without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {PACKAGE!r} (PyPI easy-vqa) is not installed: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@dataclass
class VQASplit:
    """One split of easy-VQA.

    Attributes:
        images: (N, 3, S, S) uint8, in the order of ``image_ids``.
        image_ids: (N,) int64, the ids of the PNG files (sorted).
        questions: the Q question texts.
        answers: (Q,) int64, indices into the answer list.
        image_index: (Q,) int64, the row of ``images`` each question is asked of.
    """

    images: torch.Tensor
    image_ids: torch.Tensor
    questions: list[str]
    answers: torch.Tensor
    image_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.questions)


@dataclass
class EasyVQA:
    """The whole data set: ``answers`` (C names, the file's order), ``splits`` {"train", "test"}, and how it was read."""

    answers: list[str]
    splits: dict[str, VQASplit]
    decode_seconds: float | None = None   # time to decode the PNGs; None when read from the cache
    cache: Path | None = None


def _read_answers(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path}: the answer list is missing")
    answers = [a.strip() for a in path.read_text(encoding="utf-8").splitlines() if a.strip()]
    if len(set(answers)) != len(answers):
        raise ValueError(f"{path}: an answer is listed twice")
    return answers


def _read_questions(path: Path, answers: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, answer indices (Q,) and image ids (Q,) of a questions.json, every entry validated."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: the questions file is missing") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of [question, answer, image id], got {type(entries).__name__}")
    index = {a: i for i, a in enumerate(answers)}
    texts, labels, ids = [], [], []
    for i, e in enumerate(entries):
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], str)
                and isinstance(e[2], int) and not isinstance(e[2], bool)):
            raise ValueError(f"{path}: entry {i} is not [question, answer, image id]: {e!r}")
        if e[1] not in index:
            raise ValueError(f"{path}: entry {i} has the unknown answer {e[1]!r}")
        texts.append(e[0])
        labels.append(index[e[1]])
        ids.append(e[2])
    return texts, np.asarray(labels, dtype=np.int64), np.asarray(ids, dtype=np.int64)


def _decode(paths: list[Path]) -> torch.Tensor:
    """The PNGs as (N, 3, S, S) uint8; each must be S x S (``IMAGE_SIZE``)."""
    from PIL import Image
    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for k, p in enumerate(paths):
        with Image.open(p) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise ValueError(f"{p}: image of size {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
            out[k] = np.asarray(im.convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _image_files(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: the image folder is missing")
    files = {}
    for p in folder.iterdir():
        if p.suffix == ".png":
            if not p.stem.isdigit():
                raise ValueError(f"{p}: an image file must be named <integer id>.png")
            files[int(p.stem)] = p
    return dict(sorted(files.items()))


def _fingerprint(root: Path) -> str:
    """SHA-256 over the name, size and modification time of every source file: a changed copy is re-read."""
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.suffix in (".png", ".json", ".txt")):
        s = p.stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{s.st_size}\0{s.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _read_split(root: Path, split: str, answers: list[str], images: torch.Tensor | None):
    texts, labels, ids = _read_questions(root / split / "questions.json", answers)
    files = _image_files(root / split / "images")
    image_ids = np.fromiter(files, dtype=np.int64, count=len(files))
    row = np.searchsorted(image_ids, ids)                                   # (Q,)
    bad = np.flatnonzero((row >= len(image_ids)) | (image_ids[np.minimum(row, len(image_ids) - 1)] != ids))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{root / split / 'questions.json'}: entry {i} asks about image {ids[i]}, which has no "
                         f"PNG in {root / split / 'images'}")
    if images is None:
        images = _decode(list(files.values()))
    return VQASplit(images, torch.from_numpy(image_ids), texts, torch.from_numpy(labels), torch.from_numpy(row))


def load_easy_vqa(root=None, cache: bool = True) -> EasyVQA:
    """Read easy-VQA from ``root`` (default :func:`data_root`), validated; decoded images cached under build/vqa/.

    The cache file is named by a fingerprint of the source files (names, sizes, mtimes), is loaded with
    ``weights_only=True`` and written atomically. Nothing is remapped or dropped: a problem raises.

    Raises:
        ValueError: naming the file (and the entry's index) for a missing file, malformed JSON, an unknown
            answer, an image id without a PNG, or a PNG of the wrong size.
    """
    root = Path(root) if root is not None else data_root()
    if not root.is_dir():
        raise ValueError(f"{root}: the easy-VQA data folder does not exist")
    answers = _read_answers(root / "answers.txt")
    path = build_dir("vqa") / f"easy_vqa_{_fingerprint(root)[:16]}.pt" if cache else None
    stored = torch.load(path, weights_only=True) if path is not None and path.is_file() else None
    start = time.perf_counter()
    splits = {s: _read_split(root, s, answers, None if stored is None else stored[s]) for s in SPLITS}
    seconds = None if stored is not None else time.perf_counter() - start
    if path is not None and stored is None:
        atomic_write(path, lambda f: torch.save({s: splits[s].images for s in SPLITS}, f))
    return EasyVQA(answers, splits, seconds, path)


def downsample(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """uint8 images (N, 3, S, S) -> float32 in [0, 1], (N, 3, S/factor, S/factor), by average pooling factor x factor."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
    if images.shape[-1] % factor or images.shape[-2] % factor:
        raise ValueError(f"image side {images.shape[-1]} is not a multiple of factor {factor}")
    x = images.float() / 255.0
    return nn.functional.avg_pool2d(x, factor) if factor > 1 else x


def split_by_image(split: VQASplit, dev_images: int, seed: int) -> tuple[VQASplit, VQASplit]:
    """(train, dev): ``dev_images`` random images and all their questions go to dev; no image is in both."""
    n = len(split.images)
    if not 0 < dev_images < n:
        raise ValueError(f"dev_images must be in [1, {n - 1}], got {dev_images}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    is_dev = torch.zeros(n, dtype=torch.bool)
    is_dev[order[:dev_images]] = True
    return subset(split, ~is_dev), subset(split, is_dev)


def subset(split: VQASplit, keep: torch.Tensor) -> VQASplit:
    """The images where ``keep`` (N,) bool is True, with all their questions (and only theirs), indices renumbered."""
    if keep.dtype != torch.bool or keep.shape != (len(split.images),):
        raise ValueError(f"keep must be a bool tensor ({len(split.images)},), got {keep.dtype} {tuple(keep.shape)}")
    new_row = torch.cumsum(keep.long(), 0) - 1                               # (N,): old row -> new row
    q = keep[split.image_index]                                              # (Q,)
    rows = q.nonzero().squeeze(1)
    return VQASplit(split.images[keep], split.image_ids[keep], [split.questions[i] for i in rows.tolist()],
                    split.answers[q], new_row[split.image_index[q]])


# ----------------------------------------------------------------------------- question types and the ceiling

def question_types(answers: list[str], labels: torch.Tensor) -> np.ndarray:
    """The type of each question from its answer: 0 yes/no, 1 colour, 2 shape (``QUESTION_TYPES``), (Q,)."""
    kind = np.array([0 if a in YES_NO else 1 if a in COLOURS else 2 if a in SHAPES else -1 for a in answers])
    if (kind < 0).any():
        raise ValueError(f"answers {[a for a, k in zip(answers, kind) if k < 0]} are neither yes/no, colour nor shape")
    return kind[np.asarray(labels)]


_WORD = re.compile(r"[a-z]+")


def parse_question(text: str) -> tuple[str, str | None, bool]:
    """What a question asks: (kind, value, negated). kind is "colour?" or "shape?" for an open question (value None),
    else "shape" / "colour" for a yes/no question about ``value``; negated for "not" / "no"."""
    words = _WORD.findall(text.lower())
    shapes = [w for w in words if w in SHAPES]
    colours = [w for w in words if w in COLOURS]
    negated = "not" in words or "no" in words
    if words[:1] == ["what"]:
        return ("colour?", None, False) if "color" in words else ("shape?", None, False)
    if len(shapes) + len(colours) != 1:
        raise ValueError(f"question {text!r} names {shapes + colours}, expected one shape or one colour")
    return ("shape", shapes[0], negated) if shapes else ("colour", colours[0], negated)


def implied_attributes(split: VQASplit, answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's (shape, colour) indices into ``SHAPES`` / ``COLOURS`` implied by its answers, (N,) each.

    Every question narrows the values an image can have (an open question fixes one; a yes/no question keeps
    or removes its value). Raises ValueError naming an image whose answers no single shape or colour satisfies.
    """
    texts = sorted(set(split.questions))
    parsed = {t: parse_question(t) for t in texts}
    ans = np.asarray(answers)[split.answers.numpy()]                         # (Q,) answer words
    img = split.image_index.numpy()
    out = []
    for attr, values in (("shape", SHAPES), ("colour", COLOURS)):
        excluded = np.zeros((len(split.images), len(values)), dtype=np.int64)   # (N, V) counts of contradictions
        kinds = np.array([parsed[t][0] for t in split.questions])
        vals = np.array([parsed[t][1] or "" for t in split.questions])
        neg = np.array([parsed[t][2] for t in split.questions])
        onehot = np.asarray(values)[None] == np.where(kinds == f"{attr}?", ans, vals)[:, None]   # (Q, V)
        is_open, is_yn = kinds == f"{attr}?", kinds == attr
        truth = (ans == "yes") ^ neg                                           # (Q,): the named value is there
        contra = np.where((is_open | (is_yn & truth))[:, None], ~onehot, is_yn[:, None] & onehot & ~truth[:, None])
        np.add.at(excluded, img, contra.astype(np.int64))
        allowed = excluded == 0                                                # (N, V)
        if not allowed.any(1).all():
            bad = int(np.flatnonzero(~allowed.any(1))[0])
            raise ValueError(f"image {int(split.image_ids[bad])}: no single {attr} agrees with all its answers")
        out.append(allowed.argmax(1))
    return out[0], out[1]


def oracle_answers(split: VQASplit, answers: list[str], shape: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The answer (Q,) an oracle that knows each image's shape and colour gives to every question."""
    index = {a: i for i, a in enumerate(answers)}
    img = split.image_index.numpy()
    s, c = np.asarray(SHAPES)[shape[img]], np.asarray(COLOURS)[colour[img]]   # (Q,) words
    out = np.empty(len(split), dtype=np.int64)
    for q, t in enumerate(split.questions):
        kind, value, negated = parse_question(t)
        word = {"shape?": s[q], "colour?": c[q]}.get(kind)
        if word is None:
            word = YES_NO[int(((s[q] if kind == "shape" else c[q]) == value) ^ negated)]
        out[q] = index[word]
    return out


# ----------------------------------------------------------------------------- the blind baseline

def majority_answers(train: VQASplit, num_answers: int) -> dict[str, int]:
    """The best question-only predictor: each training text's most frequent answer (ties: the lower index)."""
    texts = sorted(set(train.questions))
    row = {t: i for i, t in enumerate(texts)}
    counts = np.zeros((len(texts), num_answers), dtype=np.int64)              # (texts, C)
    np.add.at(counts, (np.array([row[t] for t in train.questions]), train.answers.numpy()), 1)
    return dict(zip(texts, counts.argmax(1).tolist()))


def blind_predict(majority: dict[str, int], split: VQASplit, fallback: int) -> np.ndarray:
    """The majority answer of each question's text (``fallback`` for a text never seen in training), (Q,)."""
    return np.array([majority.get(t, fallback) for t in split.questions], dtype=np.int64)


# ----------------------------------------------------------------------------- the question tokenizer

@dataclass
class QuestionTokenizer:
    """Lower-cased words to ids; id 0 is padding, 1 an unknown word. Built from the training questions."""

    vocab: list[str] = field(default_factory=lambda: [PAD, UNK])

    @classmethod
    def fit(cls, texts) -> "QuestionTokenizer":
        return cls([PAD, UNK] + sorted({w for t in texts for w in _WORD.findall(t.lower())}))

    def encode(self, texts, length: int | None = None) -> torch.Tensor:
        """Token ids (T, L) int64, padded with 0; L = the longest text unless ``length`` is given (longer: ValueError)."""
        index = {w: i for i, w in enumerate(self.vocab)}
        ids = [[index.get(w, 1) for w in _WORD.findall(t.lower())] for t in texts]
        width = max(map(len, ids), default=1) if length is None else length
        if any(len(x) > width for x in ids):
            raise ValueError(f"a question has more than length={width} words")
        out = torch.zeros(len(ids), width, dtype=torch.long)
        for k, x in enumerate(ids):
            out[k, :len(x)] = torch.tensor(x, dtype=torch.long)
        return out


# ----------------------------------------------------------------------------- batches

class QuestionBatches:
    """Batches of images with all their questions: ``({"image_index", "images", "text_index", "texts"}, answers)``.

    Each batch holds ``images`` (B_img, 3, S, S) float, ``image_index`` (B_q,) into them, the batch's distinct
    question texts ``texts`` (T, L) and ``text_index`` (B_q,) into them, and the answers (B_q,). With
    ``shuffle`` the images are drawn in a new order at every pass, from the object's own generator.
    """

    def __init__(self, split: VQASplit, images: torch.Tensor, tokens: torch.Tensor, image_batch: int,
                 shuffle: bool = False, seed: int = 0):
        if len(images) != len(split.images):
            raise ValueError(f"images has {len(images)} rows, the split {len(split.images)} images")
        if len(tokens) != len(split):
            raise ValueError(f"tokens has {len(tokens)} rows, the split {len(split)} questions")
        self.split, self.images, self.tokens, self.image_batch = split, images, tokens, image_batch
        self.shuffle, self.generator = shuffle, torch.Generator().manual_seed(seed)
        self.by_image = torch.argsort(split.image_index, stable=True)           # (Q,): questions grouped by image

    def __len__(self) -> int:
        return -(-len(self.images) // self.image_batch)

    def _plan(self, order: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """For an image order (N,): the questions grouped by batch (Q,) and the questions per batch."""
        n = len(order)
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n)                                          # image -> position in this pass
        batch_of = rank[self.split.image_index] // self.image_batch            # (Q,)
        return torch.argsort(batch_of, stable=True), torch.bincount(batch_of, minlength=len(self)).tolist()

    def question_order(self) -> torch.Tensor:
        """The split's question rows in the order an unshuffled pass yields them (Q,)."""
        return self._plan(torch.arange(len(self.images)))[0]

    def __iter__(self):
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        questions, counts = self._plan(order)
        for b, q in enumerate(torch.split(questions, counts)):
            rows = order[b * self.image_batch:(b + 1) * self.image_batch]      # (B_img,) image rows
            local = torch.empty(n, dtype=torch.long)
            local[rows] = torch.arange(len(rows))
            texts, text_index = torch.unique(self.tokens[q], dim=0, return_inverse=True)   # (T, L), (B_q,)
            inputs = {"image_index": local[self.split.image_index[q]], "images": self.images[rows],
                      "text_index": text_index, "texts": texts}
            yield inputs, self.split.answers[q]


# ----------------------------------------------------------------------------- models

class QuestionEncoder(nn.Module):
    """Word embeddings plus learned positions: tokens (T, L, D) with their mask, and a pooled vector (T, D)."""

    def __init__(self, vocab_size: int, dim: int, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.normal_(self.position, std=0.02)
        self.pool = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())   # two layers: a
        # negation ("is there not ...") flips the answer, an interaction of words that one layer learns slowly

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.dim() != 2 or ids.shape[1] > self.position.shape[1]:
            raise ValueError(f"ids must be (T, L) with L <= {self.position.shape[1]}, got {tuple(ids.shape)}")
        return self.embed(ids) + self.position[:, :ids.shape[1]], ids != 0    # (T, L, D), (T, L)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(masked_mean(*self.tokens(ids)))                       # (T, D)


class ImageOnlyHead(nn.Module):
    """The image-only baseline: the pooled image features of each question's image, an MLP, C logits."""

    def __init__(self, dim: int, hidden: int, num_answers: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_answers))

    def forward(self, v, image_index, question, texts, text_index):
        return self.mlp(v.mean(1).index_select(0, image_index))              # (B_q, C)


class PooledFusionHead(nn.Module):
    """A chapter-05 fusion of the pooled image (B_q, D) and question (B_q, D) vectors, then a linear head."""

    def __init__(self, fusion, num_answers: int):
        super().__init__()
        self.fusion = fusion
        self.head = nn.Linear(fusion.out_dim, num_answers)

    def forward(self, v, image_index, question, texts, text_index):
        features = {"image": v.mean(1).index_select(0, image_index),           # (B_q, D)
                    "text": question(texts).index_select(0, text_index)}    # (B_q, D)
        return self.head(self.fusion(features))                                # (B_q, C)


class FiLMHead(nn.Module):
    """FiLM (Perez et al. 2018): the question predicts (gamma, beta) per channel of the image's feature map,
    ``h = ReLU((1 + dgamma) * v + beta)`` at every patch, then a 1x1 projection, ReLU, mean over patches, C logits."""

    def __init__(self, dim: int, hidden: int, num_answers: int):
        super().__init__()
        self.film = nn.Linear(dim, 2 * dim)
        self.project = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_answers))

    def forward(self, v, image_index, question, texts, text_index):
        dgamma, beta = self.film(question(texts)).chunk(2, dim=1)              # (T, D) each
        g, b = dgamma.index_select(0, text_index)[:, None], beta.index_select(0, text_index)[:, None]  # (B_q, 1, D)
        h = torch.relu((1 + g) * v.index_select(0, image_index) + b)          # (B_q, P, D)
        return self.head(self.project(h).mean(1))                              # (B_q, C)


class CrossAttentionHead(nn.Module):
    """The question's words attend to the image's patches (queries: words; keys and values: patches).

    The question decides what to look for (a colour, a shape), so its words ask and the patches answer; each
    word's attended image vector is added to it, the words are averaged (masked), and an MLP gives C logits.
    """

    def __init__(self, dim: int, hidden: int, num_answers: int, heads: int = 4):
        super().__init__()
        self.attend = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_answers))

    def forward(self, v, image_index, question, texts, text_index):
        words, mask = question.tokens(texts)                                   # (T, L, D), (T, L)
        words, mask = words.index_select(0, text_index), mask.index_select(0, text_index)   # (B_q, L, D), (B_q, L)
        patches = v.index_select(0, image_index)                               # (B_q, P, D)
        seen, _ = self.attend(words, patches, patches, need_weights=False)     # (B_q, L, D)
        return self.mlp(masked_mean(words + seen, mask))                       # (B_q, C)


HEADS = ("image_only", "concat", "product", "film", "cross_attention")


class VQAModel(nn.Module):
    """Image encoder (once per image) + question encoder (once per distinct text) + gather + a fusion head."""

    def __init__(self, image: nn.Module, question: QuestionEncoder, head: nn.Module):
        super().__init__()
        self.image, self.question, self.head = image, question, head

    def forward(self, inputs) -> torch.Tensor:
        """``inputs`` of :class:`QuestionBatches` -> answer logits (B_q, C)."""
        images, image_index = inputs["images"], inputs["image_index"]
        if image_index.numel() and int(image_index.max()) >= len(images):      # one check per batch, not per question
            raise ValueError(f"image_index refers to image {int(image_index.max())}, the batch has {len(images)}")
        v, _ = self.image.tokens(images)                                       # (B_img, P, D)
        return self.head(v, image_index, self.question, inputs["texts"], inputs["text_index"])   # (B_q, C)


# ----------------------------------------------------------------------------- settings per profile

@dataclass(frozen=True)
class VQAConfig:
    """The chapter's sizes in one profile.

    Attributes:
        train_images: training images used (of easy-VQA's 4,000 minus the dev images; smoke uses fewer).
        dev_images: images split off the training data for the dev set (with all their questions).
        epochs: passes over the training images of each compared model.
        best_epochs: passes of the final run of the best fusion (longer: it carries the 0.99 target).
        image_batch: images per step (each with all of its about ten questions).
        lr: peak learning rate (warm-up, cosine decay: :class:`mmcourse.training.TrainConfig`).
        dim: width D of the image and question features (64: the stage-1 image encoder's width).
        hidden: width H of the heads.
        downsample: average-pooling factor of the 64x64 images (2: 32x32, the course's image side).
        schedule: the learning-rate schedule after the warm-up (see :func:`fit`).
    """

    train_images: int
    epochs: int
    best_epochs: int
    dev_images: int = 400
    image_batch: int = 32
    lr: float = 3e-3
    dim: int = 64
    hidden: int = 128
    downsample: int = 2
    schedule: str = "constant"

    def __post_init__(self):
        _check_positive(self, ("train_images", "epochs", "best_epochs", "dev_images", "image_batch", "dim",
                               "hidden", "downsample"))


VQA: dict[str, VQAConfig] = {
    "smoke": VQAConfig(train_images=800, epochs=1, best_epochs=2),
    "default": VQAConfig(train_images=3600, epochs=3, best_epochs=14),
    "full": VQAConfig(train_images=3600, epochs=20, best_epochs=40, downsample=1),
}


def vqa_config(profile=None) -> VQAConfig:
    """The :class:`VQAConfig` of a profile (a name, a :class:`mmcourse.config.Profile` or None)."""
    return _table_entry(VQA, profile, "vqa")[1]


def make_head(name: str, dim: int, hidden: int, num_answers: int) -> nn.Module:
    """The head called ``name`` (one of ``HEADS``)."""
    if name == "image_only":
        return ImageOnlyHead(dim, hidden, num_answers)
    if name == "concat":
        return PooledFusionHead(ConcatFusion({"image": dim, "text": dim}, hidden), num_answers)
    if name == "product":
        return PooledFusionHead(ProductFusion({"image": dim, "text": dim}, hidden), num_answers)
    if name == "film":
        return FiLMHead(dim, hidden, num_answers)
    if name == "cross_attention":
        return CrossAttentionHead(dim, hidden, num_answers)
    raise ValueError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")


def make_model(head: str, config: VQAConfig, vocab_size: int, max_len: int, num_answers: int,
               image_encoder: nn.Module | None = None) -> VQAModel:
    """A VQA model: the course's CNN image encoder (the stage-1 architecture, or ``image_encoder`` itself),
    a question encoder and the head ``head``."""
    image = image_encoder if image_encoder is not None else CNNImageEncoder(config.dim)
    return VQAModel(image, QuestionEncoder(vocab_size, config.dim, max_len),
                    make_head(head, config.dim, config.hidden, num_answers))


def fit(model: VQAModel, batches: QuestionBatches, config: VQAConfig, device, epochs: int | None = None,
        frozen_image: bool = False, dev: QuestionBatches | None = None):
    """Train ``model`` (on ``device``) with cross-entropy over ``batches``; returns the training History.

    The learning rate warms up, then stays at ``config.lr`` (``config.schedule``: easy-VQA's yes/no questions
    sit at their language prior for several epochs before the model learns to compare the named value with
    the image, and a cosine decay over a short run can end before that happens). With ``dev`` the dev accuracy
    is measured after every epoch and the best epoch's weights are restored at the end. ``frozen_image`` trains
    everything but the image encoder, which stays in eval mode (its BatchNorm statistics too).
    """
    epochs = epochs or config.epochs
    steps = epochs * len(batches)
    if frozen_image:
        model.image.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    evaluate = None
    if dev is not None:
        truth = dev.split.answers.numpy()
        evaluate = lambda m: {"dev_accuracy": float((predict(m, dev, device) == truth).mean())}   # noqa: E731
    train_config = TrainConfig(epochs=epochs, lr=config.lr, warmup_steps=min(50, steps // 10), schedule=config.schedule,
                               log_every=len(batches), restore_best=dev is not None)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    return train(model, _frozen_image_loss if frozen_image else classification_loss, batches, train_config, device, optimizer=optimizer, evaluate=evaluate)


def _frozen_image_loss(model: VQAModel, batch) -> torch.Tensor:
    """Cross-entropy with the image encoder in eval mode (a frozen encoder keeps its BatchNorm statistics)."""
    model.image.eval()
    return classification_loss(model, batch)


def predict(model: VQAModel, batches: QuestionBatches, device) -> np.ndarray:
    """The predicted answer (Q,) of every question of an unshuffled ``batches``, in the split's order (eval mode)."""
    if batches.shuffle:
        raise ValueError("predict needs unshuffled batches (shuffle=False)")
    was = model.training
    model.eval()
    preds = []
    try:
        with inference(device):
            for inputs, _answers in batches:
                preds.append(model(prepare_inputs(inputs, device)).argmax(-1).cpu())
    finally:
        model.train(was)
    out = torch.empty(len(batches.split), dtype=torch.long)
    out[batches.question_order()] = torch.cat(preds)
    return out.numpy()


def accuracy_by_type(pred: np.ndarray, truth: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Accuracy overall and per question type (``QUESTION_TYPES``; ``kinds`` (Q,) from :func:`question_types`)."""
    if not len(pred) == len(truth) == len(kinds):
        raise ValueError(f"pred, truth and kinds must have one length, got {len(pred)}, {len(truth)}, {len(kinds)}")
    correct = pred == truth
    out = {"all": float(correct.mean())}
    out.update({name: float(correct[kinds == k].mean()) for k, name in enumerate(QUESTION_TYPES) if (kinds == k).any()})
    return out
