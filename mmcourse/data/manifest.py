"""Real data: a manifest of (image path, text, optional label) rows, JSONL or CSV.

A JSONL manifest holds one object per line with keys ``image``, ``text`` and
optionally ``label``; a CSV manifest has a header row with those columns (read as
``utf-8-sig``, so a spreadsheet's byte-order mark is dropped). Image paths are
relative to the manifest's folder (the *root*) and may not leave it. Every error
names the file and the line.

With the defaults, the vocabulary is built from the training captions and kept on
the dataset (``dataset.tokenizer``, ``dataset.vocab``: pass ``len(dataset.vocab)``
as a text encoder's ``vocab_size``), the class order comes from the training
labels (numeric labels in numeric order), and :func:`load_manifest_splits` gives
dev and test the same tokenizer and class order. Images are decoded into memory
once (vectorised batches); ``lazy=True`` reads them per batch instead, with an
optional per-sample ``transform`` and ``normalize``.

Shape letters: N rows, B batch, S image side, L tokens.
"""
from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dataset import SPLIT_FRACTIONS, BatchedDataset, batch_index, gather_batch, split_indices
from .text import WORLD_VOCAB, Tokenizer, Vocab, build_vocab, unknown_fraction

REQUIRED = ("image", "text")
UNKNOWN_WARN_FRACTION = 0.2  # more than 20 % of a split's tokens <unk>: the vocabulary does not fit the data


class UnknownWordsWarning(UserWarning):
    """Many tokens of a split are ``<unk>``: the vocabulary does not fit the captions."""


@dataclass
class ManifestRow:
    image: Path          # resolved path inside the root
    text: str
    label: str | None
    line: int            # 1-based line in the manifest file
    manifest: Path       # the manifest file the row comes from

    @property
    def where(self) -> str:
        """``manifest:line``, for error messages."""
        return f"{self.manifest}:{self.line}"


def _rows(path: Path):
    """Yield (line number, dict) from a .jsonl or .csv manifest."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as f:
        if suffix == ".jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
        elif suffix == ".csv":
            reader = csv.DictReader(f)
            missing = [k for k in REQUIRED if k not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}:1: CSV header lacks column(s) {missing}; found {reader.fieldnames}")
            for record in reader:
                yield reader.line_num, record
        else:
            raise ValueError(f"{path}: manifest must end in .jsonl or .csv, got {suffix or 'no suffix'!r}")


def _inside(root: Path, relative: str, where: str) -> Path:
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise ValueError(f"{where}: image path {relative!r} escapes the dataset root {root}")
    return candidate


def _check_image_file(image: Path, where: str) -> None:
    if image.is_dir():
        raise ValueError(f"{where}: image path {image} is a folder, not an image file")
    if not image.is_file():
        raise FileNotFoundError(f"{where}: image file not found: {image}")
    if image.stat().st_size == 0:
        raise ValueError(f"{where}: image file {image} is empty (0 bytes)")


def read_manifest(path) -> list[ManifestRow]:
    """Parse and validate a manifest; image files must exist inside its folder and not be empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    root = path.parent.resolve()
    rows = []
    for number, record in _rows(path):
        where = f"{path}:{number}"
        for key in REQUIRED:
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {record.get(key)!r}")
        image = _inside(root, record["image"], where)
        _check_image_file(image, where)
        label = record.get("label")
        rows.append(ManifestRow(image, record["text"], None if label in (None, "") else str(label), number, path))
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    return rows


