"""Graded variants of assignment 10: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["hand_step", "top_k"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "gradients clipped after the optimizer step": {
        "cell": "hand_step",
        "source": '''def hand_step(model, batch, loss_fn, optimizer, clip):
    """One optimizer step with gradient clipping; returns (loss (), total gradient norm before clipping ())."""
    loss = loss_fn(model, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()                        # the step reads the unclipped gradients
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale)
    return loss.detach(), norm
''',
        "loses": ["test_hand_step_one", "test_hand_step_many"],
    },
    "checkpoint written straight over the old file": {
        "cell": "save_atomic",
        "source": '''def save_atomic(path, contents):
    """torch.save(contents) to a temporary file next to path, then os.replace it over path."""
    torch.save(contents, path)              # a crash mid-write leaves a truncated checkpoint
    return Path(path)
''',
        "loses": ["test_save_atomic_failure"],
    },
    "resume restores the weights but not the optimizer state": {
        "cell": "resume_training",
        "source": '''def resume_training(path, model, optimizer):
    """Load save_training's checkpoint into a fresh model and optimizer; return the step to continue from."""
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    torch.set_rng_state(state["rng"])
    return state["step"]
''',
        "loses": ["test_resume_exact"],
    },
    "top-k names in the wrong order (least probable of the k first)": {
        "cell": "top_k",
        "source": '''def top_k(prediction, k):
    """The k most probable class names of each sample, most probable first: N lists of k strings."""
    order = prediction.probs.argsort(dim=1)[:, -k:]          # the k largest, but in ascending order
    return [[prediction.class_names[j] for j in row] for row in order.tolist()]
''',
        "loses": ["test_top_k_basic", "test_top_k_full"],
    },
}
