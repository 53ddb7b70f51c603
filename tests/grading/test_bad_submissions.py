"""Grading a class where some submissions are broken: each is graded or reported, none stops the run.

A small assignment (two functions, three test cells, 10 points) is built in a temporary course directory and
eight students hand in: a correct copy, a cell that raises, an infinite loop, a missing import, an edited
test cell, a dead kernel, a file that is not JSON, and no notebook. All are graded in one run.
"""
from __future__ import annotations

import hashlib
import json

import nbformat
import pytest

from classroom import authoring, grading

AID = "t01_double"
TIMEOUT_S = 8           # per cell; the infinite loop costs one timeout

DOUBLE = 'def double(x):\n    """x: a number -> 2x"""\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION'
TRIPLE = 'def triple(x):\n    ### BEGIN SOLUTION\n    return 3 * x\n    ### END SOLUTION'


def _source_cells():
    return [
        authoring.markdown("# Assignment t01: double and triple"),
        authoring.setup("setup", "import math"),
        authoring.solution("double", DOUBLE),
        authoring.tests("test_double", 4, "assert double(1) == 2\n### BEGIN HIDDEN TESTS\nassert double(-3) == -6\n"
                                          "### END HIDDEN TESTS"),
        authoring.solution("triple", TRIPLE),
        authoring.tests("test_triple", 3, "assert triple(1) == 3"),
        authoring.tests("test_triple_hidden", 3, "### BEGIN HIDDEN TESTS\nassert triple(5) == 15\n"
                                                 "### END HIDDEN TESTS"),
    ]


def _with(nb, grade_id, source):
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            cell.source = source
    return nb


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    course, submissions = root / "course", root / "submissions"
    authoring.write_assignment(course / "source" / AID / f"{AID}.ipynb", _source_cells())
    classroom = grading.Classroom(course, root / "work", timeout=TIMEOUT_S)
    release = nbformat.read(classroom.release([AID])[AID] / f"{AID}.ipynb", as_version=4)
    source = nbformat.read(course / "source" / AID / f"{AID}.ipynb", as_version=4)
    hand_ins = {
        "ada": source,
        "raises": _with(source, "double", 'def double(x):\n    raise RuntimeError("boom")'),
        "loops": _with(source, "double", "while True:\n    pass"),
        "no_import": _with(source, "triple", "def triple(x):\n    return int(np.round(3 * x))"),
        # the stub left in place, the visible test emptied: nbgrader restores the source's test cell
        "edits_tests": _with(_with(release, "test_double", "pass"), "triple", TRIPLE),
        "kills_kernel": _with(source, "triple", "import os\nos._exit(1)"),
    }
    for student, nb in hand_ins.items():
        (submissions / student / AID).mkdir(parents=True)
        nbformat.write(nb, submissions / student / AID / f"{AID}.ipynb")
    (submissions / "not_json" / AID).mkdir(parents=True)
    (submissions / "not_json" / AID / f"{AID}.ipynb").write_text('{"cells": [\n  {"cell_type": "code",,}\n')
    (submissions / "no_notebook" / AID).mkdir(parents=True)
    (submissions / "no_notebook" / AID / "answers.txt").write_text("I forgot the notebook")
    before = _digest(submissions)
    outcomes = {o.student: o for o in classroom.grade(submissions)}
    return classroom, outcomes, before, _digest(submissions)


def test_every_student_has_a_grade_row_with_status(graded):
    classroom, outcomes, _, _ = graded
    rows = {r["student"]: r for r in grading.read_grades(classroom.work / "grades.csv")}
    assert set(rows) == {"ada", "raises", "loops", "no_import", "edits_tests", "kills_kernel", "not_json",
                         "no_notebook"}
    assert {s: r["status"] for s, r in rows.items()} == {
        "ada": "graded", "raises": "graded", "loops": "graded", "no_import": "graded", "edits_tests": "graded",
        "kills_kernel": "failed", "not_json": "invalid", "no_notebook": "missing"}
    assert all(r["max_score"] == "10" for r in rows.values())
    assert (classroom.work / "nbgrader_grades.csv").read_text().count(AID) >= 6


def test_scores_follow_what_each_submission_got_right(graded):
    _, outcomes, _, _ = graded
    assert outcomes["ada"].score == 10
    assert outcomes["raises"].score == 6 and outcomes["raises"].cells["test_double"] == (0, 4)
    assert outcomes["loops"].score == 6, "the loop is stopped by the cell timeout; later cells still run"
    assert outcomes["no_import"].score == 4 and "NameError" in outcomes["no_import"].reason
    assert outcomes["edits_tests"].score == 6, "an emptied test cell must not earn its points"
    assert outcomes["edits_tests"].cells["test_double"] == (0, 4)


def test_broken_submissions_are_reported_by_name_with_their_reason(graded):
    _, outcomes, _, _ = graded
    assert outcomes["not_json"].reason.startswith(f"not_json/{AID}/{AID}.ipynb is not valid JSON: line 2")
    assert "is missing" in outcomes["no_notebook"].reason and "no notebook" in outcomes["no_notebook"].reason
    assert "Kernel" in outcomes["kills_kernel"].reason or "kernel" in outcomes["kills_kernel"].reason
    assert "CellTimeoutError" in outcomes["loops"].reason or "KeyboardInterrupt" in outcomes["loops"].reason


def test_feedback_for_every_graded_student_shows_the_error(graded):
    classroom, outcomes, _, _ = graded
    for student, o in outcomes.items():
        folder = classroom.work / "feedback" / student / AID
        if o.status == "graded":
            assert (folder / f"{AID}.html").is_file(), student
        else:
            assert o.reason in (folder / "NOT_GRADED.txt").read_text()
    assert "boom" in (classroom.work / "feedback" / "raises" / AID / f"{AID}.html").read_text()


def test_no_student_file_is_changed_or_deleted(graded):
    _, _, before, after = graded
    assert after == before and len(before) == 8


def test_a_missing_submissions_folder_and_an_unknown_assignment_are_clear_errors(graded, tmp_path):
    classroom = graded[0]
    with pytest.raises(FileNotFoundError, match="SUBMISSIONS folder .* does not exist"):
        classroom.grade(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown assignments"):
        classroom.release(["no_such_assignment"])
    with pytest.raises(ValueError, match="timeout must be a positive"):
        grading.course_config(timeout=0)