def load_image(path: Path, size: int, where: str = "") -> np.ndarray:
    """Read an image file as RGB, resized to size x size: (3, S, S) uint8.

    Raises:
        ValueError: naming ``where`` (``manifest:line``) and the path if the file cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (OSError, SyntaxError) as exc:  # PIL reports broken files as either
        raise ValueError(f"{where + ': ' if where else ''}cannot read image {path}: {exc}") from None


def class_order(labels) -> tuple[str, ...]:
    """The sorted distinct labels: numeric order if every label is a number (1, 2, 10), else text order."""
    names = set(labels)
    try:
        return tuple(sorted(names, key=lambda n: (float(n), n)))
    except ValueError:
        return tuple(sorted(names))


def _label_ids(rows: Sequence[ManifestRow], names: tuple[str, ...], allow_unlabelled: bool) -> torch.Tensor:
    """Class index of every row (N,) int64, -1 for an allowed unlabelled row."""
    index = {n: i for i, n in enumerate(names)}
    for r in rows:
        if r.label is None and not allow_unlabelled:
            raise ValueError(f"{r.where}: the row has no label; pass allow_unlabelled=True to keep "
                             f"unlabelled rows (label -1)")
        if r.label is not None and r.label not in index:
            raise ValueError(f"{r.where}: label {r.label!r} is not one of {list(names)} (the training classes)")
    return torch.tensor([index[r.label] if r.label is not None else -1 for r in rows], dtype=torch.long)


@dataclass
class ManifestDataset(BatchedDataset):
    """A manifest loaded into tensors, batched like the generated datasets.

    Attributes: images (N, 3, S, S) uint8, text (N, L) int64, labels (N,) int64
    (-1 where an unlabelled row was allowed), class_names (the training classes, in
    order), tokenizer (its ``vocab`` built from the training captions by default).
    """

    images: torch.Tensor
    text: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    tokenizer: Tokenizer

    @property
    def vocab(self) -> Vocab:
        """The vocabulary of the text ids: pass ``len(dataset.vocab)`` as a text encoder's ``vocab_size``."""
        return self.tokenizer.vocab

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The inputs: image (N, 3, S, S) uint8, text (N, L)."""
        return {"image": self.images, "text": self.text}


@dataclass
class LazyManifestDataset(BatchedDataset):
    """A manifest whose images are read from disk per batch: for data that does not fit in memory.

    Text and labels are held as tensors; each image is decoded, resized to S x S, passed
    to ``transform`` (any callable on a (3, S, S) uint8 tensor returning a (3, S', S')
    tensor, e.g. a ``torchvision.transforms.v2`` pipeline), scaled to [0, 1] if still
    uint8, then standardised per channel by ``normalize = (mean, std)``.

    Attributes: rows (N,) object array of :class:`ManifestRow`, text (N, L) int64,
    labels (N,) int64, class_names, tokenizer, image_size S, transform, normalize.
    """

    rows: np.ndarray
    text: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    tokenizer: Tokenizer
    image_size: int
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    normalize: tuple[Sequence[float], Sequence[float]] | None = None

    @property
    def vocab(self) -> Vocab:
        """The vocabulary of the text ids: pass ``len(dataset.vocab)`` as a text encoder's ``vocab_size``."""
        return self.tokenizer.vocab

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The inputs held in memory: text (N, L); images are read in :meth:`__getitems__`."""
        return {"text": self.text}

    def _image(self, row: ManifestRow) -> torch.Tensor:
        x = torch.from_numpy(load_image(row.image, self.image_size, row.where))  # (3, S, S) uint8
        if self.transform is not None:
            x = self.transform(x)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def __getitems__(self, indices) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = batch_index(indices)
        images = torch.stack([self._image(r) for r in self.rows[idx.numpy()]])  # (B, 3, S', S')
        if self.normalize is not None:
            mean, std = (torch.as_tensor(v, dtype=images.dtype).view(1, -1, 1, 1) for v in self.normalize)
            images = (images - mean) / std
        inputs = gather_batch(self.tensors, idx)
        inputs["image"] = images
        return dict(sorted(inputs.items())), self.labels[idx]


def _object_array(items) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def _is_mean_std(normalize) -> bool:
    try:
        return len(normalize) == 2 and all(len(v) == 3 for v in normalize)
    except TypeError:  # not sized: a number where a sequence belongs
        return False


def _check_lazy_options(lazy: bool, transform, normalize) -> None:
    if not lazy and (transform is not None or normalize is not None):
        raise ValueError("transform and normalize apply to images read per batch: pass lazy=True with them")
    if normalize is not None and not _is_mean_std(normalize):
        raise ValueError(f"normalize must be (mean, std), three numbers each (RGB), got {normalize!r}")


def _build(rows: list[ManifestRow], name: str, tokenizer: Tokenizer, class_names: tuple[str, ...], image_size: int,
           allow_unlabelled: bool, lazy: bool, transform=None, normalize=None):
    """One split as a dataset; warns (:class:`UnknownWordsWarning`) when its text is mostly unknown."""
    labels = _label_ids(rows, class_names, allow_unlabelled)
    ids, _ = tokenizer.encode([r.text for r in rows])
    unknown = unknown_fraction(ids)
    if unknown > UNKNOWN_WARN_FRACTION:
        split = f" of the {name} split" if name else ""
        warnings.warn(f"{rows[0].manifest}: {unknown:.0%} of the tokens{split} are <unk>, more than "
                      f"UNKNOWN_WARN_FRACTION = {UNKNOWN_WARN_FRACTION:.0%}; the vocabulary has {len(tokenizer.vocab)} "
                      f"words", UnknownWordsWarning, stacklevel=3)
    text = torch.from_numpy(ids)
    if lazy:
        return LazyManifestDataset(_object_array(rows), text, labels, class_names, tokenizer, image_size,
                                   transform, normalize)
    images = np.stack([load_image(r.image, image_size, r.where) for r in rows])
    return ManifestDataset(torch.from_numpy(images), text, labels, class_names, tokenizer)


def _training_defaults(train_rows: list[ManifestRow], tokenizer, class_names) -> tuple[Tokenizer, tuple[str, ...]]:
    """The tokenizer and class order: given ones, else built from the training rows."""
    tokenizer = tokenizer if tokenizer is not None else Tokenizer(build_vocab([r.text for r in train_rows]))
    names = tuple(class_names) if class_names is not None else class_order(r.label for r in train_rows if r.label)
    return tokenizer, names


def load_manifest(path, image_size: int = 32, tokenizer: Tokenizer | None = None, class_names=None, *,
                  allow_unlabelled: bool = False, lazy: bool = False, transform=None, normalize=None):
    """Load one manifest file as a dataset (a :class:`ManifestDataset`, or a :class:`LazyManifestDataset`).

    Args:
        path: a .jsonl or .csv manifest.
        image_size: S; every image is resized to S x S.
        tokenizer: default: a vocabulary built from this file's captions (:func:`build_vocab`).
        class_names: the class order; default: this file's labels (:func:`class_order`).
        allow_unlabelled: keep rows without a label (label -1); by default they raise.
        lazy: read images per batch instead of into memory; ``transform`` and ``normalize`` need it.

    Raises:
        ValueError / FileNotFoundError: naming ``manifest:line`` for any bad row or image.
    """
    _check_lazy_options(lazy, transform, normalize)
    rows = read_manifest(path)
    tokenizer, names = _training_defaults(rows, tokenizer, class_names)
    return _build(rows, "", tokenizer, names, image_size, allow_unlabelled, lazy, transform, normalize)


def load_manifest_splits(train, dev=None, test=None, *, fractions=SPLIT_FRACTIONS, seed: int = 0,
                         image_size: int = 32, tokenizer: Tokenizer | None = None, class_names=None,
                         allow_unlabelled: bool = False, lazy: bool = False, transform=None,
                         normalize=None) -> dict[str, BatchedDataset]:
    """Train, dev and test datasets in one call, sharing one tokenizer and one class order.

    Give three files (``train``, ``dev``, ``test``), or one file (``train`` alone) to be
    split at random into ``fractions`` (train, dev, test) with ``seed``. Either way the
    vocabulary and the class order come from the training rows only (unless given), so a
    dev or test label unseen in training raises, naming its file and line, and unseen
    words become ``<unk>`` (a warning when more than 20 % of a split's tokens are).

    Args:
        train, dev, test: manifest paths (dev and test both given, or both omitted).
        fractions, seed: the split of a single file (:func:`mmcourse.data.dataset.split_indices`).
        transform: per-sample image transform for the *training* split only (augmentation); needs ``lazy``.
        Other arguments: as :func:`load_manifest`.

    Returns:
        {"train": dataset, "dev": dataset, "test": dataset}.
    """
    _check_lazy_options(lazy, transform, normalize)
    if (dev is None) != (test is None):
        raise ValueError(f"give both dev and test manifests, or neither (to split train); got dev={dev!r}, "
                         f"test={test!r}")
    if dev is None:
        rows = read_manifest(train)
        parts = split_indices(len(rows), fractions, seed)
        splits = {k: [rows[i] for i in v] for k, v in parts.items()}
    else:
        splits = {"train": read_manifest(train), "dev": read_manifest(dev), "test": read_manifest(test)}
    tokenizer, names = _training_defaults(splits["train"], tokenizer, class_names)
    return {k: _build(rows, k, tokenizer, names, image_size, allow_unlabelled, lazy,
                      transform if k == "train" else None, normalize) for k, rows in splits.items()}


def write_manifest(dataset, root, n: int | None = None, fmt: str = "jsonl") -> Path:
    """Write generated scenes as PNG files plus a manifest under ``root`` (for demos and tests)."""
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"fmt must be 'jsonl' or 'csv', got {fmt!r}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    n = len(dataset) if n is None else min(n, len(dataset))
    captions = WORLD_VOCAB.decode(dataset.text[:n].numpy())
    records = []
    for i in range(n):
        name = f"images/{i:05d}.png"
        Image.fromarray(dataset.images[i].numpy().transpose(1, 2, 0)).save(root / name)
        records.append({"image": name, "text": captions[i], "label": dataset.class_names[int(dataset.labels[i])]})
    path = root / f"manifest.{fmt}"
    with path.open("w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            f.writelines(json.dumps(r) + "\n" for r in records)
        else:
            writer = csv.DictWriter(f, fieldnames=["image", "text", "label"])
            writer.writeheader()
            writer.writerows(records)
    return path
