"""Key figures of each notebook, written to ``build/results/<notebook>.json``, and the proof of which code made them.

A notebook records what it measured (:meth:`Results.record`) and checks each target (:meth:`Results.check`:
the profile's strict bound in ``default`` and ``full``, a loose bound in ``smoke``). Its last cell calls
:meth:`Results.finish`, which writes the JSON and shows the table together with the SHA-256 of every
``mmcourse`` source file the notebook's kernel had loaded (:func:`loaded_sources`, :func:`source_hashes`) and
their digest, in a machine-readable output (:data:`RESULTS_MIME`). Hashing the files a run loaded, rather
than the whole package, proves the same thing (no file the run executed has changed since) without making
every chapter stale when a module it never imports is added or edited. ``make course`` gathers the JSON files into ``build/results.json`` and
``build/RESULTS.md``; :func:`committed_run_problems` reads a committed notebook and says whether its run is of
the current code, in the default profile, with every target met.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import get_profile
from .utils import atomic_write, build_dir, get_device

RESULTS_MIME = "application/vnd.mmcourse.results+json"   # the output type :meth:`Results.finish` displays
DIGEST_SHOWN = 12                                        # hex digits of the digest printed for a reader


PACKAGE = Path(__file__).resolve().parent
MISSING = "missing"          # the hash recorded for a source file that no longer exists


def _package(package) -> Path:
    package = Path(package) if package is not None else PACKAGE
    if not package.is_dir():
        raise FileNotFoundError(f"package folder {package} does not exist")
    return package


def loaded_sources(package: Path | None = None) -> list[str]:
    """The ``.py`` files of the package that this process has imported, as sorted relative paths."""
    package = _package(package).resolve()
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py") and Path(path).resolve().is_relative_to(package):
            files.add(Path(path).resolve().relative_to(package).as_posix())
    return sorted(files)


def source_hashes(files=None, package: Path | None = None) -> dict[str, str]:
    """SHA-256 of each source file (relative paths; ``None``: every ``.py`` file of the package but caches),
    :data:`MISSING` for one that does not exist. ``package`` defaults to the installed ``mmcourse`` folder."""
    package = _package(package)
    if files is None:
        files = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    out = {}
    for rel in sorted(files):
        path = package / rel
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else MISSING
    return out


def source_digest(package: Path | None = None, files=None) -> str:
    """One SHA-256 over the per-file hashes of :func:`source_hashes` (path and hash, in sorted order).

    Any change of a hashed file, a comment included, changes it; ``files`` None hashes every ``.py``
    file of the package, so a file added or removed changes it too.
    """
    h = hashlib.sha256()
    for rel, digest in source_hashes(files, package).items():
        h.update(rel.encode("utf-8") + b"\0" + digest.encode("ascii") + b"\0")
    return h.hexdigest()


@dataclass
class Figure:
    name: str
    value: float | int | str
    target: str | None = None   # the claim, in words, e.g. "> 0.500 (best single modality)"
    held: bool | None = None    # None when the figure has no target


@dataclass
class Results:
    """The figures one notebook reports."""

    notebook: str
    profile: str
    device: str = field(default_factory=lambda: str(get_device()))
    figures: list[Figure] = field(default_factory=list)
    digest: str = field(default_factory=source_digest)   # of the files in ``sources`` once finished
    sources: dict[str, str] = field(default_factory=dict)  # loaded source file -> its SHA-256, set by finish()

    def record(self, name: str, value, target: str | None = None, held: bool | None = None) -> None:
        """Add (or replace) a figure; a target needs ``held`` and vice versa."""
        if (target is None) != (held is None):
            raise ValueError(f"figure {name!r}: give both target and held, or neither")
        value = value.item() if hasattr(value, "item") else value  # numpy / torch scalars -> Python
        if not isinstance(value, (int, float, str)):
            raise TypeError(f"figure {name!r}: value must be a number or a str, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"figure {name!r}: value must be finite, got {value}")
        figure = Figure(name, value, target, None if held is None else bool(held))
        names = [f.name for f in self.figures]
        if name in names:  # replace in place, keeping the order of first recording
            self.figures[names.index(name)] = figure
        else:
            self.figures.append(figure)

    def check(self, name: str, value, *, at_least: float | None = None, at_most: float | None = None,
              why: str = "", loose: tuple[float | None, float | None]) -> bool:
        """Record ``value`` with its target, assert the target in a strict profile and the loose bound always.

        ``at_least`` / ``at_most`` is the target, fixed before the run (``why`` says where it comes from, e.g.
        ``"Bayes 0.812 - 3 SE"``); ``loose = (low, high)`` (either may be None, not both) is what can be asserted
        at any size, the ``smoke`` profile's included: direction and loose bounds. Returns whether the
        target held.
        """
        if at_least is None and at_most is None:
            raise ValueError(f"figure {name!r}: give at_least, at_most or both")
        low, high = loose
        if low is None and high is None:
            raise ValueError(f"figure {name!r}: loose bound (None, None) asserts nothing; give a low or a high")
        v = value.item() if hasattr(value, "item") else value
        held = (at_least is None or v >= at_least) and (at_most is None or v <= at_most)
        target = " and ".join(t for t in (at_least is not None and f">= {at_least:.4g}",
                                          at_most is not None and f"<= {at_most:.4g}") if t)
        self.record(name, v, target=f"{target} ({why})" if why else target, held=held)
        if get_profile(self.profile).strict and not held:
            raise AssertionError(f"{self.notebook}: {name} = {v:.4g} misses its target {target}"
                                 + (f" ({why})" if why else ""))
        if (low is not None and v < low) or (high is not None and v > high):
            raise AssertionError(f"{self.notebook}: {name} = {v:.4g} is outside its loose bound [{low}, {high}]")
        return held

    def finish(self, folder: Path | None = None) -> "Finished":
        """Save the JSON and return what the notebook's last cell shows: the table and the code's digest.

        Records the hash of every ``mmcourse`` source file loaded by now (the notebook's last cell runs
        after every import) and their digest."""
        self.sources = source_hashes(loaded_sources())
        self.digest = source_digest(files=list(self.sources))
        self.save(folder)
        return Finished(self)

    def save(self, folder: Path | None = None) -> Path:
        """Write the JSON atomically (temporary file, then rename)."""
        folder = Path(folder) if folder is not None else build_dir("results")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.notebook}.json"
        atomic_write(path, lambda f: f.write(json.dumps(asdict(self), indent=2).encode("utf-8")))
        return path

    def table(self) -> str:
        """The figures as a Markdown table (notebooks display it)."""
        return figures_table([asdict(f) for f in self.figures])


class Finished:
    """A notebook's closing display: its figures, the profile and the ``mmcourse`` digest it ran with.

    Jupyter shows the Markdown; the same output carries the record as :data:`RESULTS_MIME`, which
    :func:`committed_run_problems` reads back from the committed notebook.
    """

    def __init__(self, results: Results):
        self.record = asdict(results)

    def _repr_markdown_(self) -> str:
        r = self.record
        return (f"{figures_table(r['figures'])}\n\n{r['notebook']}: profile {r['profile']}, device {r['device']}; "
                f"mmcourse sources sha256 {r['digest'][:DIGEST_SHOWN]}")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/markdown": self._repr_markdown_(), "text/plain": self._repr_markdown_(), RESULTS_MIME: self.record}


def committed_run_problems(notebook: Path, digest: str | None = None, profile: str = "default") -> list[str]:
    """What is wrong with a committed notebook's run: [] when it is of the current code, in ``profile``,
    with every recorded target met; otherwise one sentence per problem, naming the notebook.

    "The current code" is every source file the run loaded, as it is now (a changed or deleted one is
    named); ``digest`` given compares the recorded digest with it instead."""
    notebook = Path(notebook)
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    records = [o["data"][RESULTS_MIME] for c in nb.get("cells", []) if c.get("cell_type") == "code"
               for o in c.get("outputs", []) if RESULTS_MIME in o.get("data", {})]
    if len(records) != 1:
        return [f"{notebook.name}: {len(records)} results outputs (expected one, from Results.finish())"]
    r = records[0]
    problems = []
    recorded = r.get("sources") or {}
    if digest is None and recorded:
        now = source_hashes(list(recorded))
        changed = [f for f in recorded if now[f] != recorded[f]]
        if changed:
            shown = ", ".join(f"mmcourse/{f}" for f in changed[:3]) + (
                f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            problems.append(f"{notebook.name}: ran with another version of {shown}: re-execute it (make execute)")
    else:
        want = digest if digest is not None else source_digest()
        if r.get("digest") != want:
            problems.append(f"{notebook.name}: ran with mmcourse {str(r.get('digest'))[:DIGEST_SHOWN]}, the package "
                            f"is now {want[:DIGEST_SHOWN]}: re-execute it (make execute)")
    if r.get("profile") != profile:
        problems.append(f"{notebook.name}: committed run is of the {r.get('profile')!r} profile, not {profile!r}")
    problems += [f"{notebook.name}: target missed: {f['name']} = {f['value']} (target {f['target']})"
                 for f in r.get("figures", []) if f.get("held") is False]
    return problems


def format_value(value) -> str:
    """Floats to 4 significant digits; '|' escaped so a value cannot break a table row."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def figures_table(figures: list[dict]) -> str:
    """Markdown table of figure records (dicts with name, value, target, held)."""
    lines = ["| figure | value | target | held |", "|---|---|---|---|"]
    for f in figures:
        held = "" if f["held"] is None else ("yes" if f["held"] else "**no**")
        cells = [format_value(f["name"]), format_value(f["value"]), format_value(f["target"] or ""), held]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
