"""The commands a teacher types: `python -m classroom release|grade` (make assignments / make grade) and
nbgrader's own CLI run from assignments/ with its nbgrader_config.py. Everything is written under
$MMCOURSE_BUILD (conftest points it at a temporary folder), never into the repository.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
AID = "03_loss_formulation"


def _run(args, cwd=ROOT):
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_release_then_grade_a_class_from_the_command_line(tmp_path):
    build = Path(os.environ["MMCOURSE_BUILD"])
    done = _run([sys.executable, "-m", "classroom", "release", AID])
    assert done.returncode == 0, done.stderr[-2000:]
    release = build / "classroom" / "release" / AID / f"{AID}.ipynb"
    assert release.is_file() and "BEGIN SOLUTION" not in release.read_text()
    submissions = tmp_path / "class"
    (submissions / "ada" / AID).mkdir(parents=True)
    shutil.copy(ROOT / "assignments" / "source" / AID / f"{AID}.ipynb", submissions / "ada" / AID)
    (submissions / "bob" / AID).mkdir(parents=True)
    shutil.copy(release, submissions / "bob" / AID)
    done = _run([sys.executable, "-m", "classroom", "--timeout", "30", "grade", str(submissions)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 submissions in" in done.stdout and "0 not graded" in done.stdout
    rows = (build / "classroom" / "grades.csv").read_text().splitlines()
    assert rows[1].startswith(f"ada,{AID},graded,15,15,") and rows[2].startswith(f"bob,{AID},graded,0,15,")
    assert (build / "classroom" / "feedback" / "bob" / AID / f"{AID}.html").is_file()


def test_nbgraders_own_cli_reads_the_course_config(tmp_path):
    build = Path(os.environ["MMCOURSE_BUILD"])
    nbgrader = str(Path(sys.executable).parent / "nbgrader")
    done = _run([nbgrader, "generate_assignment", AID, "--force"], cwd=ROOT / "assignments")
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    nb = nbformat.read(build / "classroom" / "release" / AID / f"{AID}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert not (ROOT / "assignments" / "release").exists(), "nbgrader must write under build/, not assignments/"
