"""Graded variants of assignment 18: which solutions a partial copy keeps, and plausible wrong answers."""
# Solution cells (grade ids) that the partial copy keeps; every other solution cell gets the release stub.
# The partial copy must score strictly between 0 and full marks.
PARTIAL = ["suggest_params", "winner_optimism"]

# Plausible wrong answers: the source with one solution cell's whole source replaced. Each must score 0 on
# every test cell in "loses" (and so less than full marks).
WRONG = {
    "learning rate drawn on a linear scale": {
        "cell": "suggest_params",
        "source": '''def suggest_params(trial):
    """{"lr", "weight_decay", "modality_dropout", "width"} drawn from `trial`."""
    return {"lr": trial.suggest_float("lr", 1e-4, 3e-2),
            "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1.0, log=True),
            "modality_dropout": trial.suggest_float("modality_dropout", 0.0, 0.6),
            "width": trial.suggest_categorical("width", (8, 16, 32))}
''',
        "loses": ["test_space_distributions"],
    },
    "study that reopens an old file instead of starting afresh": {
        "cell": "fresh_study",
        "source": '''def fresh_study(path, seed, startup_trials):
    """A new maximising study with a seeded TPE sampler in the sqlite file `path` (any old file is deleted)."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    return optuna.create_study(storage=f"sqlite:///{path}", study_name="search", direction="maximize",
                               sampler=sampler, load_if_exists=True)
''',
        "loses": ["test_fresh_twice"],
    },
    "winner chosen on the fresh set": {
        "cell": "winner_optimism",
        "source": '''def winner_optimism(correct_select, correct_fresh):
    """(index of the best trial on the selection set, its selection accuracy minus its fresh accuracy)."""
    select = np.asarray(correct_select, dtype=np.float64).mean(1)
    fresh = np.asarray(correct_fresh, dtype=np.float64).mean(1)
    winner = int(fresh.argmax())
    return winner, float(select[winner] - fresh[winner])
''',
        "loses": ["test_winner_small"],
    },
    "halvings that select on the second half": {
        "cell": "mean_halving_optimism",
        "source": '''def mean_halving_optimism(correct, halvings, seed):
    """Mean flattery of the winner over `halvings` random halvings of the scenes (columns) of `correct` (T, N)."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    order = np.random.default_rng(seed).permuted(np.tile(np.arange(n), (halvings, 1)), axis=1)
    gaps = [winner_optimism(correct[:, row[n // 2:]], correct[:, row[: n // 2]])[1] for row in order]
    return float(np.mean(gaps))
''',
        "loses": ["test_halving_one"],
    },
}
