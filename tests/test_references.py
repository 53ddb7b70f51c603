"""The reading list: well-formed unique identifiers, and every citation of the package and notebooks listed."""
import json
from pathlib import Path

import pytest

from mmcourse import references
from mmcourse.references import REFERENCES, Reference, find_citations, lookup, unlisted

ROOT = Path(__file__).resolve().parents[1]


def _texts():
    for path in sorted((ROOT / "mmcourse").rglob("*.py")):
        yield path, path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells)


def test_identifiers_well_formed_and_unique():
    keys = [r.key for r in REFERENCES]
    assert len(keys) == len(set(keys))
    for field in ("arxiv", "doi", "url"):
        ids = [getattr(r, field) for r in REFERENCES if getattr(r, field)]
        assert len(ids) == len(set(ids)), f"duplicate {field}"
    for r in REFERENCES:
        assert r.chapters and all(len(c) == 2 and c.isdigit() for c in r.chapters), r.key
        assert r.authors and r.title and 1990 < r.year < 2030


def test_bad_identifiers_raise():
    with pytest.raises(ValueError, match="arxiv"):
        Reference("x", ("X",), 2020, "t", arxiv="arXiv:1234.5678")
    with pytest.raises(ValueError, match="doi"):
        Reference("x", ("X",), 2020, "t", doi="doi:10.1/x")
    with pytest.raises(ValueError, match="proceedings url"):
        Reference("x", ("X",), 2020, "t")


def test_parser_forms():
    text = ("(Vaswani et al. 2017) Szegedy et al., 2016; Lin et al. (2017, x) Sun & Saenko 2016 "
            "Loshchilov & Hutter, 2019 and Hinton, Vinyals and Dean 2015. Not a citation: Table 2 2019.")
    assert find_citations(text) == {("Vaswani", 2017), ("Szegedy", 2016), ("Lin", 2017), ("Sun", 2016),
                                    ("Loshchilov", 2019), ("Vinyals", 2015)}
    assert [r.key for r in lookup("Vinyals", 2015)] == ["hinton2015"]


def test_missing_citation_is_caught():
    assert unlisted({("Nobody", 2001), ("Vaswani", 2017)}) == [("Nobody", 2001)]


def test_every_citation_is_listed():
    missing = {}
    for path, text in _texts():
        for c in unlisted(find_citations(text)):
            missing.setdefault(c, path.relative_to(ROOT).as_posix())
    assert not missing, f"cited but not in mmcourse.references: {missing}"


def test_by_chapter_groups_every_reference():
    groups = references.by_chapter()
    assert sum(len(v) for v in groups.values()) == sum(len(r.chapters) for r in REFERENCES)
    assert list(groups) == sorted(groups)
