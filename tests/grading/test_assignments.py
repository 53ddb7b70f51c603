"""Every assignment grades honestly: its solutions score full marks, the release 0, a partial copy in between,
and each plausible wrong answer loses the points of the tests it names. All variants of all assignments are
graded in one nbgrader run (one process, one kernel per submission, forked from a warm zygote).
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from classroom import grading, variants

ROOT = Path(__file__).resolve().parents[2]
IDS = grading.Classroom().assignment_ids()
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    classroom = grading.Classroom(work=tmp_path_factory.mktemp("classroom"))
    return (classroom, *variants.grade_variants(classroom, IDS))


def test_every_chapter_from_01_on_has_its_assignment():
    assert IDS == [c for c in CHAPTERS if c >= "01"], "one assignment per chapter, named by its notebook"


@pytest.mark.parametrize("aid", IDS)
def test_assignment_grades_as_its_variants_expect(graded, aid):
    _, _, found = graded
    assert found[aid] == [], "\n".join(found[aid])


@pytest.mark.parametrize("aid", IDS)
def test_release_has_stubs_no_solution_no_hidden_test_and_no_output(graded, aid):
    classroom = graded[0]
    source = nbformat.read(ROOT / "assignments" / "source" / aid / f"{aid}.ipynb", as_version=4)
    release = nbformat.read(classroom.work / "release" / aid / f"{aid}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in source.cells + release.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in release.cells)
    assert "SOLUTION" not in text and "HIDDEN TESTS" not in text
    stubs = [c for c in release.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution")]
    assert stubs and all("raise NotImplementedError()" in c.source for c in stubs)


def test_readme_syllabus_shows_each_assignment_and_its_points():
    readme = (ROOT / "README.md").read_text()
    for aid in IDS:
        nb = nbformat.read(ROOT / "assignments" / "source" / aid / f"{aid}.ipynb", as_version=4)
        points = sum(c.metadata.get("nbgrader", {}).get("points", 0) for c in nb.cells
                     if c.metadata.get("nbgrader", {}).get("grade"))
        row = next((ln for ln in readme.splitlines() if ln.startswith("|") and aid[:2] in ln.split("|")[1]), "")
        assert re.search(rf"\b{points:g} points\b", row), f"README syllabus row of {aid} must say {points:g} points"
