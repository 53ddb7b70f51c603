"""Tests of mmcourse.tagging: spans, entity scores against a reference written here, the token
report against scikit-learn, the grounded tagger, its data, loss and the lookup baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mmcourse.data import TAGS, WORLD_VOCAB, make_loader, take
from mmcourse.encoders import (CNNImageEncoder, ConvTextEncoder, MeanPoolTextEncoder, MLPImageEncoder,
                               TransformerTextEncoder)
from mmcourse.metrics import classification_report
from mmcourse.tagging import (IGNORE_INDEX, GroundedTagger, TaggingDataset, WordLookupTagger, entity_report,
                              entity_scores, entity_spans, fit_tagger, gold_tags, predict_tags, side_by_side,
                              tag_ids, tagger_scores, tagging_loss, token_report)
from mmcourse.training import TrainConfig, train


# ----------------------------------------------------------------------------- the reference (plain loops)

def reference_spans(tags):
    """conlleval's rule, written as chunk start / chunk end tests on (previous, current) tags."""
    spans, start = [], None
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = ("O", "") if tag == "O" else tag.split("-", 1)
        ends = prev_prefix != "O" and (prefix in ("O", "B") or kind != prev_type)
        if ends:
            spans.append((prev_type, start, i))
        starts = prefix == "B" or (prefix == "I" and (prev_prefix == "O" or kind != prev_type))
        if starts:
            start = i
        prev_prefix, prev_type = prefix, kind
    return spans


def reference_scores(pred, true):
    correct = n_pred = n_true = 0
    per = {}
    for p, t in zip(pred, true):
        ps, ts = reference_spans(p), reference_spans(t)
        for s in ps:
            per.setdefault(s[0], [0, 0, 0])[1] += 1
            if s in ts:
                correct += 1
                per[s[0]][0] += 1
        for s in ts:
            per.setdefault(s[0], [0, 0, 0])[2] += 1
        n_pred += len(ps)
        n_true += len(ts)

    def prf(c, np_, nt):
        p = c / np_ if np_ else 0.0
        r = c / nt if nt else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0), nt

    return prf(correct, n_pred, n_true), {k: prf(*v) for k, v in per.items()}


def assert_matches_reference(pred, true):
    scores = entity_scores(pred, true)
    micro, per = reference_scores(pred, true)
    got = scores["micro avg"]
    assert (got["precision"], got["recall"], got["f1-score"], got["support"]) == pytest.approx(micro)
    assert set(scores["per type"]) == set(per)
    for k, ref in per.items():
        s = scores["per type"][k]
        assert (s["precision"], s["recall"], s["f1-score"], s["support"]) == pytest.approx(ref), k


def random_tags(rng, n, types=("A", "B"), max_len=8):
    vocab = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
    return [[vocab[i] for i in rng.integers(0, len(vocab), rng.integers(0, max_len + 1))] for _ in range(n)]


# ----------------------------------------------------------------------------- spans

@pytest.mark.parametrize("tags, spans", [
    ([], []),
    (["O", "O"], []),
    (["I-X"], [("X", 0, 1)]),                                     # I- at position 0 starts an entity
    (["O", "I-X", "I-X"], [("X", 1, 3)]),                         # I- after O, running to the end
    (["B-X", "I-Y", "I-Y"], [("X", 0, 1), ("Y", 1, 3)]),          # I- after another type
    (["B-X", "B-X"], [("X", 0, 1), ("X", 1, 2)]),                 # adjacent entities of one type
    (["B-X", "I-X", "B-X", "I-X", "O"], [("X", 0, 2), ("X", 2, 4)]),
    (["O", "O", "B-POS", "I-POS", "I-POS"], [("POS", 2, 5)]),     # "in the top left corner"
    (["B-COLOR", "I-COLOR", "O", "I-SIZE"], [("COLOR", 0, 2), ("SIZE", 3, 4)]),
])
def test_entity_spans_hand_cases(tags, spans):
    assert entity_spans(tags) == spans
    assert reference_spans(tags) == spans


def test_entity_spans_random_against_reference():
    rng = np.random.default_rng(0)
    for tags in random_tags(rng, 300, types=("A", "B", "C"), max_len=12):
        assert entity_spans(tags) == reference_spans(tags), tags


