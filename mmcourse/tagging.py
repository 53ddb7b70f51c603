"""Grounded token tagging of captions: a small multimodal named-entity recogniser (chapter 09).

Every caption token carries a BIO tag (:data:`mmcourse.data.text.TAGS`: ``O``,
``B-COLOR``, ``I-COLOR``, ... for COLOR, SHAPE, SIZE, POS, MATERIAL); several
entities span two or three tokens ("bright red", "in the top left corner" ->
``O O B-POS I-POS I-POS``).

- **Scoring.** :func:`entity_spans` turns a tag sequence into entities with the
  conlleval convention; :func:`entity_scores` scores predicted entities by exact
  span match (precision, recall, F1, micro and per type); :func:`token_report`
  is the token-level report in the article's layout (per B-/I- tag precision,
  recall, F1, support; micro, macro and weighted averages), ``O`` left out unless
  asked for. Counting ``O`` tokens flatters a weak tagger: most tokens are ``O``
  and easy.
- **Model.** :class:`GroundedTagger` reads the caption's token features (a
  course text encoder, e.g. :class:`~mmcourse.encoders.ConvTextEncoder`) plus,
  optionally, the image as context (an image encoder's pooled feature, projected
  and added to every token) and returns per-token tag logits. :class:`TaggingDataset`
  serves batches for :func:`mmcourse.training.train` with :func:`tagging_loss`;
  :func:`predict_tags` gives tag strings back; :func:`fit_tagger` is chapter 09's
  training recipe.
- **Baseline.** :class:`WordLookupTagger`: the most frequent tag of each word,
  no context (so "red" gets one tag, whether it starts an entity, "a red disc",
  or continues one, "a bright red disc": one of the two is wrong). :func:`tagger_scores`
  gives the three scores chapter 09 compares taggers by.

Tag sequences are lists of tag strings, one list per caption (padding dropped).

Shape letters: N captions, B batch, L tokens, D feature width, T tags, V vocabulary size.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn
from torch.nn import functional as F

from .data.dataset import BatchedDataset, MultimodalDataset, batch_index, gather_batch, make_loader
from .data.text import PAD_ID, TAGS, WORLD_VOCAB, Captions
from .encoders import ConvTextEncoder, Encoder
from .evaluation import EVAL_BATCH_SIZE, run_batches
from .metrics import classification_report
from .training import History, TrainConfig, train

IGNORE_INDEX = -100  # target of padding tokens: cross-entropy skips it


# ----------------------------------------------------------------------------- entities and scores

def _check_tag(tag, where: str) -> tuple[str, str]:
    """('B'|'I'|'O', type) of a tag string, or a ValueError naming ``where``."""
    if not isinstance(tag, str):
        raise TypeError(f"{where}: tags must be strings such as 'O' or 'B-COLOR', got {type(tag).__name__}")
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not kind:
        raise ValueError(f"{where}: invalid tag {tag!r}; expected 'O', 'B-<TYPE>' or 'I-<TYPE>'")
    return prefix, kind


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as (type, start, end) with ``end`` exclusive.

    conlleval's convention: ``B-X`` always starts a new entity (so ``B-X B-X`` is two
    adjacent entities); ``I-X`` continues an X entity and otherwise starts one
    (at position 0, after ``O``, after an entity of another type).

    Args:
        tags: (L,) tag strings, e.g. ``["O", "B-POS", "I-POS"]``.

    Raises:
        TypeError: if ``tags`` is a single string or holds a non-string.
        ValueError: naming the position of a tag that is not ``O``, ``B-T`` or ``I-T``.
    """
    if isinstance(tags, str):
        raise TypeError("tags must be a sequence of tag strings, got a single str")
    spans: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate(tags):
        prefix, t = _check_tag(tag, f"tags[{i}]")
        if kind is not None and (prefix != "I" or t != kind):
            spans.append((kind, start, i))
            kind = None
        if prefix != "O" and kind is None:
            kind, start = t, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans


