"""Tests of mmcourse.vqa: the easy-VQA loader on a small fake copy and on the installed package, the ceiling,
the blind baseline, the batches (images once, questions gathered), the heads, and a short training run."""
from __future__ import annotations

import importlib.util
import json
import sys
import time

import pytest
import torch
from PIL import Image

from mmcourse import vqa

ANSWERS = ["circle", "rectangle", "triangle", "red", "blue", "yes", "no"]


def _write_copy(root, n_train=4, n_test=2, size=vqa.IMAGE_SIZE):
    """A fake easy-VQA copy: image k is a red circle for even k, a blue rectangle for odd k."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "answers.txt").write_text("\n".join(ANSWERS) + "\n")
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "images").mkdir(parents=True)
        qs = []
        for k in range(n):
            colour = (255, 0, 0) if k % 2 == 0 else (0, 0, 255)
            Image.new("RGB", (size, size), colour).save(root / split / "images" / f"{k}.png")
            shape, name = ("circle", "red") if k % 2 == 0 else ("rectangle", "blue")
            qs += [["what shape is in the image?", shape, k], ["what color is the shape?", name, k],
                   ["is there a red shape?", "yes" if name == "red" else "no", k],
                   ["is there not a circle?", "no" if shape == "circle" else "yes", k]]
        (root / split / "questions.json").write_text(json.dumps(qs))
    return root


@pytest.fixture
def fake(tmp_path):
    return _write_copy(tmp_path / "data")


def test_loader_reads_a_fake_copy_and_caches_it(fake):
    data = vqa.load_easy_vqa(fake)
    train = data.splits["train"]
    assert data.answers == ANSWERS and data.decode_seconds is not None and data.cache.is_file()
    assert train.images.shape == (4, 3, 64, 64) and train.images.dtype == torch.uint8
    assert len(train) == 16 and train.image_index.tolist()[:4] == [0, 0, 0, 0]
    assert train.images[1, 2, 0, 0] == 255 and train.images[1, 0, 0, 0] == 0          # image 1 is blue
    again = vqa.load_easy_vqa(fake)
    assert again.decode_seconds is None and torch.equal(again.splits["train"].images, train.images)
    time.sleep(0.01)
    Image.new("RGB", (64, 64), (0, 255, 0)).save(fake / "train" / "images" / "1.png")   # a changed copy is re-read
    changed = vqa.load_easy_vqa(fake)
    assert changed.decode_seconds is not None and changed.splits["train"].images[1, 1, 0, 0] == 255


@pytest.mark.parametrize("damage, match", [
    (lambda r: (r / "train" / "questions.json").write_text("[[1, 2"), r"questions.json: malformed JSON"),
    (lambda r: (r / "train" / "questions.json").write_text(json.dumps([["q?", "yes", 0], ["q?", "maybe", 0]])),
     r"questions.json: entry 1 has the unknown answer 'maybe'"),
    (lambda r: (r / "test" / "questions.json").write_text(json.dumps([["q?", "yes", 0], ["q?", "no", 7]])),
     r"questions.json: entry 1 asks about image 7, which has no PNG"),
    (lambda r: Image.new("RGB", (32, 64)).save(r / "train" / "images" / "2.png"), r"2.png: image of size 32x64"),
    (lambda r: (r / "answers.txt").unlink(), r"answers.txt: the answer list is missing"),
])
def test_loader_rejects_a_damaged_copy_naming_the_file(fake, damage, match):
    damage(fake)
    with pytest.raises(ValueError, match=match):
        vqa.load_easy_vqa(fake, cache=False)


def test_downsample_is_2x2_average_pooling():
    x = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    out = vqa.downsample(x)
    loop = torch.tensor([[[x[0, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].float().mean() / 255 for j in range(2)]
                          for i in range(2)] for c in range(3)])
    assert out.shape == (1, 3, 2, 2) and torch.allclose(out[0], loop)
    with pytest.raises(ValueError, match="not a multiple of factor"):
        vqa.downsample(torch.zeros(1, 3, 5, 5, dtype=torch.uint8))


def test_dev_split_shares_no_image(fake):
    train = vqa.load_easy_vqa(fake, cache=False).splits["train"]
    a, b = vqa.split_by_image(train, 1, seed=0)
    assert len(a.images) == 3 and len(b.images) == 1 and len(a) + len(b) == len(train)
    assert not set(a.image_ids.tolist()) & set(b.image_ids.tolist())
    for part in (a, b):                         # each question still points at its own image
        ids = part.image_ids[part.image_index]
        original = train.image_ids[train.image_index]
        assert sorted(ids.tolist()) == sorted(original[torch.isin(original, part.image_ids)].tolist())


def test_ceiling_oracle_and_a_contradiction(fake):
    train = vqa.load_easy_vqa(fake, cache=False).splits["train"]
    shape, colour = vqa.implied_attributes(train, ANSWERS)
    assert [vqa.SHAPES[s] for s in shape] == ["circle", "rectangle"] * 2
    assert (vqa.oracle_answers(train, ANSWERS, shape, colour) == train.answers.numpy()).all()
    train.answers[2] = ANSWERS.index("no")      # image 0 is red, but now "is there a red shape?" says no
    with pytest.raises(ValueError, match="image 0: no single colour"):
        vqa.implied_attributes(train, ANSWERS)


def test_parse_question():
    assert vqa.parse_question("does the image not contain a gray shape?") == ("colour", "gray", True)
    assert vqa.parse_question("is a circle present?") == ("shape", "circle", False)
    assert vqa.parse_question("what is the color of the triangle?") == ("colour?", None, False)
    with pytest.raises(ValueError, match="expected one shape or one colour"):
        vqa.parse_question("is there a red circle?")


def test_majority_answers_by_counting(fake):
    train = vqa.load_easy_vqa(fake, cache=False).splits["train"]
    majority = vqa.majority_answers(train, len(ANSWERS))
    assert majority["what shape is in the image?"] == ANSWERS.index("circle")   # a 2-2 tie: the lower index
    pred = vqa.blind_predict(majority, train, fallback=0)
    assert pred.shape == (16,)


def _batches(split, image_batch=3, shuffle=False):
    tok = vqa.QuestionTokenizer.fit(split.questions)
    return vqa.QuestionBatches(split, vqa.downsample(split.images), tok.encode(split.questions), image_batch,
                               shuffle=shuffle, seed=0), tok


def test_batches_hold_each_image_once_with_all_its_questions(fake):
    train = vqa.load_easy_vqa(fake, cache=False).splits["train"]
    batches, _ = _batches(train, shuffle=True)
    seen = []
    for inputs, answers in batches:
        assert len(inputs["images"]) <= 3 and len(answers) == 4 * len(inputs["images"])
        assert len(inputs["texts"]) <= 4                               # distinct texts of the batch, once each
        seen.append(len(inputs["images"]))
    assert sum(seen) == 4 and len(batches) == 2


@pytest.mark.parametrize("head", vqa.HEADS)
def test_heads_equal_a_per_question_loop_and_take_batch_1(fake, head):
    train = vqa.load_easy_vqa(fake, cache=False).splits["train"]
    batches, tok = _batches(train)
    config = vqa.VQAConfig(train_images=4, epochs=1, best_epochs=1, dim=16, hidden=8)
    torch.manual_seed(0)
    model = vqa.make_model(head, config, len(tok.vocab), 8, len(ANSWERS)).eval()
    inputs, _ = next(iter(batches))
    with torch.no_grad():
        out = model(inputs)                                            # (B_q, C)
        for q in range(len(out)):                                      # one question at a time, its image alone
            one = {"images": inputs["images"][inputs["image_index"][q:q + 1]], "image_index": torch.zeros(1, dtype=torch.long),
                   "texts": inputs["texts"][inputs["text_index"][q:q + 1]], "text_index": torch.zeros(1, dtype=torch.long)}
            assert torch.allclose(model(one), out[q:q + 1], atol=1e-5)
    assert out.shape == (12, len(ANSWERS))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown head 'sum'"):
        vqa.make_head("sum", 8, 8, 3)
    config = vqa.VQAConfig(train_images=4, epochs=1, best_epochs=1, dim=16, hidden=8)
    model = vqa.make_model("concat", config, 10, 4, 3)
    bad = {"images": torch.zeros(2, 3, 32, 32), "image_index": torch.tensor([0, 2]),
           "texts": torch.ones(1, 3, dtype=torch.long), "text_index": torch.tensor([0, 0])}
    with pytest.raises(ValueError, match="image_index refers to image 2, the batch has 2"):
        model(bad)
    with pytest.raises(ValueError, match="dev_images must be"):
        vqa.split_by_image(vqa.VQASplit(torch.zeros(2, 3, 4, 4), torch.arange(2), [], torch.zeros(0), torch.zeros(0)),
                           2, 0)


def test_short_run_loss_falls_and_repeats(fake):
    train = vqa.load_easy_vqa(fake, cache=False).splits["train"]
    config = vqa.VQAConfig(train_images=4, epochs=15, best_epochs=1, dim=16, hidden=16, image_batch=2, lr=1e-2)
    losses = []
    for _ in range(2):
        batches, tok = _batches(train, image_batch=2, shuffle=True)
        torch.manual_seed(0)
        model = vqa.make_model("film", config, len(tok.vocab), 8, len(ANSWERS))
        history = vqa.fit(model, batches, config, "cpu")
        losses.append(history.train_loss)
    assert losses[0][-1] < losses[0][0] and losses[0] == losses[1]
    pred = vqa.predict(model, _batches(train)[0], "cpu")
    scores = vqa.accuracy_by_type(pred, train.answers.numpy(), vqa.question_types(ANSWERS, train.answers))
    assert set(scores) == {"all", "yes/no", "colour", "shape"}


def test_real_package_counts():
    """The installed copy: the issue's counts, read without decoding all 5,000 PNGs (ten are decoded)."""
    root = vqa.data_root()
    answers = vqa._read_answers(root / "answers.txt")
    texts, counts = set(), []
    for split in vqa.SPLITS:
        questions, labels, ids = vqa._read_questions(root / split / "questions.json", answers)
        files = vqa._image_files(root / split / "images")
        assert set(ids.tolist()) <= set(files)
        texts |= set(questions)
        counts += [len(files), len(questions)]
    assert counts == [4000, 38575, 1000, 9673] and len(answers) == 13 and len(texts) == 107
    assert vqa._decode(list(files.values())[:10]).shape == (10, 3, 64, 64)


def test_the_wheels_top_level_test_package_is_never_imported():
    """easy-vqa's wheel installs site-packages/test/; the course imports neither it nor the package itself."""
    assert vqa.data_root().name == "data"
    assert "easy_vqa" not in sys.modules, "data_root must find the data without importing easy_vqa"
    loaded = sys.modules.get("test")
    assert loaded is None or "site-packages" not in str(getattr(loaded, "__file__", "")), "the wheel's test/ was imported"
    spec = importlib.util.find_spec("test")          # `import test` finds the standard library's package first
    assert spec is None or "site-packages" not in str(spec.origin)


