"""The website's sources (mmcourse.site): headlines from the committed runs, generated pages, the link checker.

Sphinx itself runs in `make book` (part of `make test`), not here.
"""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from mmcourse import site
from mmcourse.course import notebooks
from mmcourse.utils import project_root


@pytest.mark.parametrize("path", notebooks(), ids=[p.stem for p in notebooks()])
def test_every_chapter_has_a_headline_read_from_its_committed_run(path):
    result, limit = site.headline(path)
    assert re.search(r"\d", result), result
    assert limit and "{" not in result + limit


def test_bayes_is_read_from_a_target_and_its_absence_is_an_error():
    assert site._bayes("≥ 0.900 (Bayes 0.970)") == 0.970
    assert site._bayes("within 0.03 of the limit of image + text 0.851") == 0.851
    with pytest.raises(ValueError, match="'at least 0.5'"):
        site._bayes("at least 0.5")


def test_a_notebook_without_a_results_record_is_named(tmp_path):
    path = tmp_path / "99_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
    with pytest.raises(ValueError, match=r"99_x.ipynb: 0 results records"):
        site.committed_record(path)


def test_sources_hold_every_chapter_with_its_links_and_every_package_file(tmp_path):
    chapters = site.write_sources(tmp_path)
    assert [p.name for p in chapters] == [p.name for p in notebooks()]
    index = (tmp_path / "index.md").read_text(encoding="utf-8")
    assert len(re.findall(r"^\| \d\d \| \[", index, re.M)) == len(chapters)
    for path in chapters:
        nb = nbformat.read(tmp_path / "chapters" / path.name, as_version=4)
        assert "colab.research.google.com" in nb.cells[1].source and "{download}" in nb.cells[1].source
        assert site.RESULTS_MIME not in json.dumps(nb)
        for page in re.findall(r"\]\(\.\./(source/[\w/]+)\.md\)", nb.cells[1].source):
            assert (tmp_path / f"{page}.md").is_file(), page
    root = project_root()
    for package in ("mmcourse", "classroom"):
        for file in (root / package).rglob("*.py"):
            rel = file.relative_to(root).as_posix()
            assert (tmp_path / f"{site._source_page(rel)}.md").is_file(), rel
    teaching = (tmp_path / "teaching.md").read_text(encoding="utf-8")
    assert "](../classroom/" not in teaching and "](../mmcourse/" not in teaching


def _site(tmp_path, pages: dict[str, str]):
    for name, body in pages.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"<html><head></head><body>\n{body}\n</body></html>", encoding="utf-8")
    return tmp_path


def test_link_checker_passes_a_sound_site(tmp_path):
    _site(tmp_path, {"index.html": '<a href="a/b.html#part">b</a> <a href="#top" id="top">top</a>'
                                   ' <a href="https://arxiv.org/abs/1">a paper</a> <img src="_static/x.png">',
                     "a/b.html": '<h2 id="part">part</h2> <a href="../index.html">home</a> <a href="./">dir</a>',
                     "a/index.html": "", "_static/x.png": ""})
    assert site.check_links(tmp_path) == []


def test_link_checker_names_each_broken_link_and_each_network_load(tmp_path):
    _site(tmp_path, {"index.html": '<a href="missing.html">x</a>\n<a href="b.html#nowhere">y</a>\n'
                                   '<script src="https://cdn.example.org/mathjax.js"></script>\n'
                                   '<link rel="stylesheet" href="//fonts.example.org/f.css">\n'
                                   '<a href="../../etc/passwd">z</a>',
                     "b.html": "<p>b</p>"})
    problems = site.check_links(tmp_path)
    assert problems == [
        "index.html:2: missing.html names no file of the site",
        "index.html:3: b.html#nowhere: no id 'nowhere' in b.html",
        "index.html:4: <script> loads https://cdn.example.org/mathjax.js from the network",
        "index.html:5: <link> loads //fonts.example.org/f.css from the network",
        "index.html:6: ../../etc/passwd names no file of the site",
    ]


def test_link_checker_on_an_empty_folder_says_to_build(tmp_path):
    assert "make book" in site.check_links(tmp_path)[0]


def test_the_results_output_type_is_the_one_report_writes():
    from mmcourse.report import RESULTS_MIME

    assert site.RESULTS_MIME == RESULTS_MIME
