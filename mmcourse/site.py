"""The course as a static website: ``make book`` writes it to ``build/site/``.

    python -m mmcourse.site            # generate the sources in build/book/, build build/site/, check its links
    python -m mmcourse.site --check    # only check the links of an existing build/site/

The site is built from what is committed, offline and without executing anything:

- every chapter from its committed ``default`` run (myst-nb renders the stored outputs), with a line of
  links added under its title: the notebook on Colab and on the repository (:mod:`mmcourse.colab`), a
  download of the notebook, and a page for each ``mmcourse`` source file its run loaded;
- a landing page: what the course is, the two commands, and the syllabus with each chapter's headline
  result beside its limit, both read from the chapter's committed results record (:data:`HEADLINES` names
  the figures; nothing here is typed in by hand);
- the teacher's guide (``docs/teaching.md``), the glossary (:mod:`mmcourse.glossary`), the reading list
  (:mod:`mmcourse.references`), and the package's source, one page per file;
- full-text search (Sphinx's own, in the browser).

Sphinx runs with warnings as errors (a missing file, image or cross-reference fails the build), and
:func:`check_links` then reads every page: each internal ``href`` and ``src`` must name a file of the site,
each ``#fragment`` an id in it, and nothing may be loaded from another host (links to other sites are
allowed; scripts, styles, images and frames from them are not).
"""
from __future__ import annotations

import argparse
import functools
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .colab import colab_url, notebook_url
from .utils import build_dir, project_root

# As mmcourse.report writes it. report.committed_run_problems reads records the same way; it is not
# refactored to share this because every chapter's run records report.py's hash, and a change there
# would send all nineteen chapters back to execution for no change in what they compute.
RESULTS_MIME = "application/vnd.mmcourse.results+json"
CONF_DIR = "book"                                         # the committed conf.py, relative to the repository


# ---------------------------------------------------------------------------------------------- headlines
def _bayes(target: str | None) -> float:
    """The number after 'Bayes' (or 'limit of ... ') in a figure's target text."""
    match = re.search(r"(?:Bayes|limit of [a-z +]+)\s+([01]\.\d+)", target or "")
    if not match:
        raise ValueError(f"no Bayes value in target {target!r}")
    return float(match.group(1))


@dataclass(frozen=True)
class Headline:
    """One syllabus row's result: ``result(values, targets)`` and ``limit(values, targets)`` return text."""
    result: object
    limit: object


def _acc(name, label=""):
    return lambda v, t: f"{label}{v[name]:.3f}"


def _limit_of(name):
    return lambda v, t: f"{_bayes(t[name]):.3f}"


def _beside_bayes(name, label):
    """The common row: figure ``name`` (an accuracy) beside the Bayes value its target states."""
    return Headline(_acc(name, label), _limit_of(name))


_TEACHER = "teacher accuracy minus Bayes"