@pytest.mark.parametrize("bad", [["B"], ["B-"], ["X-COLOR"], ["o"], ["O", "I_COLOR"], ["O", 3]])
def test_entity_spans_rejects_bad_tags(bad):
    with pytest.raises((ValueError, TypeError), match=r"tags\[\d\]"):
        entity_spans(bad)


def test_entity_spans_rejects_a_string():
    with pytest.raises(TypeError, match="single str"):
        entity_spans("B-X")


# ----------------------------------------------------------------------------- entity scores

def test_entity_scores_hand_case():
    true = [["B-X", "I-X", "O", "B-Y"], ["I-X", "B-X"], ["O"]]
    pred = [["B-X", "I-X", "O", "O"], ["B-X", "I-X"], ["B-Y"]]
    s = entity_scores(pred, true)
    # true: X(0,2) Y(3,4) | X(0,1) X(1,2)   pred: X(0,2) | X(0,2) | Y(0,1)  -> 1 correct of 3 predicted, 4 true
    assert s["micro avg"]["correct"] == 1 and s["micro avg"]["predicted"] == 3 and s["micro avg"]["support"] == 4
    assert s["micro avg"]["precision"] == pytest.approx(1 / 3) and s["micro avg"]["recall"] == pytest.approx(1 / 4)
    assert s["per type"]["Y"]["f1-score"] == 0.0 and s["per type"]["X"]["recall"] == pytest.approx(1 / 3)
    assert_matches_reference(pred, true)


def test_entity_scores_empty_predictions_and_perfect():
    true = [["B-X", "I-X", "O"], ["O", "B-Y"]]
    none = entity_scores([["O"] * 3, ["O"] * 2], true)["micro avg"]
    assert (none["precision"], none["recall"], none["f1-score"]) == (0.0, 0.0, 0.0)
    assert entity_scores(true, true)["micro avg"]["f1-score"] == 1.0
    empty = entity_scores([[], ["O"]], [[], ["O"]])["micro avg"]       # no entities at all: zero division -> 0
    assert empty["f1-score"] == 0.0 and empty["support"] == 0


def test_entity_scores_random_against_reference():
    rng = np.random.default_rng(1)
    true = random_tags(rng, 200)
    # predictions: the truth with a fraction of the tags resampled, so that some spans match
    pred = [[t if rng.random() < 0.7 else rng.choice(["O", "B-A", "I-A", "B-B", "I-B"]) for t in seq] for seq in true]
    assert_matches_reference(pred, true)
    assert 0.2 < entity_scores(pred, true)["micro avg"]["f1-score"] < 0.95   # a real mixture of hits and misses


