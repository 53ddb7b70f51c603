"""``python -m classroom release|grade|check``: the commands behind ``make assignments`` and ``make grade``."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from classroom import grading, variants


def _table(outcomes) -> str:
    rows = [f"{'student':34s} {'assignment':24s} {'status':8s} {'score':>11s}  reason"]
    for o in outcomes:
        rows.append(f"{o.student:34s} {o.assignment:24s} {o.status:8s} {o.score:5g} / {o.max_score:<3g}  "
                    f"{o.reason[:90]}")
    return "\n".join(rows)


def check(classroom: grading.Classroom, ids) -> list[str]:
    """Grade every variant of ``ids`` in one run, print the points per cell; return the broken expectations."""
    outcomes, found = variants.grade_variants(classroom, ids)
    print(_table(outcomes))
    for o in outcomes:
        print(f"{o.assignment} {o.student}: " + ", ".join(f"{k} {s:g}/{m:g}" for k, (s, m) in o.cells.items()))
    return [f"{aid}: {p}" for aid, problems in found.items() for p in problems]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classroom", description="The course's nbgrader assignments.")
    parser.add_argument("--course-dir", default=str(grading.COURSE_DIR), help="holds source/ and variants/")
    parser.add_argument("--work", default=None, help="where nbgrader writes (default build/classroom)")
    parser.add_argument("--timeout", type=int, default=grading.DEFAULT_TIMEOUT_S, help="seconds per cell")
    parser.add_argument("--no-fork", action="store_true", help="start every kernel the ordinary way")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("release", help="write the student copies").add_argument("ids", nargs="*")
    g = sub.add_parser("grade", help="autograde SUBMISSIONS/<student>/<assignment>/")
    g.add_argument("submissions")
    g.add_argument("ids", nargs="*", help="assignments (default: every one a student submitted)")
    sub.add_parser("check", help="grade the variants of each assignment").add_argument("ids", nargs="*")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else (Path(tempfile.mkdtemp(prefix="mmcourse-check-"))
                                              if args.command == "check" else None)
    classroom = grading.Classroom(args.course_dir, work, timeout=args.timeout, fork=not args.no_fork)
    started = time.perf_counter()
    if args.command == "release":
        for aid, folder in classroom.release(args.ids or None).items():
            print(f"{aid}: {folder}")
        return 0
    if args.command == "grade":
        outcomes = classroom.grade(args.submissions, args.ids or None)
        print(_table(outcomes))
        bad = [o for o in outcomes if o.status != "graded"]
        print(f"{len(outcomes)} submissions in {time.perf_counter() - started:.0f} s; {len(bad)} not graded "
              f"(see the reason column); grades in {classroom.work / 'grades.csv'}, "
              f"feedback in {classroom.work / 'feedback'}")
        return 0
    found = check(classroom, args.ids or None)
    print(f"checked in {time.perf_counter() - started:.0f} s (work folder {work})")
    for line in found:
        print("PROBLEM:", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
