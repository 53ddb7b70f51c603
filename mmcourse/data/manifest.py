"""Real data: a manifest of (image path, text, optional label) rows, JSONL or CSV.

A JSONL manifest holds one object per line with keys ``image``, ``text`` and
optionally ``label``; a CSV manifest has a header row with those columns.
Image paths are relative to the manifest's folder (the *root*) and may not
leave it. Every error names the file and the line.

Shape letters: N rows, S image side, L tokens.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .dataset import BatchedDataset, trim_padding
from .text import WORLD_VOCAB, Tokenizer

REQUIRED = ("image", "text")


@dataclass
class ManifestRow:
    image: Path          # resolved path inside the root
    text: str
    label: str | None
    line: int            # 1-based line in the manifest file


def _rows(path: Path):
    """Yield (line number, dict) from a .jsonl or .csv manifest."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as f:
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


def read_manifest(path) -> list[ManifestRow]:
    """Parse and validate a manifest; image files must exist inside its folder."""
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
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image file not found: {image}")
        label = record.get("label")
        rows.append(ManifestRow(image, record["text"], None if label in (None, "") else str(label), number))
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    return rows


def load_image(path: Path, size: int) -> np.ndarray:
    """Read an image file as RGB, resized to size x size: (3, S, S) uint8."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


@dataclass
class ManifestDataset(BatchedDataset):
    """A manifest loaded into tensors, batched like the generated datasets.

    Attributes: images (N, 3, S, S) uint8, text (N, L) int64, labels (N,) int64
    (-1 where the row has no label), class_names (sorted label strings).
    """

    images: torch.Tensor
    text: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices):
        """A batch (same layout as the generated datasets, without audio)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"image": self.images[idx].float() / 255.0, "text": trim_padding(self.text[idx])}, self.labels[idx]


def load_manifest(path, image_size: int = 32, tokenizer: Tokenizer | None = None,
                  class_names=None) -> ManifestDataset:
    """Load a manifest into a dataset; labels are mapped through ``class_names``
    (default: the sorted distinct labels of the file)."""
    rows = read_manifest(path)
    tokenizer = tokenizer or Tokenizer()
    names = tuple(class_names) if class_names is not None else tuple(sorted({r.label for r in rows if r.label}))
    index = {n: i for i, n in enumerate(names)}
    for r in rows:
        if r.label is not None and r.label not in index:
            raise ValueError(f"{path}:{r.line}: label {r.label!r} is not one of {list(names)}")
    images = np.stack([load_image(r.image, image_size) for r in rows])
    ids, _ = tokenizer.encode([r.text for r in rows])
    labels = [index[r.label] if r.label is not None else -1 for r in rows]
    return ManifestDataset(torch.from_numpy(images), torch.from_numpy(ids),
                           torch.tensor(labels, dtype=torch.long), names)


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