def _check_corpus(pred, true) -> None:
    """Both are lists of tag sequences with equal lengths sentence by sentence."""
    for name, seqs in (("pred", pred), ("true", true)):
        if isinstance(seqs, (str, np.ndarray, torch.Tensor)) or not isinstance(seqs, Sequence):
            raise TypeError(f"{name} must be a list of tag sequences (one list of strings per sentence), "
                            f"got {type(seqs).__name__}")
    if len(pred) != len(true):
        raise ValueError(f"pred has {len(pred)} sentences but true has {len(true)}")
    for i, (p, t) in enumerate(zip(pred, true)):
        if isinstance(p, str) or isinstance(t, str):
            raise TypeError(f"sentence {i}: expected a list of tags, got a single str")
        if len(p) != len(t):
            raise ValueError(f"sentence {i}: pred has {len(p)} tags but true has {len(t)}")


def _prf(correct: int, predicted: int, support: int) -> dict[str, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / support if support else 0.0
    return {"precision": p, "recall": r, "f1-score": 2 * p * r / (p + r) if p + r else 0.0,
            "support": support, "predicted": predicted, "correct": correct}


def entity_scores(pred: Sequence[Sequence[str]], true: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 by exact span match.

    A predicted entity counts as correct when an entity of the same type, start
    and end exists in the same sentence of ``true``. Zero divisions give 0.

    Args:
        pred: N sentences of predicted tags, sentence i of length L_i.
        true: N sentences of true tags, the same lengths.

    Returns:
        ``{"micro avg": {...}, "per type": {TYPE: {...}}}``; each ``{...}`` holds
        ``precision``, ``recall``, ``f1-score``, ``support`` (true entities),
        ``predicted`` and ``correct`` (counts). Types are those of either side, sorted.

    Raises:
        TypeError, ValueError: for inputs that are not lists of tag lists, a sentence
            count or a sentence length that differ (the sentence index is named), invalid tags.
    """
    _check_corpus(pred, true)
    p_spans = {(i, *s) for i, seq in enumerate(pred) for s in entity_spans(seq)}
    t_spans = {(i, *s) for i, seq in enumerate(true) for s in entity_spans(seq)}
    hits = p_spans & t_spans
    count = lambda spans: Counter(s[1] for s in spans)          # noqa: E731  entities per type
    n_pred, n_true, n_hit = count(p_spans), count(t_spans), count(hits)
    kinds = sorted(set(n_pred) | set(n_true))
    return {"micro avg": _prf(len(hits), len(p_spans), len(t_spans)),
            "per type": {k: _prf(n_hit[k], n_pred[k], n_true[k]) for k in kinds}}


def entity_report(scores: Mapping, digits: int = 3) -> str:
    """:func:`entity_scores`' result as text: a row per entity type and the micro average."""
    rows = [*scores["per type"].items(), ("micro avg", scores["micro avg"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'entity':>{width}}  {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    for name, s in rows:
        if name == "micro avg":
            lines.append("")
        lines.append(f"{name:>{width}}  {s['precision']:>9.{digits}f} {s['recall']:>9.{digits}f} "
                     f"{s['f1-score']:>9.{digits}f} {s['support']:>9}")
    return "\n".join(lines)


def side_by_side(*texts: str, gap: int = 4) -> str:
    """Blocks of text printed next to each other (each padded to its widest line)."""
    blocks = [t.splitlines() for t in texts]
    widths = [max((len(line) for line in b), default=0) for b in blocks]
    height = max((len(b) for b in blocks), default=0)
    rows = [(" " * gap).join(f"{(b[i] if i < len(b) else ''):<{w}}" for b, w in zip(blocks, widths)).rstrip()
            for i in range(height)]
    return "\n".join(rows)


def tag_ids(seqs: Sequence[Sequence[str]], tags: Sequence[str] = TAGS) -> np.ndarray:
    """Flatten tag sequences into ids of ``tags``: N sentences of L_i strings -> (sum L_i,) int64.

    Raises:
        ValueError: naming the sentence and position of a tag not in ``tags``.
    """
    index = {t: i for i, t in enumerate(tags)}
    out = []
    for i, seq in enumerate(seqs):
        for j, tag in enumerate(seq):
            if tag not in index:
                raise ValueError(f"sentence {i}, token {j}: tag {tag!r} is not in the tag set {tuple(tags)}")
            out.append(index[tag])
    return np.asarray(out, dtype=np.int64)


def token_report(pred: Sequence[Sequence[str]], true: Sequence[Sequence[str]], tags: Sequence[str] = TAGS,
                 digits: int = 3, include_o: bool = False) -> tuple[str, dict]:
    """Token-level report in the article's layout: per-tag precision, recall, F1, support; micro, macro, weighted.

    Every token counts once. By default the rows and the averages cover the B-/I- tags
    only: ``O`` tokens are most of a caption and easy, and counting them would flatter a
    weak tagger (with ``include_o=True`` the micro average is the token accuracy).
    The result equals ``sklearn.metrics.classification_report`` on the flattened tag
    strings with ``labels`` = the tags reported.

    Args:
        pred: N sentences of predicted tag strings.
        true: N sentences of true tag strings, the same lengths.
        tags: the tag set (rows in this order); must contain ``"O"``.
        digits: decimals printed.
        include_o: also report the ``O`` tag and count it in the averages.

    Returns:
        The text and the dict (keys: the tags, ``"micro avg"``, ``"macro avg"``, ``"weighted avg"``).

    Raises:
        TypeError, ValueError: as :func:`entity_scores`, or for a tag outside ``tags``.
    """
    _check_corpus(pred, true)
    tags = tuple(tags)
    if "O" not in tags:
        raise ValueError(f"tags must contain 'O', got {tags}")
    p, t = tag_ids(pred, tags), tag_ids(true, tags)
    if len(t) == 0:
        raise ValueError("pred and true hold no tokens")
    if include_o:  # every tag listed: exactly mmcourse.metrics' report
        return classification_report(p, t, tags, digits=digits)
    labels = [i for i, tag in enumerate(tags) if tag != "O"]
    names = [tags[i] for i in labels]
    o = tags.index("O")
    if not ((p == o).any() or (t == o).any()):
        # No 'O' token at all: renumber the other tags 0..T-2 and every tag is listed, as in mmcourse.metrics
        # (scikit-learn would print its micro average as 'accuracy' here).
        remap = np.full(len(tags), -1)
        remap[labels] = np.arange(len(labels))
        return classification_report(remap[p], remap[t], names, digits=digits)
    kwargs = dict(labels=labels, target_names=names, zero_division=0)
    return (skm.classification_report(t, p, digits=digits, **kwargs),
            skm.classification_report(t, p, output_dict=True, **kwargs))


# ----------------------------------------------------------------------------- data

def gold_tags(dataset) -> list[list[str]]:
    """The true tags of every caption of a :class:`MultimodalDataset` (or :class:`TaggingDataset`), padding dropped."""
    base = dataset.dataset if isinstance(dataset, TaggingDataset) else dataset
    if not isinstance(base, MultimodalDataset):
        raise TypeError(f"dataset must be a MultimodalDataset or TaggingDataset, got {type(dataset).__name__}")
    return Captions(ids=base.text.numpy(), tags=base.tags.numpy()).tag_strings()


class TaggingDataset(BatchedDataset):
    """Batches for tagging: ``({"image": (B, 3, S, S), "text": (B, L)}, tags (B, L))``.

    Padding tokens get the target :data:`IGNORE_INDEX` (-100), which :func:`tagging_loss`
    skips. Whole batches by fancy indexing (``__getitems__``), no Python per sample.

    Args:
        dataset: a :class:`~mmcourse.data.MultimodalDataset` (captions, their tags, images).
        image: include the images (False skips decoding them, for text-only taggers).
    """

    def __init__(self, dataset: MultimodalDataset, image: bool = True):
        if not isinstance(dataset, MultimodalDataset):
            raise TypeError(f"dataset must be a MultimodalDataset, got {type(dataset).__name__}")
        self.dataset, self.image = dataset, image

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The inputs {"image": (N, 3, S, S) uint8 (if ``image``), "text": (N, L)}."""
        return {"image": self.dataset.images, "text": self.dataset.text} if self.image else {"text": self.dataset.text}

    def __getitems__(self, indices) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs = gather_batch(self.tensors, indices)                          # text (B, L') trimmed
        tags = self.dataset.tags[batch_index(indices), : inputs["text"].shape[1]]
        return inputs, tags.masked_fill(inputs["text"] == PAD_ID, IGNORE_INDEX)


def tagging_loss(model: nn.Module, batch) -> torch.Tensor:
    """Token cross-entropy for :func:`mmcourse.training.train`, padding (target -100) ignored.

    ``batch`` is ``(inputs, target (B, L))``; ``model(inputs)`` returns logits (B, L, T).
    """
    inputs, target = batch
    logits = model(inputs)
    if logits.shape[:2] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match the targets {tuple(target.shape)} "
                         f"(expected logits (B, L, T) for targets (B, L))")
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX)


def predict_tags(model: nn.Module, dataset, device, batch_size: int = EVAL_BATCH_SIZE) -> list[list[str]]:
    """Predicted tag strings of every caption in ``dataset``, in order, padding dropped.

    Args:
        model: returns logits (B, L, T) over :data:`TAGS` for ``inputs`` with "text" (and "image");
            run in eval mode, its train/eval mode restored afterwards.
        dataset: a :class:`MultimodalDataset` or a :class:`TaggingDataset`.
        device: where the model runs.
        batch_size: captions per forward pass.
    """
    data = dataset if isinstance(dataset, TaggingDataset) else TaggingDataset(dataset)
    width = data.dataset.text.shape[1]
    if len(data) == 0:
        return []

    def tag_ids(model: nn.Module, batch) -> torch.Tensor:
        ids = model(batch[0]).argmax(-1)                                  # (B, L'): the batch's longest caption
        return F.pad(ids, (0, width - ids.shape[1]))                      # (B, L)

    pred = run_batches(model, tag_ids, data, device, batch_size)
    return Captions(ids=data.dataset.text.numpy(), tags=pred.numpy()).tag_strings()


def tagger_scores(pred: Sequence[Sequence[str]], true: Sequence[Sequence[str]]) -> dict[str, float]:
    """Token micro-F1 counting ``O`` (= token accuracy), token micro-F1 over the B-/I- tags, and entity F1."""
    return {"token micro-F1 with O": token_report(pred, true, include_o=True)[1]["micro avg"]["f1-score"],
            "token micro-F1 (B-/I- only)": token_report(pred, true)[1]["micro avg"]["f1-score"],
            "entity F1": entity_scores(pred, true)["micro avg"]["f1-score"]}


# ----------------------------------------------------------------------------- models

class GroundedTagger(nn.Module):
    """Per-token tag logits from a caption's token features, with the image as optional context.

    ``h_l = tokens(text)_l + W image_encoder(image)`` for every token l (the image's
    pooled feature, projected to the token width, is added to every token), then an
    MLP head ``Linear(D, D), ReLU, Linear(D, T)``.

    Args:
        text_encoder: a token encoder (``.tokens(ids) -> (B, L, D), (B, L)``), e.g.
            :class:`~mmcourse.encoders.ConvTextEncoder` (default, dim 64) or
            :class:`~mmcourse.encoders.TransformerTextEncoder`.
        image_encoder: an encoder of ``inputs["image"]`` returning (B, D_img) features,
            e.g. a deep copy of stage 1's ``encoders["image"]``; None = text only.
        num_tags: T (default ``len(TAGS)``).
        freeze_image: keep the image encoder's weights fixed (and its BatchNorm in eval mode); this sets
            ``requires_grad=False`` on the given encoder in place, so pass a copy of a shared one.

    Raises:
        TypeError: if ``text_encoder`` has no token features.
    """

    def __init__(self, text_encoder: Encoder | None = None, image_encoder: nn.Module | None = None,
                 num_tags: int = len(TAGS), freeze_image: bool = True):
        super().__init__()
        text_encoder = ConvTextEncoder(dim=64) if text_encoder is None else text_encoder
        if not getattr(text_encoder, "has_tokens", False) or not hasattr(text_encoder, "out_dim"):
            raise TypeError(f"text_encoder must be an Encoder with token features, got {type(text_encoder).__name__}")
        dim = text_encoder.out_dim
        self.text_encoder, self.image_encoder, self.freeze_image = text_encoder, image_encoder, freeze_image
        self.image_project = None
        if image_encoder is not None:
            self.image_project = nn.Linear(image_encoder.out_dim, dim)
            if freeze_image:
                image_encoder.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_tags))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_encoder is not None and self.freeze_image:
            self.image_encoder.eval()        # frozen: its BatchNorm statistics stay those it came with
        return self

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Tag logits (B, L, T) for ``inputs["text"]`` (B, L) ids and, with an image encoder, ``inputs["image"]``."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a dict with 'text' (B, L) (and 'image'), got {type(inputs).__name__}")
        if "text" not in inputs:
            raise ValueError(f"inputs have no 'text' entry (keys: {sorted(inputs)})")
        feats, _ = self.text_encoder.tokens(inputs["text"])                 # (B, L, D)
        if self.image_encoder is not None:
            if "image" not in inputs:
                raise ValueError(f"this tagger reads the image as context, but inputs have no 'image' entry "
                                 f"(keys: {sorted(inputs)})")
            image = inputs["image"]
            if image.shape[:1] != feats.shape[:1]:
                raise ValueError(f"image batch {tuple(image.shape)} does not match text batch "
                                 f"{tuple(inputs['text'].shape)}")
            context = self.image_project(self.image_encoder(image))        # (B, D)
            feats = feats + context.unsqueeze(1)
        return self.head(feats)


class WordLookupTagger(nn.Module):
    """The weak baseline: each word gets its most frequent training tag, whatever its neighbours.

    ``forward`` returns one-hot "logits" (B, L, T) from a (V, T) table, so
    :func:`predict_tags` works with it. Unseen words get ``O``.
    """

    def __init__(self, vocab_size: int = len(WORLD_VOCAB), num_tags: int = len(TAGS)):
        super().__init__()
        table = torch.zeros(vocab_size, num_tags)
        table[:, 0] = 1.0
        self.register_buffer("table", table)

    @classmethod
    def fit(cls, dataset: MultimodalDataset, vocab_size: int = len(WORLD_VOCAB)) -> "WordLookupTagger":
        """Count (word, tag) pairs over the real tokens of ``dataset`` (vectorised) and keep the most frequent tag."""
        if not isinstance(dataset, MultimodalDataset):
            raise TypeError(f"dataset must be a MultimodalDataset, got {type(dataset).__name__}")
        model = cls(vocab_size)
        real = dataset.text != PAD_ID
        counts = torch.zeros(vocab_size * len(TAGS))
        counts.index_add_(0, (dataset.text[real] * len(TAGS) + dataset.tags[real]).long(),
                          torch.ones(int(real.sum())))
        counts = counts.view(vocab_size, len(TAGS))
        seen = counts.sum(1) > 0
        model.table[seen] = F.one_hot(counts[seen].argmax(1), len(TAGS)).float()
        return model

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(inputs, Mapping) or "text" not in inputs:
            raise ValueError("inputs must be a dict with a 'text' (B, L) entry")
        return self.table[inputs["text"]]


def fit_tagger(train_set: MultimodalDataset, image_encoder: nn.Module | None, *, epochs: int, batch_size: int,
               lr: float, device, seed: int = 0, dim: int = 64) -> tuple[GroundedTagger, History]:
    """A :class:`GroundedTagger` on a fresh ``ConvTextEncoder(dim)``, trained with :func:`tagging_loss`.

    Args:
        train_set: captions with gold tags (and images when ``image_encoder`` is given).
        image_encoder: the image context (frozen by the tagger, so pass a copy), or None: text only.
        epochs, batch_size, lr: the training loop's settings (Adam, cosine decay).
        device: where it trains.
        seed: seeds torch's global generator (the new layers) and the shuffle.
        dim: D, the token width.

    Returns:
        (the trained tagger, its training :class:`~mmcourse.training.History`).
    """
    torch.manual_seed(seed)
    model = GroundedTagger(ConvTextEncoder(dim=dim), image_encoder).to(device)
    loader = make_loader(TaggingDataset(train_set, image=image_encoder is not None), batch_size, shuffle=True,
                         seed=seed)
    return model, train(model, tagging_loss, loader, TrainConfig(epochs=epochs, lr=lr, progress=False), device)
