"""Where the course lives, and the cell that installs it on Google Colab.

:data:`REPOSITORY` is the one place that names the course's public repository: the website
(:mod:`mmcourse.site`) links every chapter to its notebook there and to Colab, and each chapter's first
code cell clones it when the notebook runs on Colab. That cell cannot import ``mmcourse`` (the course is
not installed yet when it runs), so its text is generated from the constant here, written into the
notebooks by ``python -m mmcourse.colab --write``, and compared with it by the tests; a fork changes
:data:`REPOSITORY` and runs that command once.

Running on Colab is not tested (no machine of the course reaches it): the cell does nothing elsewhere,
which the smoke and default runs of every chapter do test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPOSITORY = "https://github.com/mmcourse/mmcourse"   # the course's public repository (git clone address)
BRANCH = "main"
INSTALL_TAG = "colab-install"                          # the metadata tag of the install cell

_CELL = '''\
# On Google Colab this cell installs the course; anywhere else it does nothing.
import sys
if "google.colab" in sys.modules:
    import os, subprocess
    REPOSITORY, COURSE = "{repository}", "/content/mmcourse"
    if not os.path.isdir(COURSE):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", REPOSITORY, COURSE], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", f"{{COURSE}}/requirements.txt",
                    "-e", COURSE], check=True)
    sys.path.insert(0, COURSE)
    os.chdir(f"{{COURSE}}/notebooks")'''


def install_cell_source(repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The text of every chapter's install cell for ``repository`` at ``branch``."""
    return _CELL.format(repository=repository, branch=branch)


def notebook_url(name: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The address of ``notebooks/<name>`` on the repository's web page (``name`` like ``05_fusion.ipynb``)."""
    return f"{repository}/blob/{branch}/notebooks/{name}"


def colab_url(name: str, repository: str = REPOSITORY, branch: str = BRANCH) -> str:
    """The address that opens ``notebooks/<name>`` of a GitHub repository on Google Colab."""
    prefix = "https://github.com/"
    if not repository.startswith(prefix):
        raise ValueError(f"repository {repository!r}: Colab opens notebooks from github.com addresses only")
    return f"https://colab.research.google.com/github/{repository[len(prefix):]}/blob/{branch}/notebooks/{name}"


def install_cells(nb) -> list:
    """The cells of notebook ``nb`` (an nbformat node) tagged as the install cell."""
    return [c for c in nb.cells if INSTALL_TAG in c.get("metadata", {}).get("tags", [])]


def install_cell_problems(nb) -> list[str]:
    """What is wrong with a notebook's install cell (empty: it is the first code cell and is current)."""
    cells = install_cells(nb)
    if len(cells) != 1:
        return [f"{len(cells)} cells tagged {INSTALL_TAG!r} (one is expected)"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    problems = []
    if not code or code[0] is not cells[0]:
        problems.append(f"the cell tagged {INSTALL_TAG!r} is not the first code cell")
    if cells[0].source != install_cell_source():
        problems.append(f"the {INSTALL_TAG!r} cell differs from mmcourse.colab.install_cell_source() "
                        f"(run python -m mmcourse.colab --write)")
    return problems


def write_install_cell(path: Path) -> str:
    """Put the current install cell first among the code cells of the notebook at ``path``.

    Returns ``""`` if it was current, ``"updated"`` or ``"inserted"``.

    An existing install cell is updated in place (its outputs kept: it has none outside Colab); a missing one
    is inserted before the first code cell, unexecuted, so the notebook has to be executed again.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    problems = install_cell_problems(nb)
    if not problems:
        return ""
    cells = install_cells(nb)
    if len(problems) == 1 and len(cells) == 1 and problems[0].startswith(f"the {INSTALL_TAG!r} cell differs"):
        cells[0].source = install_cell_source()          # in place, where it is: only its text was stale
        nbformat.write(nb, path)
        return "updated"
    for cell in cells:
        nb.cells.remove(cell)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    cell = nbformat.v4.new_code_cell(install_cell_source(), metadata={"tags": [INSTALL_TAG]})
    if "id" in cell:
        cell["id"] = INSTALL_TAG
    nb.cells.insert(first, cell)
    nbformat.write(nb, path)
    return "inserted"


def main(argv=None) -> int:
    from .course import notebooks

    parser = argparse.ArgumentParser(description="check (or --write) every chapter's Colab install cell")
    parser.add_argument("--write", action="store_true", help="write the current cell into the notebooks")
    args = parser.parse_args(argv)
    stale = []
    for path in notebooks():
        if args.write:
            done = write_install_cell(path)
            if done:
                print(f"{done} the install cell of {path.name}" + (" (execute it again)" if done == "inserted" else ""))
        else:
            import nbformat

            stale += [f"{path.name}: {p}" for p in install_cell_problems(nbformat.read(path, as_version=4))]
    print("\n".join(stale) or "every install cell is current")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
