"""mmcourse.report: recording figures, saving them atomically, the Markdown table."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import pytest

from mmcourse.report import Figure, Results, figures_table, format_value


def _results() -> Results:
    r = Results("01_data", "smoke", device="cpu")
    r.record("bayes image", 0.5, target="= 0.500 (exact)", held=True)
    r.record("scenes", 3000)
    r.record("probe shape", 0.98, target=">= 0.99", held=False)
    return r


def test_save_writes_valid_json_and_no_temporary_file(tmp_path):
    r = _results()
    path = r.save(tmp_path)
    assert path == tmp_path / "01_data.json"
    assert json.loads(path.read_text(encoding="utf-8")) == asdict(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_data.json"]


def test_save_replaces_an_older_file(tmp_path):
    r = _results()
    r.save(tmp_path)
    r.record("scenes", 60000)
    r.save(tmp_path)
    saved = json.loads((tmp_path / "01_data.json").read_text(encoding="utf-8"))
    assert {f["name"]: f["value"] for f in saved["figures"]}["scenes"] == 60000
    assert len(list(tmp_path.iterdir())) == 1


def test_save_defaults_to_the_build_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_BUILD", str(tmp_path))
    assert _results().save() == tmp_path / "results" / "01_data.json"


def test_record_replaces_a_figure_of_the_same_name():
    r = _results()
    r.record("bayes image", 0.25)
    assert [f.name for f in r.figures].count("bayes image") == 1
    assert next(f for f in r.figures if f.name == "bayes image") == Figure("bayes image", 0.25)


def test_record_coerces_held_to_bool():
    r = Results("x", "smoke", device="cpu")
    r.record("acc", 0.9, target="> 0.5", held=np.bool_(True))
    assert r.figures[-1].held is True


@pytest.mark.parametrize("kwargs", [dict(target="> 0.5"), dict(held=True)])
def test_record_needs_target_and_held_together(kwargs):
    with pytest.raises(ValueError, match="figure 'acc': give both target and held, or neither"):
        Results("x", "smoke", device="cpu").record("acc", 0.9, **kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_record_rejects_non_finite_values(value):
    with pytest.raises(ValueError, match="figure 'acc': value must be finite, got"):
        Results("x", "smoke", device="cpu").record("acc", value)


def test_default_device_is_the_chosen_device(monkeypatch):
    monkeypatch.setenv("MMCOURSE_DEVICE", "cpu")
    assert Results("x", "smoke").device == "cpu"


def test_table_markdown():
    assert _results().table() == "\n".join([
        "| figure | value | target | held |",
        "|---|---|---|---|",
        "| bayes image | 0.5 | = 0.500 (exact) | yes |",
        "| scenes | 3000 |  |  |",
        "| probe shape | 0.98 | >= 0.99 | **no** |",
    ])


@pytest.mark.parametrize("value, text", [(0.123456, "0.1235"), (7e-6, "7e-06"), (12345.0, "1.234e+04"),
                                         (3, "3"), ("a|b", "a\\|b")])
def test_format_value_four_significant_digits_and_escaped_bars(value, text):
    assert format_value(value) == text


def test_figures_table_escapes_bars_in_every_cell():
    row = figures_table([{"name": "p|q", "value": 1, "target": "> a|b", "held": False}]).splitlines()[-1]
    assert row == "| p\\|q | 1 | > a\\|b | **no** |"
    assert row.replace("\\|", "").count("|") == 5  # still four cells


def test_numpy_scalars_are_saved_as_numbers(tmp_path):
    r = Results("x", "smoke", device="cpu")
    r.record("accuracy", np.float32(0.5))
    r.record("errors", np.int64(3))
    saved = json.loads(r.save(tmp_path).read_text(encoding="utf-8"))
    assert [f["value"] for f in saved["figures"]] == [0.5, 3]


def test_a_failed_save_leaves_no_temporary_file_and_the_old_file_intact(tmp_path):
    r = _results()
    path = r.save(tmp_path)
    before = path.read_text(encoding="utf-8")
    r.figures.append(Figure("unserialisable", object()))  # json.dump fails half-way
    with pytest.raises(TypeError):
        r.save(tmp_path)
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_data.json"]


def test_replacing_a_figure_keeps_its_place(tmp_path):
    r = Results("x", "smoke", device="cpu")
    for name in ("a", "b", "c"):
        r.record(name, 1)
    r.record("a", 2)
    assert [(f.name, f.value) for f in r.figures] == [("a", 2), ("b", 1), ("c", 1)]


def test_saved_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = Results("x", "smoke", device="cpu").save(tmp_path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would give 0o600


# --- targets checked by profile, the closing display, the digest of the code a run used ---

from mmcourse.report import RESULTS_MIME, committed_run_problems, source_digest  # noqa: E402


def test_check_asserts_the_target_in_a_strict_profile():
    r = Results("05_fusion", "default", device="cpu")
    assert r.check("acc", 0.91, at_least=0.9, why="Bayes 0.93 - 3 SE", loose=(0.1, None)) is True
    with pytest.raises(AssertionError, match=r"acc2 = 0.85 misses its target >= 0.9 \(Bayes"):
        r.check("acc2", 0.85, at_least=0.9, why="Bayes 0.93 - 3 SE", loose=(0.1, None))
    assert r.figures[0].target == ">= 0.9 (Bayes 0.93 - 3 SE)" and r.figures[0].held is True


def test_check_in_smoke_records_a_miss_but_asserts_only_the_loose_bound():
    r = Results("05_fusion", "smoke", device="cpu")
    assert r.check("acc", 0.5, at_least=0.9, loose=(0.2, None)) is False
    assert r.figures[-1].held is False
    with pytest.raises(AssertionError, match=r"acc = 0.1 is outside its loose bound \[0.2, None\]"):
        r.check("acc", 0.1, at_least=0.9, loose=(0.2, None))
    with pytest.raises(AssertionError, match="outside its loose bound"):
        r.check("gap", 0.7, at_most=0.05, loose=(None, 0.5))


@pytest.mark.parametrize("kwargs, match", [({"loose": (0.1, None)}, "give at_least, at_most"),
                                           ({"at_least": 0.5, "loose": (None, None)}, "asserts nothing")])
def test_check_needs_a_target_and_a_loose_bound(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Results("x", "smoke", device="cpu").check("acc", 0.5, **kwargs)


def test_check_states_both_sides_of_a_range():
    r = Results("x", "default", device="cpu")
    r.check("ratio", 1.0, at_least=0.8, at_most=1.25, loose=(0.0, None))
    assert r.figures[0].target == ">= 0.8 and <= 1.25"


def test_digest_changes_with_any_source_byte_and_ignores_caches(tmp_path):
    import shutil

    import mmcourse
    from pathlib import Path
    copy = tmp_path / "mmcourse"
    shutil.copytree(Path(mmcourse.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == source_digest()
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.py").write_text("junk")
    assert source_digest(copy) == source_digest()
    with open(copy / "metrics.py", "a", encoding="utf-8") as f:
        f.write("# a comment\n")
    assert source_digest(copy) != source_digest()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        source_digest(tmp_path / "nowhere")


def _committed(tmp_path, record: dict | None, name="05_fusion.ipynb"):
    outputs = [] if record is None else [{"output_type": "display_data", "metadata": {},
                                          "data": {"text/markdown": "t", RESULTS_MIME: record}}]
    nb = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": outputs, "execution_count": 1}]}
    path = tmp_path / name
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def test_a_finished_run_reads_back_clean_from_the_notebook(tmp_path):
    r = _results()
    r.profile = "default"
    r.figures = [f for f in r.figures if f.held is not False]
    bundle = r.finish(tmp_path)._repr_mimebundle_()
    record = bundle[RESULTS_MIME]
    assert {"report.py", "config.py", "__init__.py"} <= set(record["sources"])     # what this process imported
    assert record["digest"] == source_digest(files=list(record["sources"]))
    assert record["digest"][:12] in bundle["text/markdown"]
    assert committed_run_problems(_committed(tmp_path, record)) == []


def test_a_run_is_stale_only_when_a_file_it_loaded_changed(tmp_path, monkeypatch):
    import mmcourse.report as report
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for rel in ("a.py", "b.py", "sub/c.py"):
        (package / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(report, "PACKAGE", package)
    record = {"notebook": "05_fusion", "profile": "default", "figures": [],
              "sources": report.source_hashes(["a.py", "sub/c.py"])}
    record["digest"] = report.source_digest(files=list(record["sources"]))
    path = _committed(tmp_path, record)
    assert committed_run_problems(path) == []
    (package / "b.py").write_text("# changed, but the run never loaded it\n")
    (package / "new.py").write_text("# added\n")
    assert committed_run_problems(path) == []
    (package / "sub" / "c.py").write_text("# changed\n")
    assert committed_run_problems(path) == [
        "05_fusion.ipynb: ran with another version of mmcourse/sub/c.py: re-execute it (make execute)"]
    (package / "a.py").unlink()
    assert "mmcourse/a.py, mmcourse/sub/c.py" in committed_run_problems(path)[0]
    assert report.source_hashes(["a.py"]) == {"a.py": report.MISSING}


def test_loaded_sources_lists_imported_package_files():
    from mmcourse import metrics
    from mmcourse.report import loaded_sources
    files = loaded_sources()
    assert metrics.__file__.endswith("metrics.py")
    assert "metrics.py" in files and files == sorted(files) and all(f.endswith(".py") for f in files)


def test_committed_run_fails_on_a_changed_package_a_missed_target_a_smoke_run_or_no_record(tmp_path):
    r = _results()   # its "probe shape" target was missed
    record = r.finish(tmp_path)._repr_mimebundle_()[RESULTS_MIME]
    problems = committed_run_problems(_committed(tmp_path, record), digest="0" * 64)
    assert any("ran with mmcourse" in p and "re-execute" in p for p in problems)
    assert any("target missed: probe shape = 0.98 (target >= 0.99)" in p for p in problems)
    assert any("'smoke' profile" in p for p in problems)
    assert committed_run_problems(_committed(tmp_path, None)) == [
        "05_fusion.ipynb: 0 results outputs (expected one, from Results.finish())"]