HEADLINES: dict[str, Headline] = {
    "00": Headline(lambda v, t: f"environment report; a matrix product on the device within "
                                f"{v['matmul max error']:.1e} of float64", lambda v, t: "—"),
    "01": Headline(lambda v, t: f"Bayes rules on generated scenes: worst deviation "
                                f"{v['Monte-Carlo vs exact Bayes, worst abs(z)']:.2f} SE",
                   lambda v, t: f"all modalities {v['Bayes accuracy, audio + image + text']:.3f} (exact)"),
    "02": Headline(_acc("test accuracy", "the article's classifier: "),
                   lambda v, t: f"{v['Bayes accuracy, image + text']:.3f} (image + text)"),
    "03": Headline(_acc("test accuracy, large training set, no regulariser", "linear model, 20,000 scenes: "),
                   lambda v, t: f"{v['Bayes accuracy, image + text']:.3f}"),
    "04": _beside_bayes("best image encoder (cnn): test accuracy", "image CNN: "),
    "05": _beside_bayes("test accuracy, low_rank fusion (chosen on dev), all modalities", "low-rank fusion: "),
    "06": Headline(_acc("Recall@10, image->text (1000 pairs)", "Recall@10 image→text, no labels: "),
                   lambda v, t: f"{v['Recall@10 ceiling, image->text']:.3f}"),
    "07": _beside_bayes("test accuracy, final joint model (stage 1, multi-task, dropout)", "joint model: "),
    "08": _beside_bayes("top_layers: test accuracy", "stage 1 + top layers: "),
    "09": Headline(_acc("text only, MiniLM + LoRA: accuracy", "MiniLM + LoRA, captions only: "),
                   lambda v, t: f"{_bayes(t['text only, MiniLM + LoRA: accuracy']):.3f} (text)"),
    "10": _beside_bayes("stage 2 test accuracy (shape_and_sound)", "the pipeline, stage 2: "),
    "11": Headline(lambda v, t: "mid fusion, average precision: " + format(
                       _bayes(t["mid fusion: test-set Bayes AP minus the model's AP"])
                       - v["mid fusion: test-set Bayes AP minus the model's AP"], ".3f"),
                   _limit_of("mid fusion: test-set Bayes AP minus the model's AP")),
    "12": Headline(_acc("concat fusion: AUROC, test set", "AUROC, scan + record: "),
                   lambda v, t: f"{v['Bayes AUROC, image + record, test set']:.3f}"),
    "13": Headline(lambda v, t: "reliability-gated fusion: " + format(
                       _bayes(t["all sensors, best model minus Bayes (test set)"])
                       + v["all sensors, best model minus Bayes (test set)"], ".3f"),
                   _limit_of("all sensors, best model minus Bayes (test set)")),
    "14": Headline(lambda v, t: f"int8 (PT2E) at {v['PT2E: size / fp32']:.2f}× the size, "
                                f"accuracy changed by {-v['PT2E: accuracy lost']:+.4f}",
                   lambda v, t: f"teacher {_bayes(t[_TEACHER]) + v[_TEACHER]:.3f}, Bayes {_bayes(t[_TEACHER]):.3f}"),
    "15": Headline(lambda v, t: f"2 processes (DDP) against 1, mean loss differs by "
                                f"{v['2 processes, DDP: mean training loss minus one process']:.0e}",
                   lambda v, t: "0 (equality)"),
    "16": Headline(_acc("best model, test accuracy", "easy-VQA, FiLM: "),
                   lambda v, t: "1.000 (the data's own ceiling)"),
    "17": Headline(_acc("target accuracy, DANN (mean over seeds)", "new camera, DANN without target labels: "),
                   lambda v, t: format(v["target accuracy, source only (mean over seeds)"]
                                       + v["source only: gap to the target's Bayes limit"], ".3f")),
    "18": Headline(lambda v, t: "chosen configuration: " + format(
                       _bayes(t["chosen configuration: test accuracy minus Bayes"])
                       + v["chosen configuration: test accuracy minus Bayes"], ".3f"),
                   _limit_of("chosen configuration: test accuracy minus Bayes")),
}


def committed_record(notebook: Path) -> dict:
    """The results record (:mod:`mmcourse.report`) of a committed notebook; a clear error if it has none."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    records = [o["data"][RESULTS_MIME] for c in nb["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", []) if RESULTS_MIME in o.get("data", {})]
    if len(records) != 1:
        raise ValueError(f"{notebook}: {len(records)} results records (one expected: execute it)")
    return records[0]


def headline(notebook: Path) -> tuple[str, str]:
    """(result, limit) of a chapter's syllabus row, from its committed results record."""
    figures = committed_record(notebook)["figures"]
    values = {f["name"]: f["value"] for f in figures}
    targets = {f["name"]: f["target"] for f in figures}
    row = HEADLINES[notebook.name[:2]]
    try:
        return row.result(values, targets), row.limit(values, targets)
    except KeyError as exc:
        raise KeyError(f"{notebook.name}: its results record has no figure {exc}; "
                       f"update mmcourse.site.HEADLINES") from None


# ------------------------------------------------------------------------------------------ the sources
def _title(nb) -> str:
    first = nb.cells[0].source.splitlines()[0]
    return re.sub(r"^#\s*", "", first).strip()


def _source_page(rel: str) -> str:
    """The site page of a package file (``mmcourse/fusion.py`` -> ``source/mmcourse/fusion``)."""
    return "source/" + rel[:-3].replace("/", "_") if rel.endswith(".py") else rel


def _chapter_links(nb_path: Path, record: dict) -> str:
    name = nb_path.name
    used = sorted(f"mmcourse/{f}" for f in record.get("sources", {}))
    sources = ", ".join(f"[`{f}`](../{_source_page(f)}.md)" for f in used)
    return (f"[Open in Colab]({colab_url(name)}) · [the notebook in the repository]({notebook_url(name)}) · "
            f"{{download}}`download the notebook <{name}>`\n\n"
            f"<small>The code this run loaded: {sources}.</small>")


