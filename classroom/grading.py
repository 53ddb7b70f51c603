"""Release the course's assignments and autograde a folder of submissions with nbgrader, in one process.

Folders (``work`` defaults to ``build/classroom``)::

    assignments/source/<id>/<id>.ipynb        the teacher's notebooks: solutions and hidden tests
    work/release/<id>/<id>.ipynb              the student copies (``release``): no solution, no hidden test
    SUBMISSIONS/<student>/<id>/<id>.ipynb     what students handed in: read, never written
    work/autograded/<student>/<id>/           the executed submissions, with scores
    work/feedback/<student>/<id>/<id>.html    per-student feedback
    work/grades.csv                           one row per student and assignment, with status and reason
    work/nbgrader_grades.csv                  nbgrader's own export of the gradebook
    work/gradebook.db                         the sqlite gradebook

``grade`` checks every submission before nbgrader sees it (missing notebook, a file that is not a notebook)
and grades the rest one student at a time, so one broken submission never stops the others: every student
gets a row in ``grades.csv`` with its status (graded / failed / missing / invalid) and the reason.
nbgrader restores the source's locked cells (setup and tests) before it executes a submission, so an edited
test cell earns nothing. Kernels are forked from a warm process (:mod:`classroom.forkkernel`).
"""
from __future__ import annotations

import ast
import contextlib
import csv
import io
import os
import sys
import json
import logging
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from traitlets.config import Config

from classroom import forkkernel
from mmcourse.utils import atomic_write, build_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COURSE_DIR = PROJECT_ROOT / "assignments"
DEFAULT_TIMEOUT_S = 60          # per cell: the slowest solution cell runs in a few seconds
COURSE_ID = "mmcourse"
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# packages whose modules the zygote may import ahead (a teacher's source imports them); never pyplot's backend
PRELOADABLE = {"mmcourse", "numpy", "torch", "scipy", "sklearn"}
GRADE_COLUMNS = ("student", "assignment", "status", "score", "max_score", "reason", "seconds")


@dataclass
class Outcome:
    """The grade of one student on one assignment."""
    student: str
    assignment: str
    status: str                 # graded | failed (nbgrader could not finish) | missing | invalid
    score: float = 0.0
    max_score: float = 0.0
    reason: str = ""
    seconds: float = 0.0
    cells: dict[str, tuple[float, float]] = field(default_factory=dict)   # test cell -> (score, max)


class GradingError(RuntimeError):
    """A step the whole class depends on failed (e.g. releasing an assignment)."""


def work_dir() -> Path:
    """``build/classroom`` (or ``$MMCOURSE_BUILD/classroom``): where grading writes by default."""
    return build_dir("classroom")


def course_config(work=None, course_dir=COURSE_DIR, submissions=None, *, timeout=DEFAULT_TIMEOUT_S,
                  fork=True) -> Config:
    """The nbgrader configuration: the source under ``course_dir``, everything it writes under ``work``."""
    work, course_dir = Path(work or work_dir()).resolve(), Path(course_dir).resolve()
    if not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    c = Config()
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.root = str(work)
    # nbgrader joins each folder to root; absolute paths keep the teacher's source outside build/
    c.CourseDirectory.source_directory = str(course_dir / "source")
    c.CourseDirectory.release_directory = str(work / "release")
    c.CourseDirectory.submitted_directory = str(Path(submissions).resolve() if submissions else work / "submitted")
    c.CourseDirectory.autograded_directory = str(work / "autograded")
    c.CourseDirectory.feedback_directory = str(work / "feedback")
    c.CourseDirectory.db_url = f"sqlite:///{work / 'gradebook.db'}"
    c.Exchange.root = str(work / "exchange")
    c.Execute.timeout = timeout
    c.Execute.interrupt_on_timeout = True        # a looping cell is stopped; the cells after it still run
    c.Execute.kernel_name = forkkernel.KERNEL_NAME if fork else "python3"
    c.NbGraderAPI.log_level = logging.WARNING
    return c


# nbgrader's gradebook triggers SQLAlchemy autoflush warnings on every autograde; they are not ours to fix
warnings.filterwarnings("ignore", message=".*not in session.*", module="nbgrader")


