"""The Colab install cell of every chapter, and the addresses built from mmcourse.colab.REPOSITORY."""
from __future__ import annotations

import os
import sys

import nbformat
import pytest

from mmcourse import colab
from mmcourse.course import notebooks


@pytest.mark.parametrize("path", notebooks(), ids=[p.stem for p in notebooks()])
def test_every_chapter_starts_with_the_current_install_cell(path):
    problems = colab.install_cell_problems(nbformat.read(path, as_version=4))
    assert not problems, "\n".join(problems)


def test_install_cell_names_the_repository_and_does_nothing_off_colab(monkeypatch, tmp_path):
    source = colab.install_cell_source()
    assert colab.REPOSITORY in source and f'"{colab.BRANCH}"' in source
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    exec(compile(source, "install-cell", "exec"), {})
    assert os.getcwd() == str(tmp_path) and sys.path == path


def test_addresses_of_a_notebook():
    name = "05_fusion.ipynb"
    assert (colab.notebook_url(name, "https://github.com/a/b", "dev")
            == "https://github.com/a/b/blob/dev/notebooks/" + name)
    assert (colab.colab_url(name, "https://github.com/a/b")
            == "https://colab.research.google.com/github/a/b/blob/main/notebooks/" + name)
    with pytest.raises(ValueError, match="gitlab.com/a/b"):
        colab.colab_url(name, "https://gitlab.com/a/b")


def _notebook():
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · A chapter"),
                                           nbformat.v4.new_code_cell("PROFILE = 'default'"),
                                           nbformat.v4.new_code_cell("print(1)")])


def test_problems_name_a_missing_a_misplaced_and_a_stale_cell():
    nb = _notebook()
    assert colab.install_cell_problems(nb) == ["0 cells tagged 'colab-install' (one is expected)"]
    nb.cells.append(nbformat.v4.new_code_cell(colab.install_cell_source(), metadata={"tags": [colab.INSTALL_TAG]}))
    assert colab.install_cell_problems(nb) == ["the cell tagged 'colab-install' is not the first code cell"]
    nb.cells.insert(1, nb.cells.pop())
    assert colab.install_cell_problems(nb) == []
    nb.cells[1].source += "\n# edited by hand"
    assert "differs from" in colab.install_cell_problems(nb)[0]


def test_write_puts_the_cell_before_the_parameters_cell_once(tmp_path):
    path = tmp_path / "99_chapter.ipynb"
    nbformat.write(_notebook(), path)
    assert colab.write_install_cell(path) == "inserted"
    nb = nbformat.read(path, as_version=4)
    assert [c.source.splitlines()[0] for c in nb.cells][:3] == [
        "# 99 · A chapter", colab.install_cell_source().splitlines()[0], "PROFILE = 'default'"]
    assert colab.install_cell_problems(nb) == []
    assert colab.write_install_cell(path) == ""


def test_write_updates_a_stale_cell_in_place_keeping_its_run(tmp_path):
    path = tmp_path / "99_chapter.ipynb"
    nb = _notebook()
    stale = nbformat.v4.new_code_cell("# an older install cell", metadata={"tags": [colab.INSTALL_TAG]},
                                      execution_count=1)
    nb.cells.insert(1, stale)
    nbformat.write(nb, path)
    assert colab.write_install_cell(path) == "updated"
    cell = nbformat.read(path, as_version=4).cells[1]
    assert cell.source == colab.install_cell_source() and cell.execution_count == 1