def _landing(chapters: list[tuple[Path, str]]) -> str:
    readme = (project_root() / "README.md").read_text(encoding="utf-8")
    intro = readme.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    commands = re.search(r"## Two commands\n\n(```bash\n.*?```)", readme, re.S).group(1)
    rows = []
    for path, title in chapters:
        result, limit = headline(path)
        rows.append(f"| {path.name[:2]} | [{title.split('·', 1)[-1].strip()}](chapters/{path.stem}.ipynb) "
                    f"| {result} | {limit} |")
    return "\n".join([
        "# mmcourse: multimodal deep learning, measured", "", intro, "",
        "## Two commands", "", commands, "",
        "`make lab` opens JupyterLab on the notebooks; `make book` builds this site into `build/site/`.", "",
        "## Syllabus", "",
        "Each chapter's headline result, from its committed run (default profile, seed 0, 2 CPU cores), "
        "beside the best any model could reach: the exact Bayes limit of the chapter's world, or the ceiling "
        "it names. A result a little above its limit is the sampling noise of a finite test set (the limit is an "
        "expectation); each chapter states the standard error it allows.", "",
        "| # | chapter | headline result | limit |", "|---|---|---|---|", *rows, "",
        "Also here: [the teacher's guide](teaching.md), [the glossary](glossary.md), "
        "[the reading list](references.md) and [the package's source](source/index.md).", "",
        "```{toctree}", ":hidden:", ":caption: Chapters", "", *[f"chapters/{p.stem}" for p, _ in chapters], "```",
        "", "```{toctree}", ":hidden:", ":caption: For teachers and readers", "",
        "teaching", "glossary", "references", "source/index", "```", ""])


def _glossary() -> str:
    from .glossary import GLOSSARY

    rows = [f"| {zh} | {en} | [{ch}](chapters/{_stem(ch)}.ipynb) |" for zh, en, ch in GLOSSARY]
    return "\n".join(["# Glossary: the article's terms", "",
                      "The source article's key terms in Chinese, the English this course uses for each, and the "
                      "chapter that teaches it (from `mmcourse.glossary`).", "",
                      "| 中文 | English | chapter |", "|---|---|---|", *rows, ""])


def _references() -> str:
    from .references import REFERENCES

    def link(r):
        if r.arxiv:
            return f"[arXiv:{r.arxiv}](https://arxiv.org/abs/{r.arxiv})"
        if r.doi:
            return f"[doi:{r.doi}](https://doi.org/{r.doi})"
        return f"<{r.url}>"

    lines = ["# Reading list", "",
             "Every paper a chapter or the package cites (`mmcourse.references`; `tests/test_references.py` "
             "checks that each citation is listed and each identifier well formed).", ""]
    for r in sorted(REFERENCES, key=lambda r: (r.authors[0], r.year)):
        authors = ", ".join(r.authors[:3]) + (" et al." if len(r.authors) > 3 else "")
        chapters = ", ".join(f"[{c}](chapters/{_stem(c)}.ipynb)" for c in r.chapters)
        cited = f" Chapters {chapters}." if chapters else ""
        lines.append(f"- {authors} ({r.year}). *{r.title}*. {link(r)}.{cited}")
    return "\n".join(lines) + "\n"


def _stem(chapter: str) -> str:
    """The notebook name of chapter ``"05"`` (``"05_fusion"``); the glossary and reading list ask per row."""
    names = [stem for stem in _stems() if stem.startswith(chapter)]
    if len(names) != 1:
        raise ValueError(f"chapter {chapter!r} names {len(names)} notebooks")
    return names[0]


@functools.lru_cache(maxsize=1)
def _stems() -> tuple[str, ...]:
    from .course import notebooks

    return tuple(p.stem for p in notebooks())


def _teaching() -> str:
    text = (project_root() / "docs" / "teaching.md").read_text(encoding="utf-8")
    # Links into the repository become the site's source pages.
    return re.sub(r"\]\(\.\./((?:mmcourse|classroom)/[\w/]+\.py)\)",
                  lambda m: f"]({_source_page(m.group(1))}.md)", text)


