"""Graded variants of assignment 07: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["hardest_negatives", "ogm_by_hand"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "mining that can pick the positive (argmax over the whole row)": {
        "cell": "hardest_negatives",
        "source": '''def hardest_negatives(similarity, exclude=None):
    """The hardest non-matching candidate of each row: (B, B) -> (B,)."""
    scores = similarity
    if exclude is not None:
        scores = similarity.masked_fill(exclude, float("-inf"))
    return scores.argmax(1)
''',
        "loses": ["test_hardest_never_positive"],
    },
    "the positive masked with 0 instead of -inf (picked when every logit is negative)": {
        "cell": "hardest_negatives",
        "source": '''def hardest_negatives(similarity, exclude=None):
    """The hardest non-matching candidate of each row: (B, B) -> (B,)."""
    b = similarity.shape[0]
    allowed = ~torch.eye(b, dtype=torch.bool)
    if exclude is not None:
        keep = allowed & ~exclude
        allowed = torch.where(keep.any(1, keepdim=True), keep, allowed)
    return similarity.masked_fill(~allowed, 0.0).argmax(1)
''',
        "loses": ["test_hardest_never_positive"],
    },
    "ITM loss without the caption-side negatives (2B pairs)": {
        "cell": "itm_loss",
        "source": '''def itm_loss(itm, image, text, neg_text, neg_image):
    """ITM loss of the true pairs and the mined captions."""
    logits = itm(torch.cat([image, image]), torch.cat([text, text[neg_text]]))      # (2B,)
    b = len(image)
    target = torch.cat([torch.ones(b), torch.zeros(b)])
    return F.binary_cross_entropy_with_logits(logits, target)
''',
        "loses": ["test_itm_shapes", "test_itm_reference"],
    },
    "OGM ratio inverted (the weaker modality is damped)": {
        "cell": "ogm_by_hand",
        "source": '''def ogm_by_hand(scores, alpha):
    """OGM-GE coefficients: scores (M,) > 0, alpha >= 0 -> k (M,) in (0, 1]."""
    others = (scores.sum() - scores) / (len(scores) - 1)
    rho = others / scores
    return torch.where(rho > 1, 1 - torch.tanh(alpha * rho), torch.ones_like(rho))
''',
        "loses": ["test_ogm_two", "test_ogm_many"],
    },
}
