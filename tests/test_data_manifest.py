"""mmcourse.data.manifest: round trips through files the tests write, and every
malformed input named by file and line."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mmcourse.data.dataset import make_loader, split_dataset, subset, take
from mmcourse.data.manifest import (LazyManifestDataset, UnknownWordsWarning, class_order, load_manifest,
                                    load_manifest_splits, read_manifest, write_manifest)
from mmcourse.data.text import UNK_ID, WORLD_VOCAB, Tokenizer
from mmcourse.encoders import MeanPoolTextEncoder

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
    loaded = load_manifest(path, image_size=32, tokenizer=Tokenizer(WORLD_VOCAB), class_names=small_dataset.class_names)
    assert len(loaded) == N
    assert torch.equal(loaded.images, small_dataset.images[:N])          # PNG is lossless, size unchanged
    assert torch.equal(loaded.labels, small_dataset.labels[:N])
    assert loaded.class_names == small_dataset.class_names
    expected_ids, _ = Tokenizer().encode(WORLD_VOCAB.decode(small_dataset.text[:N].numpy()))
    np.testing.assert_array_equal(loaded.text.numpy(), expected_ids)


def test_default_class_names_are_the_sorted_labels_of_the_file(small_dataset, tmp_path):
    loaded = load_manifest(write_manifest(small_dataset, tmp_path, n=N), tokenizer=Tokenizer(WORLD_VOCAB))
    original = [small_dataset.class_names[int(i)] for i in small_dataset.labels[:N]]
    assert loaded.class_names == tuple(sorted(set(original)))
    assert [loaded.class_names[int(i)] for i in loaded.labels] == original


def test_loaded_manifest_batches_like_a_generated_dataset(small_dataset, tmp_path):
    path = write_manifest(small_dataset, tmp_path, n=N)
    loaded = load_manifest(path, image_size=16, tokenizer=Tokenizer(WORLD_VOCAB))
    inputs, label = next(iter(make_loader(loaded, batch_size=4)))
    assert inputs["image"].shape == (4, 3, 16, 16) and inputs["image"].dtype == torch.float32
    assert inputs["text"].shape[0] == 4 and label.shape == (4,)
    one, lab = loaded[0]
    assert one["image"].shape == (3, 16, 16) and lab.shape == ()


def test_rows_without_a_label_get_minus_one(tmp_path, tiny_image):
    path = _jsonl(tmp_path / "m.jsonl", [{"image": tiny_image, "text": "a red disc", "label": "x"},
                                         {"image": tiny_image, "text": "a blue disc"}])
    loaded = load_manifest(path, image_size=8, tokenizer=Tokenizer(WORLD_VOCAB), allow_unlabelled=True)
    assert loaded.labels.tolist() == [0, -1] and loaded.class_names == ("x",)


def test_rows_without_a_label_are_refused_by_default(tmp_path, tiny_image):
    path = _jsonl(tmp_path / "m.jsonl", [{"image": tiny_image, "text": "a red disc", "label": "x"},
                                         {"image": tiny_image, "text": "a blue disc"}])
    with pytest.raises(ValueError, match=r"m\.jsonl:2: the row has no label; pass allow_unlabelled=True"):
        load_manifest(path, image_size=8)


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


def test_unreadable_image_names_manifest_line_and_path(tmp_path, tiny_image):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = _jsonl(tmp_path / "manifest.jsonl", [{"image": tiny_image, "text": "a", "label": "x"},
                                                {"image": "bad.png", "text": "a", "label": "x"}])
    bad = (tmp_path / "bad.png").resolve()
    with pytest.raises(ValueError, match=re.escape(f"manifest.jsonl:2: cannot read image {bad}")):
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
    loaded = load_manifest(path, image_size=8, tokenizer=Tokenizer(WORLD_VOCAB), allow_unlabelled=True)
    assert loaded.text.shape[1] == 12                      # stored padded to the longest caption
    inputs, _ = loaded.__getitems__([0])
    assert inputs["text"].tolist() == Tokenizer().encode(["a red disc"])[0].tolist()  # (1, 3): no padding


def test_empty_file_and_folder_as_image_name_manifest_line_and_path(tmp_path, tiny_image):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    for name, message in [("empty.png", "is empty (0 bytes)"), ("folder.png", "is a folder, not an image file")]:
        path = _jsonl(tmp_path / "manifest.jsonl", [{"image": tiny_image, "text": "a"}, {"image": name, "text": "a"}])
        expected = f"manifest.jsonl:2: image path {(tmp_path / name).resolve()} {message}" if name == "folder.png" \
            else f"manifest.jsonl:2: image file {(tmp_path / name).resolve()} {message}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            read_manifest(path)


def test_csv_with_a_byte_order_mark_keeps_its_first_column(tmp_path, tiny_image):
    path = tmp_path / "manifest.csv"
    path.write_text(f"image,text,label\n{tiny_image},a red disc,x\n", encoding="utf-8-sig")  # as Excel saves it
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    rows = read_manifest(path)
    assert rows[0].image == (tmp_path / tiny_image).resolve() and rows[0].label == "x"


@pytest.mark.parametrize("labels, expected", [
    (["10", "2", "1", "2"], ("1", "2", "10")),          # numbers: numeric order, not "1" < "10" < "2"
    (["0.5", "-1", "3"], ("-1", "0.5", "3")),
    (["b", "10", "a", "2"], ("10", "2", "a", "b")),     # not all numeric: text order
])
def test_class_order(labels, expected):
    assert class_order(labels) == expected


def _manifest(root, name, rows, tiny_image):
    return _jsonl(root / name, [{"image": tiny_image, "text": t, "label": lab} for t, lab in rows])


def test_default_vocabulary_comes_from_the_training_captions(tmp_path, tiny_image):
    train = _manifest(tmp_path, "train.jsonl", [("zebra crossing", "1"), ("zebra stripes", "2"),
                                                ("a crossing", "10"), ("stripes", "2")], tiny_image)
    dev = _manifest(tmp_path, "dev.jsonl", [("zebra crossing", "1")], tiny_image)
    test = _manifest(tmp_path, "test.jsonl", [("zebra giraffe", "10")], tiny_image)
    with pytest.warns(UnknownWordsWarning, match=r"test\.jsonl: 50% of the tokens of the test split are <unk>"):
        splits = load_manifest_splits(train, dev, test, image_size=4)
    vocab = splits["train"].vocab
    assert vocab.itos == ["<pad>", "<unk>", "crossing", "stripes", "zebra"]   # "a" was seen once: below min count 2
    assert all(d.tokenizer is splits["train"].tokenizer for d in splits.values())
    assert splits["test"].text.tolist() == [[vocab.stoi["zebra"], UNK_ID]]
    assert all(d.class_names == ("1", "2", "10") for d in splits.values())
    assert splits["test"].labels.tolist() == [2]
    assert MeanPoolTextEncoder(vocab_size=len(vocab)).embedding.num_embeddings == 5


def test_no_warning_when_the_vocabulary_fits(tmp_path, tiny_image):
    path = _manifest(tmp_path, "m.jsonl", [("red disc", "a"), ("red disc", "b")], tiny_image)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordsWarning)
        loaded = load_manifest(path, image_size=4)
    assert loaded.vocab.itos[2:] == ["disc", "red"]


def test_test_label_unseen_in_training_names_file_line_and_classes(tmp_path, tiny_image):
    train = _manifest(tmp_path, "train.jsonl", [("a", "cat"), ("a", "dog")], tiny_image)
    dev = _manifest(tmp_path, "dev.jsonl", [("a", "cat")], tiny_image)
    test = _manifest(tmp_path, "test.jsonl", [("a", "dog"), ("a", "cow")], tiny_image)
    with pytest.raises(ValueError, match=re.escape("test.jsonl:2: label 'cow' is not one of ['cat', 'dog']")):
        load_manifest_splits(train, dev, test, image_size=4)


def test_dev_without_test_raises(tmp_path, tiny_image):
    train = _manifest(tmp_path, "train.jsonl", [("a", "cat")], tiny_image)
    with pytest.raises(ValueError, match="give both dev and test manifests, or neither"):
        load_manifest_splits(train, dev=train)


def test_one_file_split_is_seeded_disjoint_and_shares_tokenizer_and_classes(tmp_path, tiny_image):
    rows = [(f"caption number {i}", str(i % 3)) for i in range(40)]
    path = _manifest(tmp_path, "all.jsonl", rows, tiny_image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownWordsWarning)   # the numbers are seen once each
        splits, again, other = (load_manifest_splits(path, fractions=(0.5, 0.25, 0.25), seed=seed, image_size=4,
                                                     lazy=True) for seed in (3, 3, 4))
    lines = {k: [r.line for r in d.rows] for k, d in splits.items()}                   # lazy datasets keep the rows
    assert [len(v) for v in lines.values()] == [20, 10, 10]
    assert sorted(sum(lines.values(), [])) == list(range(1, 41))                       # disjoint, all rows used
    assert lines == {k: [r.line for r in d.rows] for k, d in again.items()}           # same seed, same split
    assert lines != {k: [r.line for r in d.rows] for k, d in other.items()}
    assert all(d.class_names == ("0", "1", "2") for d in splits.values())
    assert all(d.tokenizer is splits["train"].tokenizer for d in splits.values())
    assert splits["train"].vocab.itos == ["<pad>", "<unk>", "caption", "number"]     # from the training rows


def test_lazy_loading_equals_in_memory_loading(small_dataset, tmp_path):
    path = write_manifest(small_dataset, tmp_path, n=N)
    with pytest.warns(UnknownWordsWarning, match=r"manifest\.jsonl: 26% of the tokens are <unk>, more than "):
        eager = load_manifest(path, image_size=16)             # 6 captions: many words seen only once
    with pytest.warns(UnknownWordsWarning):
        lazy = load_manifest(path, image_size=16, lazy=True)
    assert isinstance(lazy, LazyManifestDataset) and lazy.vocab.itos == eager.vocab.itos
    (a, la), (b, lb) = eager.__getitems__([4, 0, 2]), lazy.__getitems__([4, 0, 2])
    assert list(b) == ["image", "text"] and torch.equal(la, lb) and torch.equal(a["text"], b["text"])
    torch.testing.assert_close(a["image"], b["image"])
    inputs, labels = next(iter(make_loader(lazy, batch_size=4)))
    assert inputs["image"].shape == (4, 3, 16, 16) and labels.shape == (4,)


def test_lazy_transform_and_normalize_apply_per_sample(small_dataset, tmp_path):
    v2 = pytest.importorskip("torchvision.transforms.v2")
    path = write_manifest(small_dataset, tmp_path, n=N)
    eager = load_manifest(path, image_size=16, tokenizer=Tokenizer(WORLD_VOCAB))
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    lazy = load_manifest(path, image_size=16, tokenizer=Tokenizer(WORLD_VOCAB), lazy=True, transform=flip,
                         normalize=(mean, std))
    expected = (eager.__getitems__([1, 3])[0]["image"].flip(-1) - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(lazy.__getitems__([1, 3])[0]["image"], expected)


def test_lazy_options_are_checked(tmp_path, tiny_image):
    path = _manifest(tmp_path, "m.jsonl", [("a", "x")], tiny_image)
    with pytest.raises(ValueError, match="pass lazy=True with them"):
        load_manifest(path, transform=lambda x: x)
    with pytest.raises(ValueError, match=r"normalize must be \(mean, std\), three numbers each"):
        load_manifest(path, lazy=True, normalize=(0.5, 0.5))


def test_lazy_undecodable_image_fails_at_batch_time_naming_the_row(tmp_path, tiny_image):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    path = _jsonl(tmp_path / "m.jsonl", [{"image": tiny_image, "text": "a", "label": "x"},
                                         {"image": "bad.png", "text": "a", "label": "x"}])
    lazy = load_manifest(path, image_size=4, lazy=True)
    assert lazy[0][0]["image"].shape == (3, 4, 4)
    with pytest.raises(ValueError, match=re.escape(f"m.jsonl:2: cannot read image {(tmp_path / 'bad.png').resolve()}")):
        lazy.__getitems__([0, 1])


def test_subset_take_and_split_work_on_manifest_datasets(small_dataset, tmp_path):
    path = write_manifest(small_dataset, tmp_path, n=N)
    for lazy in (False, True):
        loaded = load_manifest(path, image_size=8, tokenizer=Tokenizer(WORLD_VOCAB), lazy=lazy)
        part = subset(loaded, [5, 1])
        assert type(part) is type(loaded) and part.tokenizer is loaded.tokenizer
        assert part.labels.tolist() == loaded.labels[[5, 1]].tolist()
        torch.testing.assert_close(part.__getitems__([0])[0]["image"], loaded.__getitems__([5])[0]["image"])
        assert len(take(loaded, 2)) == 2 and take(loaded, 2).class_names == loaded.class_names
        parts = split_dataset(loaded, (0.5, 0.25, 0.25), seed=0)
        assert sorted(sum((p.labels.tolist() for p in parts.values()), [])) == sorted(loaded.labels.tolist())


# ----------------------------------------------------------------------------- bring your own data, end to end
# A small world written as PNG files and manifests, the way a user's data arrives. The label (4 classes)
# is the pair (patch colour in the image, keyword in the caption): each modality alone settles one half,
# so the Bayes limit of either alone is 50 % and of both 100 %.
SIDE, PATCH = 16, 6                                    # image side and colour-patch side, pixels
COLOURS = ((200, 40, 40), (40, 40, 200))              # red, blue: the image half of the label
KEYWORDS = ("zig", "zag")                             # the text half of the label
LABELS = ("1", "2", "10", "20")                       # numeric strings: text order would put "10" before "2"
TRAIN_WORDS, TEST_ONLY_WORDS = 120, 30                # noise words in every split; extra ones in dev/test only
NOISE_PER_CAPTION = 5


def _write_split(root, name, n, rng, n_words) -> str:
    records = []
    for i in range(n):
        colour, keyword = rng.integers(2), rng.integers(2)
        image = rng.integers(60, 120, (SIDE, SIDE, 3)).astype(np.uint8)     # grey noise background
        y, x = rng.integers(0, SIDE - PATCH, 2)
        image[y: y + PATCH, x: x + PATCH] = COLOURS[colour]
        file = f"images/{name}_{i:04d}.png"
        Image.fromarray(image).save(root / file)
        words = [f"w{j:03d}" for j in rng.integers(0, n_words, NOISE_PER_CAPTION)]
        words.insert(int(rng.integers(0, NOISE_PER_CAPTION + 1)), KEYWORDS[keyword])
        records.append({"image": file, "text": " ".join(words), "label": LABELS[2 * colour + keyword]})
    return _jsonl(root / f"{name}.jsonl", records)


def _train_and_score(model, splits, epochs=8) -> float:
    from mmcourse.training import accuracy_on, fit
    train = make_loader(splits["train"], batch_size=32, shuffle=True, seed=0)
    fit(model, train, make_loader(splits["dev"], 256), torch.optim.Adam(model.parameters(), lr=3e-3), epochs, "cpu")
    return accuracy_on(model, make_loader(splits["test"], 256), "cpu")


def test_bring_your_own_data_fused_beats_each_modality_with_default_loading(tmp_path):
    from mmcourse.encoders import MLPImageEncoder, UnimodalClassifier
    from mmcourse.fusion import ConcatFusion, FusionModel

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    paths = {"train": _write_split(tmp_path, "train", 480, rng, TRAIN_WORDS),
             "dev": _write_split(tmp_path, "dev", 120, rng, TRAIN_WORDS + TEST_ONLY_WORDS),
             "test": _write_split(tmp_path, "test", 200, rng, TRAIN_WORDS + TEST_ONLY_WORDS)}
    splits = load_manifest_splits(**paths, image_size=SIDE)                  # defaults: no tokenizer, no class order
    vocab = splits["train"].vocab
    test_words = {w for t in splits["test"].vocab.decode(splits["test"].text.numpy()) for w in t.split()}
    assert len(vocab) - 2 >= 100 and "<unk>" in test_words                  # >= 100 words; unseen ones in test
    assert splits["test"].class_names == splits["train"].class_names == LABELS
    C, D = len(LABELS), 32

    def image_encoder():
        return MLPImageEncoder(image_size=SIDE, dim=D)

    def text_encoder():
        return MeanPoolTextEncoder(vocab_size=len(vocab), dim=D)

    torch.manual_seed(0)
    acc = {"image": _train_and_score(UnimodalClassifier(image_encoder(), C), splits),
           "text": _train_and_score(UnimodalClassifier(text_encoder(), C), splits)}
    torch.manual_seed(0)
    fused = FusionModel(ConcatFusion({"image": D, "text": D}, hidden=D), C,
                        {"image": image_encoder(), "text": text_encoder()})
    acc["fused"] = _train_and_score(fused, splits)
    assert acc["fused"] >= max(acc["image"], acc["text"]) + 0.03, acc
