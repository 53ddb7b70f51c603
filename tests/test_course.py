"""mmcourse.course: the results report, and papermill runs of tiny notebooks written here."""
from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mmcourse import course
from mmcourse.course import markdown, notebooks, run_notebook

ENTRIES = [
    {"notebook": "01_data", "profile": "smoke", "device": "cpu", "seconds": 12.3, "status": "ok", "error": None,
     "figures": [{"name": "bayes all", "value": 0.97, "target": "= 0.970", "held": True},
                 {"name": "probe", "value": 0.9876543, "target": ">= 0.99", "held": False},
                 {"name": "scenes", "value": 3000, "target": None, "held": None}]},
    {"notebook": "02_model", "profile": "smoke", "device": None, "seconds": 4.0, "status": "failed",
     "error": "cell 3 (execution count 2): ValueError: bad", "figures": []},
]


def test_markdown_report():
    assert markdown(ENTRIES) == "\n".join([
        "# Course results",
        "",
        "| notebook | profile | device | seconds | status | targets held |",
        "|---|---|---|---|---|---|",
        "| 01_data | smoke | cpu | 12.3 | ok | 1/2 |",
        "| 02_model | smoke | None | 4.0 | failed | - |",
        "",
        "## 01_data",
        "",
        "| figure | value | target | held |",
        "|---|---|---|---|",
        "| bayes all | 0.97 | = 0.970 | yes |",
        "| probe | 0.9877 | >= 0.99 | **no** |",
        "| scenes | 3000 |  |  |",
        "",
        "## 02_model",
        "",
        "**Failed** in cell 3 (execution count 2): ValueError: bad",
        "",
    ]) + "\n"


def test_notebooks_are_numbered_ipynb_files_in_order(tmp_path):
    for name in ("02_b.ipynb", "00_a.ipynb", "scratch.ipynb", "1_c.ipynb", "10_d.txt"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    assert [p.name for p in notebooks(tmp_path)] == ["00_a.ipynb", "02_b.ipynb"]


def test_main_without_matching_notebook_returns_2(capsys):
    assert course.main(["--only", "no-such-notebook", "--profile", "smoke"]) == 2
    assert "no notebook matches 'no-such-notebook'" in capsys.readouterr().err


@pytest.fixture
def kernel_env(monkeypatch):
    """The 'python3' kernel starts `python` from PATH: make it this interpreter (with mmcourse installed)."""
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # as the Makefile does: no migration warning


def _notebook(path, *sources, parameters="SEED = 0\nPROFILE = 'default'"):
    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]})] + [new_code_cell(s) for s in sources]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, path)
    return path


def test_papermill_injects_parameters(tmp_path, kernel_env):
    import papermill as pm

    src = _notebook(tmp_path / "00_tiny.ipynb", "import mmcourse\nprint('SEED is', SEED, mmcourse.__version__)")
    out = pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), parameters={"SEED": 123},
                              kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    printed = "".join(o.get("text", "") for o in out.cells[-1].outputs)
    assert printed.strip() == "SEED is 123 0.1.0"


def test_run_notebook_gathers_recorded_figures_and_names_the_failing_cell(tmp_path, kernel_env, monkeypatch):
    """One kernel run per notebook: the good one records a figure, the bad one fails in cell 3."""
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path / "build"))  # the kernel inherits it
    record = ("from mmcourse.report import Results\n"
              "r = Results('01_ok', PROFILE)\n"
              "r.record('seed', SEED, target='= 7', held=SEED == 7)\n"
              "r.save()")
    good = _notebook(tmp_path / "01_ok.ipynb", record)
    bad = _notebook(tmp_path / "02_bad.ipynb", "x = 1", "raise ValueError('shapes differ')")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    entry = run_notebook(good, "smoke", 7, out_dir)
    assert entry["status"] == "ok" and entry["error"] is None and entry["profile"] == "smoke"
    assert entry["device"] == "cpu" or entry["device"].startswith(("cuda", "mps"))
    assert entry["figures"] == [{"name": "seed", "value": 7, "target": "= 7", "held": True}]
    assert (out_dir / "01_ok.ipynb").is_file()
    failed = run_notebook(bad, "smoke", 0, out_dir)
    assert failed["status"] == "failed" and failed["figures"] == []
    # papermill's injected-parameters cell shifts the indices: the raising cell is index 3.
    assert failed["error"].startswith("cell 3 ") and "ValueError: shapes differ" in failed["error"]
    json.dumps([entry, failed])  # entries must be JSON-serialisable for build/results.json


def test_a_real_course_notebook_takes_the_injected_profile(tmp_path, kernel_env, monkeypatch):
    """Notebook 00 defaults to 'default'; papermill's PROFILE='smoke' must reach its recorded results."""
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path / "build"))
    welcome = next(p for p in notebooks() if p.name.startswith("00_"))
    entry = run_notebook(welcome, "smoke", 3, tmp_path)
    assert entry["status"] == "ok", entry["error"]
    saved = json.loads((tmp_path / "build" / "results" / f"{welcome.stem}.json").read_text(encoding="utf-8"))
    assert saved["profile"] == "smoke"
    executed = nbformat.read(tmp_path / welcome.name, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "SEED = 3" in injected[0].source


def test_verify_fails_on_a_recorded_miss_that_a_plain_run_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(course, "notebooks", lambda: [tmp_path / "01_data.ipynb"])
    monkeypatch.setattr(course, "run_notebook", lambda path, profile, seed, out: dict(ENTRIES[0]))
    monkeypatch.setattr(course, "build_dir", lambda *parts: tmp_path.joinpath(*parts))
    assert course.main(["--profile", "smoke"]) == 0
    assert course.main(["--profile", "smoke", "--verify"]) == 1
    assert "target missed: 01_data: probe" in capsys.readouterr().err
