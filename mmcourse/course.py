"""Execute every notebook with papermill and write the results report.

    python -m mmcourse.course --profile default            # what `make course` runs
    python -m mmcourse.course --profile default --verify   # what `make verify` runs

Each notebook runs in order into ``build/notebooks/``, with ``PROFILE`` and
``SEED`` injected into its ``parameters`` cell. The figures the notebooks
record (:mod:`mmcourse.report`) are gathered, with wall time and status, into
``build/results.json`` and ``build/RESULTS.md``. A failing notebook fails the
run, and the report names the cell. With ``--verify`` a missed target fails it too
(the strict profiles already stop a notebook at its first missed target; this also catches a target
recorded as missed without an assertion).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import PROFILES
from .report import figures_table
from .utils import build_dir, project_root


def notebooks(folder: Path | None = None) -> list[Path]:
    folder = folder or project_root() / "notebooks"
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: Path, profile: str, seed: int, out_dir: Path) -> dict:
    """Execute one notebook; returns its entry of the results report."""
    import papermill as pm

    stale = build_dir("results") / f"{path.stem}.json"
    stale.unlink(missing_ok=True)
    entry = {"notebook": path.stem, "profile": profile, "status": "ok", "error": None}
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters={"PROFILE": profile, "SEED": seed},
                            cwd=str(path.parent), kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as exc:
        entry["status"] = "failed"
        entry["error"] = f"cell {exc.cell_index} (execution count {exc.exec_count}): {exc.ename}: {exc.evalue}"
    entry["seconds"] = round(time.perf_counter() - start, 1)
    if stale.is_file():
        recorded = json.loads(stale.read_text(encoding="utf-8"))
        entry["device"] = recorded["device"]
        entry["figures"] = recorded["figures"]
    else:
        entry["device"], entry["figures"] = None, []
    return entry


def markdown(entries: list[dict]) -> str:
    """The readable report."""
    lines = ["# Course results", ""]
    lines += ["| notebook | profile | device | seconds | status | targets held |", "|---|---|---|---|---|---|"]
    for e in entries:
        targets = [f for f in e["figures"] if f["held"] is not None]
        held = f"{sum(f['held'] for f in targets)}/{len(targets)}" if targets else "-"
        lines.append(f"| {e['notebook']} | {e['profile']} | {e['device']} | {e['seconds']} | {e['status']} | {held} |")
    for e in entries:
        lines += ["", f"## {e['notebook']}", ""]
        if e["error"]:
            lines += [f"**Failed** in {e['error']}", ""]
        if e["figures"]:
            lines.append(figures_table(e["figures"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="run only notebooks whose name contains this")
    parser.add_argument("--verify", action="store_true", help="fail when any recorded target was missed")
    args = parser.parse_args(argv)
    out_dir = build_dir("notebooks")
    selected = [p for p in notebooks() if args.only in p.name]
    if not selected:
        print(f"no notebook matches {args.only!r}", file=sys.stderr)
        return 2
    entries = []
    for path in selected:
        entry = run_notebook(path, args.profile, args.seed, out_dir)
        print(f"{entry['notebook']}: {entry['status']} in {entry['seconds']} s"
              + (f" — {entry['error']}" if entry["error"] else ""), flush=True)
        entries.append(entry)
    build = build_dir()
    (build / "results.json").write_text(json.dumps(entries, indent=2), encoding="utf-8")
    (build / "RESULTS.md").write_text(markdown(entries), encoding="utf-8")
    print(f"wrote {build / 'RESULTS.md'}")
    missed = [f"{e['notebook']}: {f['name']}" for e in entries for f in e["figures"] if f["held"] is False]
    if args.verify:
        for line in missed:
            print(f"target missed: {line}", file=sys.stderr)
    return 0 if all(e["status"] == "ok" for e in entries) and not (args.verify and missed) else 1


if __name__ == "__main__":
    sys.exit(main())
