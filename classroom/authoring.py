"""Cells of an nbgrader source notebook, with the metadata nbgrader reads (schema version 3).

An assignment is a list of cells: markdown, plain code (``setup`` cells are locked so a student cannot change
them), ``solution`` cells whose answer lies between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, and
``tests`` cells worth points, whose hidden part lies between ``### BEGIN HIDDEN TESTS`` and
``### END HIDDEN TESTS``. ``write_assignment`` checks the ids and markers before it writes the notebook.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat

SCHEMA_VERSION = 3
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def _meta(grade_id: str, *, grade: bool, solution: bool, locked: bool, points: float | None = None) -> dict:
    if not _ID.match(grade_id):
        raise ValueError(f"grade_id {grade_id!r} must be lowercase letters, digits and underscores")
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA_VERSION,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def markdown(text: str) -> nbformat.NotebookNode:
    """A markdown cell students may edit (their written answers go in cells like this)."""
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def setup(grade_id: str, source: str) -> nbformat.NotebookNode:
    """A locked code cell: imports and data every task needs; nbgrader restores it before grading."""
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(grade_id, grade=False, solution=False,
                                                                        locked=True))


def solution(grade_id: str, source: str) -> nbformat.NotebookNode:
    """A cell the student completes; the release replaces each solution region by ``raise NotImplementedError()``."""
    if "### BEGIN SOLUTION" not in source or "### END SOLUTION" not in source:
        raise ValueError(f"solution cell {grade_id!r} has no ### BEGIN SOLUTION / ### END SOLUTION region")
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(grade_id, grade=False, solution=True,
                                                                        locked=False))


def tests(grade_id: str, points: float, source: str) -> nbformat.NotebookNode:
    """An autograded, locked test cell worth ``points``: it earns them when it runs without an error."""
    if points <= 0:
        raise ValueError(f"test cell {grade_id!r}: points must be > 0, got {points}")
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=_meta(grade_id, grade=True, solution=False,
                                                                        locked=True, points=points))


def write_assignment(path, cells, *, title: str | None = None) -> Path:
    """Write the source notebook ``path`` after checking that grade ids are unique and hidden tests closed."""
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.metadata]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"grade ids used twice: {dupes}")
    for c in cells:
        if c.source.count("### BEGIN HIDDEN TESTS") != c.source.count("### END HIDDEN TESTS"):
            raise ValueError(f"cell {c.metadata.get('nbgrader', {}).get('grade_id')!r}: unbalanced hidden tests")
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    if title:
        nb.metadata["title"] = title
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path