def test_entity_scores_errors_name_the_sentence():
    with pytest.raises(ValueError, match="sentence 1"):
        entity_scores([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="2 sentences"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(TypeError, match="pred"):
        entity_scores(np.zeros((2, 3)), [["O"] * 3] * 2)


def test_entity_report_text():
    text = entity_report(entity_scores([["B-X", "O"]], [["B-X", "B-Y"]]))
    assert "micro avg" in text and "X" in text and "Y" in text
    assert "0.667" in text                                           # micro F1: P 1, R 1/2


# ----------------------------------------------------------------------------- token report

def _random_corpus(seed, n=150):
    rng = np.random.default_rng(seed)
    true = [[TAGS[i] for i in rng.integers(0, len(TAGS), rng.integers(1, 10))] for _ in range(n)]
    pred = [[t if rng.random() < 0.6 else TAGS[rng.integers(0, len(TAGS))] for t in seq] for seq in true]
    return pred, true


@pytest.mark.parametrize("seed", [0, 1])
def test_token_report_equals_sklearn(seed):
    pred, true = _random_corpus(seed)
    flat_p, flat_t = [t for s in pred for t in s], [t for s in true for t in s]
    labels = [t for t in TAGS if t != "O"]
    text, table = token_report(pred, true)
    assert text == skm.classification_report(flat_t, flat_p, labels=labels, digits=3, zero_division=0)
    ref = skm.classification_report(flat_t, flat_p, labels=labels, output_dict=True, zero_division=0)
    assert table.keys() == ref.keys()
    for key, row in ref.items():
        assert table[key] == pytest.approx(row), key
    assert "O" not in table and "micro avg" in text and "macro avg" in text and "weighted avg" in text
    assert table["micro avg"]["support"] == sum(t != "O" for t in flat_t)


def test_token_report_with_o_is_token_accuracy():
    pred, true = _random_corpus(2)
    flat_p, flat_t = [t for s in pred for t in s], [t for s in true for t in s]
    text, table = token_report(pred, true, include_o=True)
    assert table["micro avg"]["f1-score"] == pytest.approx(skm.accuracy_score(flat_t, flat_p))
    assert text == classification_report(tag_ids(pred), tag_ids(true), TAGS)[0]
    assert table["O"]["support"] == flat_t.count("O")


def test_token_report_without_any_o_still_prints_micro():
    true = [["B-COLOR", "I-COLOR"], ["B-SIZE"]]
    pred = [["B-COLOR", "B-COLOR"], ["B-SIZE"]]
    text, table = token_report(pred, true)
    assert "micro avg" in text and "accuracy" not in text
    assert table["micro avg"]["f1-score"] == pytest.approx(2 / 3)


def test_token_report_errors():
    with pytest.raises(ValueError, match="sentence 0, token 1"):
        token_report([["O", "B-FOO"]], [["O", "O"]])
    with pytest.raises(ValueError, match="sentence 0"):
        token_report([["O"]], [["O", "O"]])


def test_side_by_side():
    assert side_by_side("a\nbbb", "x", gap=2) == "a    x\nbbb"


# ----------------------------------------------------------------------------- data, model, training

@pytest.fixture(scope="module")
def tiny(small_dataset):
    return take(small_dataset, 300)


def test_tagging_dataset_batches(tiny):
    data = TaggingDataset(tiny)
    inputs, target = data.__getitems__([0, 5, 7])
    assert sorted(inputs) == ["image", "text"]
    assert inputs["image"].shape == (3, 3, 32, 32) and inputs["text"].shape == target.shape
    pad = inputs["text"] == 0
    assert (target[pad] == IGNORE_INDEX).all() and (target[~pad] >= 0).all()
    assert torch.equal(target[~pad], tiny.tags[[0, 5, 7], : target.shape[1]][~pad])
    assert sorted(TaggingDataset(tiny, image=False).__getitems__([1])[0]) == ["text"]
    assert [len(s) for s in gold_tags(tiny)] == (tiny.text != 0).sum(1).tolist()
    with pytest.raises(TypeError, match="MultimodalDataset"):
        TaggingDataset([1, 2, 3])


@pytest.mark.parametrize("text_encoder", [ConvTextEncoder(dim=16), TransformerTextEncoder(dim=16, heads=2, layers=1)])
@pytest.mark.parametrize("batch", [1, 4])
def test_grounded_tagger_shapes(tiny, text_encoder, batch):
    torch.manual_seed(0)
    inputs, target = TaggingDataset(tiny).__getitems__(list(range(batch)))
    with_image = GroundedTagger(text_encoder, CNNImageEncoder(dim=8))
    assert with_image(inputs).shape == (batch, target.shape[1], len(TAGS))
    assert GroundedTagger(text_encoder)({"text": inputs["text"]}).shape == (batch, target.shape[1], len(TAGS))


def test_grounded_tagger_errors(tiny):
    inputs, _ = TaggingDataset(tiny).__getitems__([0, 1])
    model = GroundedTagger(ConvTextEncoder(dim=8), CNNImageEncoder(dim=8))
    with pytest.raises(ValueError, match="no 'image'"):
        model({"text": inputs["text"]})
    with pytest.raises(ValueError, match="no 'text'"):
        model({"image": inputs["image"]})
    with pytest.raises(TypeError, match="dict"):
        model(inputs["text"])
    with pytest.raises(ValueError, match="does not match"):
        model({"text": inputs["text"], "image": inputs["image"][:1]})
    with pytest.raises(ValueError, match="integer token ids"):
        model({"text": inputs["text"].float(), "image": inputs["image"]})
    with pytest.raises(TypeError, match="token features"):
        GroundedTagger(MLPImageEncoder(image_size=8, dim=8))
    with pytest.raises(ValueError, match="logits"):
        tagging_loss(lambda x: torch.zeros(2, 3, len(TAGS)), (inputs, torch.zeros(2, 5, dtype=torch.long)))


def test_frozen_image_encoder_stays_in_eval_and_untrained():
    image = CNNImageEncoder(dim=8)
    GroundedTagger(ConvTextEncoder(dim=8), image).train()
    assert not image.training and not any(p.requires_grad for p in image.parameters())
    unfrozen = GroundedTagger(ConvTextEncoder(dim=8), CNNImageEncoder(dim=8), freeze_image=False).train()
    assert unfrozen.image_encoder.training and all(p.requires_grad for p in unfrozen.image_encoder.parameters())
    assert GroundedTagger(MeanPoolTextEncoder(dim=8))({"text": torch.ones(2, 3, dtype=torch.long)}).shape == (2, 3, 11)


def _train_tiny(tiny, seed):
    torch.manual_seed(seed)
    model = GroundedTagger(ConvTextEncoder(dim=16), CNNImageEncoder(dim=8, widths=(4, 8, 8)))
    loader = make_loader(TaggingDataset(tiny), 20, shuffle=True, seed=seed)
    history = train(model, tagging_loss, loader, TrainConfig(epochs=4, lr=1e-2, progress=False, log_every=15),
                    "cpu")
    return model, history


def test_short_training_lowers_the_loss_and_is_deterministic(tiny):
    model, history = _train_tiny(tiny, 0)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0], history.train_loss
    pred = predict_tags(model, tiny, "cpu", batch_size=64)
    gold = gold_tags(tiny)
    assert [len(p) for p in pred] == [len(g) for g in gold]
    o_share = np.mean([t == "O" for g in gold for t in g])                  # the all-O tagger's accuracy
    assert token_report(pred, gold, include_o=True)[1]["micro avg"]["f1-score"] > o_share + 0.1
    again, _ = _train_tiny(tiny, 0)
    assert predict_tags(again, tiny, "cpu", batch_size=64) == pred


def test_word_lookup_tagger_ignores_context(small_dataset):
    lookup = WordLookupTagger.fit(small_dataset)
    ids = torch.tensor([[WORLD_VOCAB.stoi[w] for w in "a bright red disc".split()],
                        [WORLD_VOCAB.stoi[w] for w in "a red disc <pad>".split()]])
    tags = [[TAGS[i] for i in row] for row in lookup({"text": ids}).argmax(-1).tolist()]
    assert tags[0][1] == "B-COLOR" and tags[1][2] == "B-SHAPE"
    assert tags[0][2] == tags[1][1] in ("B-COLOR", "I-COLOR")  # "red": one tag, right in only one of the contexts
    assert tags[1][3] == "O"                               # padding / unseen words: O
    pred, gold = predict_tags(lookup, small_dataset, "cpu"), gold_tags(small_dataset)
    with_o = token_report(pred, gold, include_o=True)[1]["micro avg"]["f1-score"]
    without_o = token_report(pred, gold)[1]["micro avg"]["f1-score"]
    assert with_o > without_o                              # counting O flatters it
    with pytest.raises(TypeError, match="MultimodalDataset"):
        WordLookupTagger.fit([1])


def test_tagger_scores_of_an_all_o_tagger_and_a_perfect_one(tiny):
    gold = gold_tags(tiny)
    all_o = tagger_scores([["O"] * len(s) for s in gold], gold)
    o_share = np.mean([t == "O" for s in gold for t in s])
    assert all_o["token micro-F1 with O"] == pytest.approx(o_share)
    assert all_o["token micro-F1 (B-/I- only)"] == 0 and all_o["entity F1"] == 0
    assert tagger_scores(gold, gold) == {"token micro-F1 with O": 1.0, "token micro-F1 (B-/I- only)": 1.0,
                                         "entity F1": 1.0}


def test_fit_tagger_with_and_without_the_image(tiny):
    image = MLPImageEncoder()
    model, history = fit_tagger(tiny, image, epochs=2, batch_size=50, lr=1e-2, device="cpu", dim=16)
    assert model.image_encoder is image and not any(p.requires_grad for p in image.parameters())
    assert history.train_loss[-1] < history.train_loss[0]
    text_only, _ = fit_tagger(tiny, None, epochs=1, batch_size=50, lr=1e-2, device="cpu", dim=16)
    assert text_only.image_encoder is None and text_only.text_encoder.out_dim == 16
    assert len(predict_tags(text_only, tiny, "cpu")) == len(tiny)
