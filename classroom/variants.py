"""Graded variants of an assignment, and what each must score: the proof that an assignment grades honestly.

``assignments/variants/<id>.py`` names, for assignment ``<id>``:

- ``PARTIAL``: the solution cells a partial copy keeps (every other solution cell gets the release's stub);
- ``WRONG``: plausible wrong answers, each ``{"cell": <solution grade id>, "source": <the whole cell>,
  "loses": [<test grade ids that must score 0>]}``.

``build_variants`` makes one notebook per variant; ``problems`` lists every broken expectation:
the source scores full marks, the release 0, the partial copy strictly between, each wrong answer 0 on its
``loses`` cells and less than full marks.
"""
from __future__ import annotations

import copy
import re
import runpy
from dataclasses import dataclass
from pathlib import Path

import nbformat

SOLUTION, RELEASE, PARTIAL = "solution", "release", "partial"
_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS", re.S)
_SOLVED = re.compile(r"### BEGIN SOLUTION(.*?)### END SOLUTION", re.S)


@dataclass
class Spec:
    partial: list[str]
    wrong: dict[str, dict]


def wrong_student(name: str) -> str:
    """The student id of a wrong-answer variant, e.g. 'wrong-ignores-the-presence-mask'."""
    return "wrong-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def load_spec(course_dir, aid: str) -> Spec:
    path = Path(course_dir) / "variants" / f"{aid}.py"
    if not path.is_file():
        raise FileNotFoundError(f"assignment {aid} has no variants file {path}")
    ns = runpy.run_path(str(path))
    partial, wrong = list(ns.get("PARTIAL", [])), dict(ns.get("WRONG", {}))
    for name, w in wrong.items():
        missing = {"cell", "source", "loses"} - set(w)
        if missing:
            raise ValueError(f"{path}: wrong answer {name!r} lacks {sorted(missing)}")
    if not wrong:
        raise ValueError(f"{path}: WRONG names no plausible wrong answer")
    return Spec(partial, wrong)


def _by_id(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "grade_id" in c.metadata.get("nbgrader", {})}


def _solution_ids(nb) -> list[str]:
    return [gid for gid, c in _by_id(nb).items() if c.metadata["nbgrader"].get("solution")]


def build_variants(source, release, spec: Spec) -> dict[str, nbformat.NotebookNode]:
    """{student id: notebook}: the solved source, the untouched release, the partial copy, each wrong answer."""
    solutions, stubs = _solution_ids(source), _by_id(release)
    unknown = [g for g in spec.partial if g not in solutions]
    unknown += [w["cell"] for w in spec.wrong.values() if w["cell"] not in solutions]
    if unknown:
        raise ValueError(f"variants name cells that are not solution cells: {unknown}; solutions: {solutions}")
    partial = copy.deepcopy(source)
    for gid, cell in _by_id(partial).items():
        if gid in solutions and gid not in spec.partial:
            cell.source = stubs[gid].source
    variants = {SOLUTION: copy.deepcopy(source), RELEASE: copy.deepcopy(release), PARTIAL: partial}
    for name, w in spec.wrong.items():
        nb = copy.deepcopy(source)
        _by_id(nb)[w["cell"]].source = w["source"].strip("\n")
        variants[wrong_student(name)] = nb
    for nb in variants.values():
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
    return variants


def write_variants(variants: dict, submissions, aid: str) -> None:
    for student, nb in variants.items():
        folder = Path(submissions) / student / aid
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / f"{aid}.ipynb")


def release_leaks(source, release) -> list[str]:
    """Lines of ``source``'s solutions or hidden tests that appear in ``release`` (and nowhere public)."""
    text = "\n".join(c.source for c in release.cells)
    public = "\n".join(_SOLVED.sub("", _HIDDEN.sub("", c.source)) for c in source.cells)
    leaks = []
    if "BEGIN HIDDEN TESTS" in text or "BEGIN SOLUTION" in text:
        leaks.append("a solution or hidden-test marker")
    for cell in source.cells:
        for block in _HIDDEN.findall(cell.source) + _SOLVED.findall(cell.source):
            for line in block.splitlines():
                line = line.strip()
                if len(line) > 12 and not line.startswith("#") and line in text and line not in public:
                    leaks.append(line)
    return leaks


def problems(spec: Spec, outcomes: dict) -> list[str]:
    """Broken expectations, given {student id: Outcome} of one assignment's variants."""
    found = []
    solved = outcomes[SOLUTION]
    full = solved.max_score
    if full < 10:
        found.append(f"the assignment is worth {full:g} points; at least 10 are required")
    if len([c for c in solved.cells]) < 3:
        found.append(f"only {len(solved.cells)} test cells; at least 3 give partial credit")
    for student, o in outcomes.items():
        if o.status != "graded":
            found.append(f"{student}: {o.status} ({o.reason})")
    if solved.score != full:
        found.append(f"the source scores {solved.score:g} of {full:g} ({solved.reason})")
    if outcomes[RELEASE].score != 0:
        found.append(f"the untouched release scores {outcomes[RELEASE].score:g}, not 0")
    if not 0 < outcomes[PARTIAL].score < full:
        found.append(f"the partial copy scores {outcomes[PARTIAL].score:g}, not strictly between 0 and {full:g}")
    for name, w in spec.wrong.items():
        o = outcomes[wrong_student(name)]
        if o.score >= full:
            found.append(f"wrong answer {name!r} scores full marks")
        kept = [c for c in w["loses"] if o.cells.get(c, (1, 1))[0] > 0]
        if kept:
            found.append(f"wrong answer {name!r} still earns points on {kept}")
    return found


def grade_variants(classroom, ids=None) -> tuple[list, dict[str, list[str]]]:
    """Release ``ids``, write every variant as a student's submission, grade all in one run.

    Returns the outcomes and, per assignment, its broken expectations (release leaks included).
    """
    ids = classroom._checked_ids(ids)
    released = classroom.release(ids)
    submissions = classroom.work / "variants"
    specs, found = {}, {}
    for aid in ids:
        name = f"{aid}.ipynb"
        source = nbformat.read(classroom.course_dir / "source" / aid / name, as_version=4)
        release = nbformat.read(released[aid] / name, as_version=4)
        specs[aid] = load_spec(classroom.course_dir, aid)
        write_variants(build_variants(source, release, specs[aid]), submissions, aid)
        found[aid] = [f"the release shows {line!r}" for line in release_leaks(source, release)]
    outcomes = classroom.grade(submissions, ids, release=False, feedback=False)
    for aid in ids:
        mine = {o.student: o for o in outcomes if o.assignment == aid and o.student in _students(specs[aid])}
        found[aid] += problems(specs[aid], mine)
    return [o for o in outcomes if o.student in _students(specs[o.assignment])], found


def _students(spec: Spec) -> set[str]:
    return {SOLUTION, RELEASE, PARTIAL, *map(wrong_student, spec.wrong)}