class Classroom:
    """One course directory and one work folder; ``release`` and ``grade`` run nbgrader in this process."""

    def __init__(self, course_dir=COURSE_DIR, work=None, *, timeout: int = DEFAULT_TIMEOUT_S,
                 fork: bool = True):
        self.course_dir, self.work = Path(course_dir).resolve(), Path(work or work_dir()).resolve()
        self.timeout, self.fork = timeout, fork
        if not (self.course_dir / "source").is_dir():
            raise FileNotFoundError(f"course directory {self.course_dir} has no source/ folder")

    def assignment_ids(self) -> list[str]:
        return sorted(p.name for p in (self.course_dir / "source").iterdir()
                      if p.is_dir() and any(p.glob("*.ipynb")))

    def notebooks(self, assignment: str) -> list[str]:
        """The notebook names of ``assignment`` (e.g. ``['05_fusion.ipynb']``)."""
        folder = self.course_dir / "source" / assignment
        if not folder.is_dir():
            raise FileNotFoundError(f"no assignment {assignment!r}: {folder} does not exist; "
                                    f"choose from {self.assignment_ids()}")
        return sorted(p.name for p in folder.glob("*.ipynb"))

    def _api(self, submissions=None):
        # nbgrader runs the `alembic` command of its own environment to check the gradebook's schema
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory
        config = course_config(self.work, self.course_dir, submissions, timeout=self.timeout, fork=self.fork)
        self.work.mkdir(parents=True, exist_ok=True)
        return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)

    def release(self, ids=None, api=None) -> dict[str, Path]:
        """Write the student copy of each assignment (all by default) to ``work/release/<id>/``."""
        ids = self._checked_ids(ids)
        api = api or self._api()
        for aid in ids:
            result = api.generate_assignment(aid, force=True, create=True)
            if not result["success"]:
                raise GradingError(f"releasing {aid} failed:\n{result.get('error', '')}{result.get('log', '')}")
        return {aid: self.work / "release" / aid for aid in ids}

    def _checked_ids(self, ids) -> list[str]:
        known = self.assignment_ids()
        ids = known if ids is None else list(ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"unknown assignments {unknown}; the course has {known}")
        return ids

    def grade(self, submissions, ids=None, *, release: bool = True, feedback: bool = True) -> list[Outcome]:
        """Autograde ``submissions/<student>/<id>/``; write grades.csv, nbgrader's export and feedback.

        ``release=False`` skips re-releasing (and re-registering) assignments this work folder released;
        ``feedback=False`` skips the per-student HTML (the course's own variant checks need only scores).
        """
        submissions = Path(submissions).resolve()
        if not submissions.is_dir():
            raise FileNotFoundError(f"SUBMISSIONS folder {submissions} does not exist")
        students = sorted(p.name for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not students:
            raise ValueError(f"{submissions} holds no student folders (expected <student>/<assignment>/)")
        ids = self._checked_ids(ids if ids is not None else
                                [a for a in self.assignment_ids()
                                 if any((submissions / s / a).is_dir() for s in students)] or None)
        api = self._api(submissions)
        if release:
            self.release(ids, api)
        outcomes = []
        with _kernels(self.work, self.fork, self.preload(ids)):
            for aid in ids:
                for student in students:
                    outcomes.append(self._grade_one(api, submissions, student, aid))
        self._write_reports(api, outcomes, feedback)
        return outcomes

    def preload(self, ids) -> tuple[str, ...]:
        """Modules the zygote imports: the defaults and every package module the assignments' sources import."""
        found = set()
        for aid in ids:
            for name in self.notebooks(aid):
                for cell in nbformat.read(self.course_dir / "source" / aid / name, as_version=4).cells:
                    if cell.cell_type == "code":
                        found |= _imported_modules(cell.source)
        extra = {m for m in found if m.split(".")[0] in PRELOADABLE} - set(forkkernel.DEFAULT_PRELOAD)
        return (*forkkernel.DEFAULT_PRELOAD, *sorted(extra))

    def _grade_one(self, api, submissions: Path, student: str, aid: str) -> Outcome:
        expected = self.notebooks(aid)
        max_score = _max_score(self.course_dir / "source" / aid, expected)
        problem = _submission_problem(submissions, student, aid, expected)
        if problem is not None:
            status, reason = problem
            return Outcome(student, aid, status, 0.0, max_score, reason)
        started = time.perf_counter()
        result = api.autograde(aid, student, force=True, create=True)
        seconds = time.perf_counter() - started
        if not result["success"]:
            return Outcome(student, aid, "failed", 0.0, max_score, _last_error(result), seconds)
        score, cells = _scores(api, aid, student)
        return Outcome(student, aid, "graded", score, max_score, _cell_errors(self.work, student, aid), seconds,
                       cells)

    def _write_reports(self, api, outcomes: list[Outcome], feedback: bool) -> None:
        """Feedback first (its failures join the reason), then grades.csv, then nbgrader's export."""
        from nbgrader.api import Gradebook
        from nbgrader.plugins import CsvExportPlugin
        for o in outcomes if feedback else ():
            folder = self.work / "feedback" / o.student / o.assignment
            if o.status == "graded":
                result = api.generate_feedback(o.assignment, o.student, force=True)
                if not result["success"]:
                    o.reason = (o.reason + "; " if o.reason else "") + "feedback failed: " + _last_error(result)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "NOT_GRADED.txt").write_text(f"{o.assignment} of {o.student}: {o.status}. {o.reason}\n")

        def write_grades(fh) -> None:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(GRADE_COLUMNS)
            for o in outcomes:
                writer.writerow([o.student, o.assignment, o.status, f"{o.score:g}", f"{o.max_score:g}",
                                 o.reason, f"{o.seconds:.1f}"])
            text.flush()
            text.detach()

        atomic_write(self.work / "grades.csv", write_grades)    # a reader never sees half a class
        with Gradebook(api.coursedir.db_url) as gradebook:
            plugin = CsvExportPlugin()
            plugin.to = str(self.work / "nbgrader_grades.csv")
            plugin.export(gradebook)


