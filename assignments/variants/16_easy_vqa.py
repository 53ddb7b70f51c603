"""Graded variants of assignment 16: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["majority_by_text", "gather_film"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "the majority answer of all questions, not of each text": {
        "cell": "majority_by_text",
        "source": '''def majority_by_text(questions, labels, num_answers):
    """{text: its most frequent answer index among `labels`}, ties to the lower index."""
    overall = int(np.bincount(np.asarray(labels), minlength=num_answers).argmax())
    return {t: overall for t in questions}
''',
        "loses": ["test_majority_small", "test_majority_random"],
    },
    "an oracle that ignores negations": {
        "cell": "oracle_answer",
        "source": '''def oracle_answer(question, shape, colour):
    """The answer word to `question` about an image showing one `shape` in one `colour`."""
    words = question.rstrip("?").split()
    if words[0] == "what":
        return colour if "color" in words else shape
    named = [w for w in words if w in vqa.SHAPES + vqa.COLOURS][0]
    return "yes" if named in (shape, colour) else "no"
''',
        "loses": ["test_oracle_four", "test_oracle_templates"],
    },
    "FiLM that scales by gamma - 1 instead of 1 + gamma": {
        "cell": "gather_film",
        "source": '''def gather_film(v, image_index, dgamma, beta, text_index):
    """FiLM of each question's image features by its text's (dgamma, beta): (B_q, P, D)."""
    g, b = dgamma[text_index].unsqueeze(1), beta[text_index].unsqueeze(1)
    return torch.relu(g * v[image_index] + b)
''',
        "loses": ["test_film_shapes", "test_film_loop"],
    },
    "standard error over all questions for every type": {
        "cell": "accuracy_and_se",
        "source": '''def accuracy_and_se(pred, truth, kinds):
    """{"all" and each question type: (accuracy, binomial standard error)}."""
    correct = np.asarray(pred) == np.asarray(truth)
    kinds = np.asarray(kinds)
    out = {"all": (float(correct.mean()), float(np.sqrt(correct.mean() * (1 - correct.mean()) / len(correct))))}
    for k, name in enumerate(vqa.QUESTION_TYPES):
        p = float(correct[kinds == k].mean())
        out[name] = (p, float(np.sqrt(p * (1 - p) / len(correct))))
    return out
''',
        "loses": ["test_se_small", "test_se_random"],
    },
}
