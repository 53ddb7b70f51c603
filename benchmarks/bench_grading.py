"""Grade a class: N generated submissions of one assignment, a mix of right, partial, wrong and broken.

The submissions are built from the assignment's variants (``assignments/variants/<id>.py``): 40 % solved,
25 % partial, 20 % wrong answers (cycling through the variants file), 10 % with a solution cell that raises,
and 5 % unreadable (a file that is not JSON, or no notebook). All are graded in one run, with kernels forked
from a warm zygote (the course's way) and, with ``--compare N``, the first N again with ordinary kernels: one
kernel start per submission with torch imported each time, the cost to beat.

    python benchmarks/bench_grading.py --assignment 05_fusion --submissions 100 --compare 20
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import nbformat

from classroom import grading, variants
from mmcourse.utils import cpu_name


def make_class(classroom, aid: str, n: int, folder: Path) -> dict[str, str]:
    """Write ``n`` submissions under ``folder``; return {student: kind}."""
    name = f"{aid}.ipynb"
    source = nbformat.read(classroom.course_dir / "source" / aid / name, as_version=4)
    release = nbformat.read(classroom.release([aid])[aid] / name, as_version=4)
    spec = variants.load_spec(classroom.course_dir, aid)
    built = variants.build_variants(source, release, spec)
    wrong = [variants.wrong_student(w) for w in spec.wrong]
    raising = variants.build_variants(source, release, variants.Spec([], {"raises": {
        "cell": spec.partial[0], "source": 'raise RuntimeError("not finished")', "loses": []}}))
    kinds = {}
    for i in range(n):
        share = i % 20                                   # 8/20 solved, 5 partial, 4 wrong, 2 raising, 1 broken
        student = f"s{i:03d}"
        out = folder / student / aid
        out.mkdir(parents=True)
        if share < 8:
            kind, nb = "solved", built[variants.SOLUTION]
        elif share < 13:
            kind, nb = "partial", built[variants.PARTIAL]
        elif share < 17:
            kind = wrong[i % len(wrong)]
            nb = built[kind]
        elif share < 19:
            kind, nb = "raises", raising[variants.wrong_student("raises")]
        else:
            kind, nb = ("not JSON", None) if i % 40 == 19 else ("no notebook", None)
        kinds[student] = kind
        if nb is not None:
            nbformat.write(nb, out / name)
        elif kind == "not JSON":
            (out / name).write_text('{"cells": [')
    return kinds


def run(aid: str, n: int, fork: bool, folder: Path, timeout: int) -> tuple[float, list]:
    work = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        classroom = grading.Classroom(work=work, timeout=timeout, fork=fork)
        classroom.release([aid])
        started = time.perf_counter()
        outcomes = classroom.grade(folder, [aid], release=False)
        return time.perf_counter() - started, outcomes
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assignment", default="05_fusion")
    parser.add_argument("--submissions", type=int, default=100)
    parser.add_argument("--compare", type=int, default=0, help="also grade the first N with ordinary kernels")
    parser.add_argument("--timeout", type=int, default=grading.DEFAULT_TIMEOUT_S)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-class-"))
    try:
        kinds = make_class(grading.Classroom(work=root / "setup"), args.assignment, args.submissions,
                           root / "class")
        print(f"{cpu_name()}; {args.submissions} submissions of {args.assignment}: {dict(Counter(kinds.values()))}")
        seconds, outcomes = run(args.assignment, args.submissions, True, root / "class", args.timeout)
        status = Counter(o.status for o in outcomes)
        print(f"forked kernels: {seconds:.0f} s in all, {seconds / len(outcomes):.2f} s per submission; {dict(status)}")
        by_kind = {}
        for o in outcomes:
            by_kind.setdefault(kinds[o.student], []).append(o.score)
        for kind, scores in sorted(by_kind.items()):
            print(f"  {kind:40s} n={len(scores):3d} mean score {sum(scores) / len(scores):5.2f} "
                  f"of {outcomes[0].max_score:g}")
        if args.compare:
            sub = root / "compare"
            for student in sorted(kinds)[: args.compare]:
                shutil.copytree(root / "class" / student, sub / student)
            plain, _ = run(args.assignment, args.compare, False, sub, args.timeout)
            forked, _ = run(args.assignment, args.compare, True, sub, args.timeout)
            print(f"first {args.compare} again: ordinary kernels {plain:.0f} s ({plain / args.compare:.2f} s each), "
                  f"forked {forked:.0f} s ({forked / args.compare:.2f} s each): {plain / forked:.1f}x faster")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