@contextlib.contextmanager
def _kernels(work: Path, fork: bool, preload):
    """Within: grading kernels start from a zygote (``fork``) through the course's kernelspec."""
    if not fork:
        yield
        return
    share = work / "jupyter"
    forkkernel.write_kernelspec(share)
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(share), previous) if p)
    socket_path = Path(tempfile.gettempdir()) / f"mmcourse-grader-{os.getpid()}.sock"   # < 108 bytes
    try:
        with forkkernel.Zygote(socket_path, preload):
            yield
    finally:
        if previous is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = previous


def _imported_modules(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _submission_problem(submissions: Path, student: str, aid: str, expected: list[str]):
    """(status, reason) when the submission cannot be graded, else None."""
    if not STUDENT_ID.match(student):
        return "invalid", f"student folder name {student!r} is not a valid id (letters, digits, _ . -)"
    folder = submissions / student / aid
    if not folder.is_dir():
        return "missing", f"no folder {aid}/ in {student}/"
    for name in expected:
        path = folder / name
        if not path.is_file():
            found = sorted(p.name for p in folder.glob("*.ipynb"))
            return "missing", f"{student}/{aid}/{name} is missing (found: {found or 'no notebook'})"
        where = f"{student}/{aid}/{name}"
        try:
            text = path.read_text(encoding="utf-8")
            json.loads(text)
        except UnicodeDecodeError:
            return "invalid", f"{where} is not UTF-8 text"
        except json.JSONDecodeError as err:
            return "invalid", f"{where} is not valid JSON: line {err.lineno}, column {err.colno}: {err.msg}"
        try:
            nbformat.validate(nbformat.reads(text, as_version=4))
        except (ValueError, KeyError, TypeError, AttributeError, nbformat.ValidationError) as err:   # odd JSON
            return "invalid", f"{where} is not a notebook: {str(err).splitlines()[0][:200]}"
    return None


def _max_score(folder: Path, names: list[str]) -> float:
    total = 0.0
    for name in names:
        for cell in nbformat.read(folder / name, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                total += float(meta.get("points", 0))
    return total


def _scores(api, aid: str, student: str) -> tuple[float, dict[str, tuple[float, float]]]:
    from nbgrader.api import Gradebook
    cells = {}
    with Gradebook(api.coursedir.db_url) as gradebook:
        submission = gradebook.find_submission(aid, student)
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                cells[grade.name] = (float(grade.score), float(grade.max_score))
        return float(submission.score), cells


def _cell_errors(work: Path, student: str, aid: str) -> str:
    """The errors the graded notebook shows, e.g. 'cell 4: NameError: name 'x' is not defined'."""
    errors = []
    for path in sorted((work / "autograded" / student / aid).glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", f"cell {i}")
                    errors.append(f"{grade_id}: {out.get('ename')}")
    return "; ".join(errors)


_EXCEPTION = re.compile(r"^([\w.]+(Error|Exception|Interrupt|Exit))(: .*)?$")


def _last_error(result: dict) -> str:
    """The exception behind a failed nbgrader step (its log holds the traceback; the error says only 'see log')."""
    text = (result.get("log") or "") + "\n" + (result.get("error") or "")
    found = [m.group(0) for ln in text.splitlines() if (m := _EXCEPTION.match(ln.strip()))
             and "NbGraderException" not in m.group(1)]
    return found[-1][:300] if found else "nbgrader gave no reason"


def read_grades(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
