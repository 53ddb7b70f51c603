"""The chapters' own exercises: every exercise is checked or carries a rubric, checks skip on stubs, and no
failure message hands out the expected answer. Static tests over the notebook sources (nothing executes)."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUBRIC = "*Open-ended — rubric:*"
CHECK_MARK = re.compile(r"^# check: (exercise \d+(?:, exercise \d+)*)$", re.M)
# An exercise starts a line: "1. ", "**1. " (one cell per exercise) or "### Exercise" (one heading per exercise).
ITEM_START = re.compile(r"^(?:\d+\. |\*\*\d+\. |### Exercise)", re.M)
# Names that hold the expected value (or compute it) in a check; an assert message must not format them.
EXPECTED_NAMES = {"expected", "exact", "truth", "want", "measured", "reference", "uninterrupted", "reweighted",
                  "ceiling_08", "quiet_limit", "shifted_limit", "ceiling_r1", "scored", "top3", "sharp",
                  "entity_spans", "bayes_accuracy", "bayes_table", "bayes_classifier", "zero_shot_classifier",
                  "prepare", "topk", "info_nce", "count_parameters", "acc_unnamed", "acc_named"}


def exercise_cells(path):
    """The cells from '## Exercises' up to, not including, '## Summary'."""
    cells = nbformat.read(path, as_version=4).cells
    start = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises")]
    end = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## Summary")]
    assert len(start) == 1 and len(end) == 1 and start[0] < end[0], "one '## Exercises' before one '## Summary'"
    return cells[start[0]:end[0]]


def exercises(cells):
    """The statement of each exercise, in order (its text up to the next one's start)."""
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    starts = [m.start() for m in ITEM_START.finditer(text)] + [len(text)]
    return [text[a:b] for a, b in zip(starts, starts[1:])]


def checked(cells):
    """{exercise number: source of its check cell} from the '# check: exercise N' lines."""
    out = {}
    for c in cells:
        if c.cell_type == "code":
            for m in CHECK_MARK.finditer(c.source):
                for item in m.group(1).split(", "):
                    out[int(item.split()[1])] = c.source
    return out


def asserts(source):
    """(assert node, its ancestors) for every assert of a code cell."""
    found = []

    def walk(node, parents):
        if isinstance(node, ast.Assert):
            found.append((node, parents))
        for child in ast.iter_child_nodes(node):
            walk(child, parents + [node])

    walk(ast.parse(source), [])
    return found


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def section(request):
    return request.param, exercise_cells(request.param)


def test_the_chapters_have_exercises():
    assert len(NOTEBOOKS) >= 11
    counts = [len(exercises(exercise_cells(p))) for p in NOTEBOOKS]
    assert all(n >= 2 for n in counts), counts
    assert sum(counts[:11]) >= 48 and all(n >= 3 for n in counts[11:]), counts   # 48 in 00-10, 3+ in each later one


def test_every_exercise_is_checked_or_has_a_rubric(section):
    path, cells = section
    items, checks = exercises(cells), checked(cells)
    assert set(checks) <= set(range(1, len(items) + 1)), f"a check names an exercise that does not exist: {checks}"
    for n, statement in enumerate(items, 1):
        if n in checks:
            assert any(isinstance(a, ast.Assert) for a, _ in asserts(checks[n])), f"exercise {n}: a check that cannot fail"
        else:
            assert RUBRIC in statement, f"exercise {n}: neither a '# check: exercise {n}' cell nor '{RUBRIC}'"
    for statement in items:                             # a rubric has concrete points to tick off
        if RUBRIC in statement:
            rubric = statement.split(RUBRIC, 1)[1]
            assert len(re.findall(r"\([a-d]\)", rubric)) >= 2, f"a rubric with fewer than 2 points: {rubric[:80]}"


def test_chapters_point_to_their_graded_assignment(section):
    path, cells = section
    pointer = f"`assignments/source/{path.stem}/{path.stem}.ipynb`"
    head = cells[0].source
    if path.stem.startswith("00"):
        assert "assignments/source" not in head
    else:
        assert pointer in head and "`make assignments`" in head and "`docs/teaching.md`" in head


def test_checks_skip_on_stubs(section):
    """Every assert of an exercise cell sits under an `if` that tests for None (a stub leaves it skipped), and a
    stub is reported: each check cell prints what is answered or says that an exercise is not answered yet."""
    path, cells = section
    for c in cells:
        if c.cell_type != "code":
            continue
        for node, parents in asserts(c.source):
            guards = [p for p in parents if isinstance(p, ast.If) and "None" in ast.unparse(p.test)]
            assert guards, f"{path.stem}: an assert not guarded by a None test: {ast.unparse(node)[:80]}"
        if CHECK_MARK.search(c.source):
            assert re.search(r"not (answered|written) yet|answered:", c.source), f"{path.stem}: silent on stubs"


def test_stub_cells_hold_none(section):
    """The answer cells start as stubs: a constant assigned at top level is None, and a function whose
    returns are all constants returns None (so the committed notebook answers nothing)."""
    path, cells = section
    for c in cells:
        if c.cell_type != "code" or CHECK_MARK.search(c.source):
            continue
        for node in ast.walk(ast.parse(c.source)):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                assert node.value.value is None, f"{path.stem}: {ast.unparse(node)} is not a stub"
            if isinstance(node, ast.FunctionDef):
                returns = [r for r in ast.walk(node) if isinstance(r, ast.Return)]
                if returns and all(isinstance(r.value, ast.Constant) for r in returns):
                    assert all(r.value.value is None for r in returns), f"{path.stem}: {node.name} is not a stub"


def test_failure_messages_do_not_print_the_answer(section):
    path, cells = section
    for c in cells:
        if c.cell_type != "code":
            continue
        for node, _ in asserts(c.source):
            assert node.msg is not None, f"{path.stem}: an assert without a message: {ast.unparse(node)[:80]}"
            msg = node.msg
            assert isinstance(msg, (ast.Constant, ast.JoinedStr)), \
                f"{path.stem}: the message must be a string saying what is wrong: {ast.unparse(msg)[:80]}"
            for value in ast.walk(msg):
                if isinstance(value, ast.Name):
                    assert value.id not in EXPECTED_NAMES, f"{path.stem}: the message formats {value.id}"
                if isinstance(value, ast.Attribute):
                    assert value.attr not in {"grad", "accuracy"} | EXPECTED_NAMES, \
                        f"{path.stem}: the message formats .{value.attr}"


def test_the_static_message_test_catches_a_leak():
    leaky = 'if x is not None:\n    assert abs(x - exact) < 1e-3, f"exact: {exact:.4f}"\n'
    (node, _), = asserts(leaky)
    assert any(isinstance(v, ast.Name) and v.id in EXPECTED_NAMES for v in ast.walk(node.msg))
    assert not [p for p in asserts("assert x == 1, 'x'")[0][1] if isinstance(p, ast.If)]
