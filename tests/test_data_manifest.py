"""mmcourse.data.manifest: round trips through files the tests write, and every
malformed input named by file and line."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmcourse.data.dataset import make_loader
from mmcourse.data.manifest import load_manifest, read_manifest, write_manifest
from mmcourse.data.text import WORLD_VOCAB, Tokenizer

N = 6  # rows written per manifest


@pytest.fixture
def tiny_image(tmp_path):
    """A 4x4 PNG inside tmp_path: images/a.png."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "images" / "a.png")
    return "images/a.png"


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_write_then_load_round_trip(small_dataset, tmp_path, fmt):
    path = write_manifest(small_dataset, tmp_path, n=N, fmt=fmt)
    assert path == tmp_path / f"manifest.{fmt}"
    loaded = load_manifest(path, image_size=32, class_names=small_dataset.class_names)
    assert len(loaded) == N
    assert torch.equal(loaded.images, small_dataset.images[:N])          # PNG is lossless, size unchanged
    assert torch.equal(loaded.labels, small_dataset.labels[:N])
    assert loaded.class_names == small_dataset.class_names
    expected_ids, _ = Tokenizer().encode(WORLD_VOCAB.decode(small_dataset.text[:N].numpy()))
    np.testing.assert_array_equal(loaded.text.numpy(), expected_ids)


def test_default_class_names_are_the_sorted_labels_of_the_file(small_dataset, tmp_path):
    loaded = load_manifest(write_manifest(small_dataset, tmp_path, n=N))
    original = [small_dataset.class_names[int(i)] for i in small_dataset.labels[:N]]
    assert loaded.class_names == tuple(sorted(set(original)))
    assert [loaded.class_names[int(i)] for i in loaded.labels] == original


def test_loaded_manifest_batches_like_a_generated_dataset(small_dataset, tmp_path):
    loaded = load_manifest(write_manifest(small_dataset, tmp_path, n=N), image_size=16)
    inputs, label = next(iter(make_loader(loaded, batch_size=4)))
    assert inputs["image"].shape == (4, 3, 16, 16) and inputs["image"].dtype == torch.float32
    assert inputs["text"].shape[0] == 4 and label.shape == (4,)
    one, lab = loaded[0]
    assert one["image"].shape == (3, 16, 16) and lab.shape == ()


def test_rows_without_a_label_get_minus_one(tmp_path, tiny_image):
    path = _jsonl(tmp_path / "m.jsonl", [{"image": tiny_image, "text": "a red disc", "label": "x"},
                                         {"image": tiny_image, "text": "a blue disc"}])
    loaded = load_manifest(path, image_size=8)
    assert loaded.labels.tolist() == [0, -1] and loaded.class_names == ("x",)


def test_blank_jsonl_lines_are_skipped_and_line_numbers_kept(tmp_path, tiny_image):
    row = json.dumps({"image": tiny_image, "text": "a disc"})
    path = tmp_path / "m.jsonl"
    path.write_text(f"{row}\n\n{row}\n", encoding="utf-8")
    assert [r.line for r in read_manifest(path)] == [1, 3]


def test_malformed_jsonl_row_names_file_and_line(tmp_path, tiny_image):
    good = {"image": tiny_image, "text": "a disc"}
    path = _jsonl(tmp_path / "manifest.jsonl", [good, good, "{not json"])
    with pytest.raises(ValueError, match=r"manifest\.jsonl:3: not valid JSON"):
        read_manifest(path)


def test_jsonl_row_that_is_not_an_object(tmp_path, tiny_image):
    path = _jsonl(tmp_path / "manifest.jsonl", [{"image": tiny_image, "text": "a"}, "[1, 2]"])
    with pytest.raises(ValueError, match=r"manifest\.jsonl:2: expected a JSON object, got list"):
        read_manifest(path)


