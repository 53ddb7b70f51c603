"""Graded variants of assignment 01: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["quiet_predictions", "reveal_prob", "entity_share"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "forgets that a caption names the material only with its mention probability": {
        "cell": "quiet_predictions",
        "source": '''# Your predictions: numbers between 0 and 1
my_audio_image = 0.75
my_audio_text = 0.52     # the caption always names the material: p_f = 1
my_all_three = 1.0
''',
        "loses": ["test_quiet_text_and_all"],
    },
    "adds the event probabilities instead of combining them": {
        "cell": "reveal_prob",
        "source": '''def reveal_prob(world, subset, attribute):
    """Probability (float) that some event of the modalities in ``subset`` (tuple of names) reveals ``attribute``."""
    return float(sum(e.prob for m in subset for e in world.observation[m] if attribute in e.reveals))
''',
        "loses": ["test_reveal_prob", "test_product_accuracy"],
    },
    "reads only B- tags, so an <unk> inside a multi-word entity is missed": {
        "cell": "unk_attribute",
        "source": '''def unk_attribute(ids, tags):
    """ids, tags: (L,) int arrays of one caption. Returns a list: the attribute name (or None) of each <unk>."""
    attribute_of = {kind: a for a, kind in ENTITY_TYPES.items()}
    return [attribute_of.get(TAGS[t][2:]) for i, t in zip(ids, tags) if i == UNK_ID and TAGS[t].startswith("B-")]
''',
        "loses": ["test_unk_damaged"],
    },
    "counts padding in the mean": {
        "cell": "entity_share",
        "source": '''def entity_share(ids, tags):
    """(N, L) ids, (N, L) tag ids -> (N,) share of real tokens that carry an entity tag."""
    return (tags != TAGS.index("O")).mean(1)
''',
        "loses": ["test_entity_share_simple", "test_entity_share_padding"],
    },
}
