"""Key figures of each notebook, written to ``build/results/<notebook>.json``.

A notebook records what it measured and whether each target held; ``make
course`` gathers these files into ``build/results.json`` and ``build/RESULTS.md``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .utils import atomic_write, build_dir, get_device


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