def _package_files() -> list[str]:
    root = project_root()
    return sorted(p.relative_to(root).as_posix() for package in ("mmcourse", "classroom")
                  for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def write_sources(dest: Path) -> list[Path]:
    """Write the site's Sphinx sources into ``dest`` (emptied first); returns the chapters."""
    import nbformat

    from .course import notebooks

    if dest.exists():
        shutil.rmtree(dest)
    (dest / "chapters").mkdir(parents=True)
    chapters = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        record = committed_record(path)
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(_chapter_links(path, record)))
        for cell in nb.cells:          # the results record is shown through its text/markdown form
            for output in cell.get("outputs", []):
                output.get("data", {}).pop(RESULTS_MIME, None)
        nbformat.write(nb, dest / "chapters" / path.name)
        chapters.append((path, _title(nb)))
    (dest / "index.md").write_text(_landing(chapters), encoding="utf-8")
    (dest / "glossary.md").write_text(_glossary(), encoding="utf-8")
    (dest / "references.md").write_text(_references(), encoding="utf-8")
    (dest / "teaching.md").write_text(_teaching(), encoding="utf-8")
    files = _package_files()
    (dest / "source").mkdir()
    root = project_root()
    for rel in files:
        page = dest / f"{_source_page(rel)}.md"
        include = os.path.relpath(root / rel, page.parent)
        page.write_text(
            f"# `{rel}`\n\n```{{literalinclude}} {include}\n:language: python\n:linenos:\n```\n", encoding="utf-8")
    listing = "\n".join(f"- [`{rel}`]({Path(_source_page(rel)).name}.md)" for rel in files)
    (dest / "source" / "index.md").write_text(
        "# The package's source\n\nEvery file of `mmcourse` (the code the chapters use) and `classroom` (the "
        f"assignments' tooling), as committed.\n\n{listing}\n\n```{{toctree}}\n:hidden:\n\n"
        + "\n".join(Path(_source_page(rel)).name for rel in files) + "\n```\n", encoding="utf-8")
    return [p for p, _ in chapters]


# ------------------------------------------------------------------------------------------ link checking
_LOADS = {("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"), ("source", "src"),
          ("video", "src"), ("audio", "src"), ("embed", "src"), ("object", "data")}


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str, int]] = []      # (tag, attribute, url, line)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src", "data"):
            if attrs.get(key) is not None:
                if tag == "link" and key == "href" and attrs.get("rel") not in ("stylesheet", "preload", "icon",
                                                                                  "shortcut icon"):
                    continue
                self.links.append((tag, key, attrs[key], self.getpos()[0]))


def check_links(site: Path) -> list[str]:
    """Every broken internal link and every resource loaded from another host, as 'page:line: problem'."""
    site = Path(site)
    pages = {p: _Page() for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts}
    if not pages:
        return [f"{site}: no HTML pages (build the site first: make book)"]
    for path, page in pages.items():
        page.feed(path.read_text(encoding="utf-8"))
    problems = []
    for path, page in pages.items():
        where = path.relative_to(site).as_posix()
        for tag, attribute, url, line in page.links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                if parts.scheme in ("http", "https", "") and (tag, attribute) in _LOADS:
                    problems.append(f"{where}:{line}: <{tag}> loads {url} from the network")
                continue
            target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or not target.resolve().is_relative_to(site.resolve()):
                problems.append(f"{where}:{line}: {url} names no file of the site")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _ids_of(target)
                if fragment not in ids:
                    problems.append(f"{where}:{line}: {url}: no id {fragment!r} in {target.relative_to(site)}")
    return problems


def _ids_of(path: Path) -> set[str]:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page.ids


# ---------------------------------------------------------------------------------------------- building
def build(src: Path | None = None, out: Path | None = None, quiet: bool = True) -> Path:
    """Generate the sources and run Sphinx (warnings are errors); returns the site folder."""
    src = src or build_dir("book")
    out = out or build_dir("site")
    write_sources(src)
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-E",
               "-c", str(project_root() / CONF_DIR), "-d", str(src / ".doctrees"), str(src), str(out)]
    if quiet:
        command.insert(5, "-q")
    result = subprocess.run(command, cwd=project_root())
    if result.returncode:
        raise RuntimeError(f"sphinx-build failed (exit {result.returncode}); its warnings are above")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="build the course's website into build/site/")
    parser.add_argument("--check", action="store_true", help="only check the links of build/site/")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    site = build_dir("site") if args.check else build()
    problems = check_links(site)
    for p in problems:
        print(p, file=sys.stderr)
    pages = sum(1 for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    print(f"{site}: {pages} pages, {len(problems)} link problems ({time.perf_counter() - start:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
