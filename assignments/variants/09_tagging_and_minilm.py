"""Graded variants of assignment 09: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["spans_from_tags", "entity_prf"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "an I- tag that continues nothing is ignored instead of starting an entity": {
        "cell": "spans_from_tags",
        "source": '''def spans_from_tags(tags):
    """Entities of one sentence: tags (L,) strings 'O', 'B-X', 'I-X' -> [(type, start, end)], end exclusive."""
    spans, kind, start = [], None, 0
    for i, tag in enumerate(tags):
        prefix, _, t = tag.partition("-")
        if kind is not None and (prefix != "I" or t != kind):
            spans.append((kind, start, i))
            kind = None
        if prefix == "B":                 # only B- starts an entity: a stray I- is dropped
            kind, start = t, i
    if kind is not None:
        spans.append((kind, start, len(tags)))
    return spans
''',
        "loses": ["test_spans_ill_formed"],
    },
    "entities of different sentences pooled, so a span matches one in another sentence": {
        "cell": "entity_prf",
        "source": '''def entity_prf(pred_spans, true_spans):
    """Micro (precision, recall, f1) of N sentences' predicted entities against the true ones, by exact match."""
    pred = {s for spans in pred_spans for s in spans}
    true = {s for spans in true_spans for s in spans}
    correct = len(pred & true)
    precision = correct / len(pred) if pred else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
''',
        "loses": ["test_entity_prf_corpus"],
    },
    "token F1 always counts the O tokens (token accuracy)": {
        "cell": "token_f1",
        "source": '''def token_f1(pred, true, include_o=False):
    """Token micro-F1 of N sentences of tags; over every tag with include_o, else over the B-/I- tags."""
    p = np.array([t for seq in pred for t in seq])
    y = np.array([t for seq in true for t in seq])
    return float((p == y).mean())
''',
        "loses": ["test_token_f1_simple", "test_token_f1_corpus"],
    },
}