@pytest.mark.parametrize("record, message", [
    ({"text": "a disc"}, "field 'image' must be a non-empty string, got None"),
    ({"image": "images/a.png", "text": "  "}, "field 'text' must be a non-empty string, got '  '"),
    ({"image": 3, "text": "a"}, "field 'image' must be a non-empty string, got 3"),
])
def test_missing_or_empty_fields(tmp_path, tiny_image, record, message):
    path = _jsonl(tmp_path / "manifest.jsonl", [{"image": tiny_image, "text": "ok"}, record])
    with pytest.raises(ValueError, match=re.escape(f"manifest.jsonl:2: {message}")):
        read_manifest(path)


def test_missing_image_names_its_path(tmp_path, tiny_image):
    path = _jsonl(tmp_path / "manifest.jsonl", [{"image": "images/gone.png", "text": "a disc"}])
    missing = (tmp_path / "images" / "gone.png").resolve()
    with pytest.raises(FileNotFoundError, match=re.escape(f"manifest.jsonl:1: image file not found: {missing}")):
        read_manifest(path)


@pytest.mark.parametrize("escape", ["../outside.png", "images/../../outside.png", "/etc/hostname"])
def test_path_escaping_the_root_raises(tmp_path, escape):
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "outside.png")  # exists, but outside
    path = _jsonl(root / "manifest.jsonl", [{"image": escape, "text": "a disc"}])
    message = f"manifest.jsonl:1: image path {escape!r} escapes the dataset root"
    with pytest.raises(ValueError, match=re.escape(message)):
        read_manifest(path)


def test_symlink_leaving_the_root_raises(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    path = _jsonl(root / "manifest.jsonl", [{"image": "link.png", "text": "a disc"}])
    with pytest.raises(ValueError, match="escapes the dataset root"):
        read_manifest(path)


def test_csv_missing_column(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image,label\nimages/a.png,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("manifest.csv:1: CSV header lacks column(s) ['text']")):
        read_manifest(path)


def test_csv_bad_row_names_its_line(tmp_path, tiny_image):
    path = tmp_path / "manifest.csv"
    path.write_text(f"image,text,label\n{tiny_image},a disc,x\n{tiny_image},,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("manifest.csv:3: field 'text' must be a non-empty string")):
        read_manifest(path)


def test_label_outside_class_names(tmp_path, tiny_image):
    path = _jsonl(tmp_path / "manifest.jsonl", [{"image": tiny_image, "text": "a", "label": "cat"}])
    with pytest.raises(ValueError, match=re.escape("manifest.jsonl:1: label 'cat' is not one of ['dog']")):
        load_manifest(path, class_names=["dog"])


def test_unreadable_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = _jsonl(tmp_path / "manifest.jsonl", [{"image": "bad.png", "text": "a"}])
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {(tmp_path / 'bad.png').resolve()}")):
        load_manifest(path)


def test_missing_empty_and_unsupported_manifests(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found: .*nothing.jsonl"):
        read_manifest(tmp_path / "nothing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.jsonl: the manifest has no rows"):
        read_manifest(tmp_path / "empty.jsonl")
    (tmp_path / "m.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="m.txt: manifest must end in .jsonl or .csv, got '.txt'"):
        read_manifest(tmp_path / "m.txt")


def test_write_manifest_rejects_unknown_format(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="fmt must be 'jsonl' or 'csv', got 'xml'"):
        write_manifest(small_dataset, tmp_path, n=1, fmt="xml")


def test_manifest_batches_trim_padding_like_generated_ones(tmp_path, tiny_image):
    rows = [{"image": tiny_image, "text": "a red disc"},
            {"image": tiny_image, "text": "in the top left there is a very large crimson wooden disc"}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_manifest(path, image_size=8)
    assert loaded.text.shape[1] == 12                      # stored padded to the longest caption
    inputs, _ = loaded.__getitems__([0])
    assert inputs["text"].tolist() == Tokenizer().encode(["a red disc"])[0].tolist()  # (1, 3): no padding
