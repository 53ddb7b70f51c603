"""classroom's pieces without a kernel: authoring checks, variants, leak detection, expectations, submission checks.

Grading with kernels is tested in tests/grading (run by `make grading`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import nbformat
import pytest

from classroom import authoring, forkkernel, grading, variants
from classroom.grading import Outcome

SOLUTION_SRC = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
RELEASE_SRC = "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def _pair():
    source = nbformat.v4.new_notebook(cells=[
        authoring.setup("setup", "import math"),
        authoring.solution("f", SOLUTION_SRC),
        authoring.solution("g", "def g():\n    ### BEGIN SOLUTION\n    return 'the secret answer'\n    ### END SOLUTION"),
        authoring.tests("test_f", 5, "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(21) == 42  # hidden check\n"
                                     "### END HIDDEN TESTS"),
        authoring.tests("test_g", 5, "assert g()"),
    ])
    release = nbformat.from_dict(json.loads(json.dumps(source)))
    release.cells[1].source = RELEASE_SRC
    release.cells[2].source = "def g():\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    release.cells[3].source = "assert f(1) == 2"
    return source, release


def test_authoring_rejects_what_nbgrader_would_mangle(tmp_path):
    with pytest.raises(ValueError, match="grade_id 'Bad id'"):
        authoring.setup("Bad id", "x = 1")
    with pytest.raises(ValueError, match="no ### BEGIN SOLUTION"):
        authoring.solution("f", "def f(): pass")
    with pytest.raises(ValueError, match="points must be > 0"):
        authoring.tests("t", 0, "pass")
    with pytest.raises(ValueError, match=r"grade ids used twice: \['a'\]"):
        authoring.write_assignment(tmp_path / "x.ipynb", [authoring.setup("a", "1"), authoring.setup("a", "2")])
    with pytest.raises(ValueError, match="unbalanced hidden tests"):
        authoring.write_assignment(tmp_path / "x.ipynb", [authoring.tests("t", 1, "### BEGIN HIDDEN TESTS\npass")])
    path = authoring.write_assignment(tmp_path / "a" / "a.ipynb", [authoring.tests("t", 2, "pass")])
    meta = nbformat.read(path, as_version=4).cells[0].metadata["nbgrader"]
    assert meta == {"grade": True, "grade_id": "t", "locked": True, "points": 2, "schema_version": 3,
                    "solution": False, "task": False}


def test_variants_swap_exactly_the_named_cells():
    source, release = _pair()
    spec = variants.Spec(partial=["f"], wrong={"Returns 3x!": {"cell": "f", "source": "def f(x):\n    return 3 * x",
                                                                "loses": ["test_f"]}})
    built = variants.build_variants(source, release, spec)
    assert set(built) == {"solution", "release", "partial", "wrong-returns-3x"}
    assert built["partial"].cells[1].source == SOLUTION_SRC and "NotImplementedError" in built["partial"].cells[2].source
    assert built["wrong-returns-3x"].cells[1].source == "def f(x):\n    return 3 * x"
    assert built["wrong-returns-3x"].cells[2].source == source.cells[2].source
    with pytest.raises(ValueError, match=r"not solution cells: \['test_f'\]"):
        variants.build_variants(source, release, variants.Spec(["test_f"], spec.wrong))


def test_release_leaks_find_hidden_and_solution_lines_but_not_public_ones():
    source, release = _pair()
    assert variants.release_leaks(source, release) == []
    release.cells[4].source += "\nassert f(21) == 42  # hidden check"
    release.cells[0].source += "\nreturn 'the secret answer'"
    leaks = variants.release_leaks(source, release)
    assert "assert f(21) == 42  # hidden check" in leaks and "return 'the secret answer'" in leaks
    release.cells[3].source = "### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS"
    assert "a solution or hidden-test marker" in variants.release_leaks(source, release)


def _outcomes(**scores):
    cells = {"solution": {"a": (4, 4), "b": (3, 3), "c": (3, 3)}}
    return {s: Outcome(s, "x", "graded", sum(v[0] for v in cells.get(s, {"a": (sc, 4)}).values()) if s in cells
                       else sc, 10, cells=cells.get(s, {"a": (sc, 4), "b": (0, 3), "c": (0, 3)}))
            for s, sc in scores.items()}


def test_expectations_catch_each_way_an_assignment_can_grade_dishonestly():
    spec = variants.Spec(["f"], {"w": {"cell": "f", "source": "", "loses": ["a"]}})
    good = _outcomes(solution=10, release=0, partial=4, **{"wrong-w": 0})
    assert variants.problems(spec, good) == []
    bad = _outcomes(solution=10, release=2, partial=10, **{"wrong-w": 4})
    found = "\n".join(variants.problems(spec, bad))
    assert "release scores 2" in found and "partial copy scores 10" in found and "still earns points on ['a']" in found


def test_submission_problems_name_the_file_and_line(tmp_path):
    folder = tmp_path / "ada" / "05_fusion"
    folder.mkdir(parents=True)
    assert grading._submission_problem(tmp_path, "ada", "06_x", ["06_x.ipynb"])[0] == "missing"
    status, reason = grading._submission_problem(tmp_path, "ada", "05_fusion", ["05_fusion.ipynb"])
    assert status == "missing" and "found: no notebook" in reason
    (folder / "05_fusion.ipynb").write_text('{\n "cells": [,]\n}')
    status, reason = grading._submission_problem(tmp_path, "ada", "05_fusion", ["05_fusion.ipynb"])
    assert status == "invalid" and reason.startswith("ada/05_fusion/05_fusion.ipynb is not valid JSON: line 2")
    (folder / "05_fusion.ipynb").write_text('{"cells": 3}')
    assert "is not a notebook" in grading._submission_problem(tmp_path, "ada", "05_fusion", ["05_fusion.ipynb"])[1]
    (folder / "05_fusion.ipynb").write_bytes(b"\xff\xfe")
    assert "not UTF-8" in grading._submission_problem(tmp_path, "ada", "05_fusion", ["05_fusion.ipynb"])[1]
    assert grading._submission_problem(tmp_path, "../x", "05_fusion", [])[0] == "invalid"


def test_failed_step_reason_is_the_exception_not_nbgraders_see_the_log():
    result = {"error": "Traceback ...\nnbgrader.converters.base.NbGraderException: Please see the the above traceback",
              "log": "[ERROR] x\n    RuntimeError: Kernel died before replying to kernel_info\n"}
    assert grading._last_error(result) == "RuntimeError: Kernel died before replying to kernel_info"
    assert grading._last_error({}) == "nbgrader gave no reason"


def test_preload_takes_the_package_modules_a_source_imports(tmp_path):
    authoring.write_assignment(tmp_path / "source" / "a1" / "a1.ipynb", [authoring.setup("s", (
        "import os\nimport torch.nn.functional as F\nfrom mmcourse.adapt import add_lora\nfrom . import x\n"
        "import matplotlib.pyplot as plt"))])
    preload = grading.Classroom(tmp_path, tmp_path / "work").preload(["a1"])
    assert preload[: len(forkkernel.DEFAULT_PRELOAD)] == forkkernel.DEFAULT_PRELOAD
    assert {"mmcourse.adapt", "torch.nn.functional"} <= set(preload)
    assert not {"os", "matplotlib.pyplot"} & set(preload)


def test_forked_client_without_a_zygote_execs_an_ordinary_kernel(monkeypatch):
    class Execed(Exception):
        pass

    def execv(exe, argv):                                  # execv never returns: stop here like it would
        raise Execed(argv)

    monkeypatch.setenv(forkkernel.SOCKET_ENV, "/nonexistent/zygote.sock")
    monkeypatch.setattr(os, "execv", execv)
    with pytest.raises(Execed) as replaced:
        forkkernel.launch(["-f", "conn.json"])
    assert replaced.value.args[0] == [sys.executable, "-m", "ipykernel_launcher", "-f", "conn.json"]


def test_zygote_forks_a_child_per_request_and_forwards_its_exit(tmp_path):
    """A zygote that preloads nothing heavy runs a 'kernel' whose argv makes IPKernelApp exit at once."""
    path = tmp_path / "z.sock"
    with forkkernel.Zygote(path, preload=("json",)) as zygote:
        assert os.environ[forkkernel.SOCKET_ENV] == str(path)
        env = {**os.environ, forkkernel.SOCKET_ENV: str(path)}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, forkkernel.__file__, "launch", "--help"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "IPKernelApp" in done.stdout, done.stderr[-500:]
        assert time.perf_counter() - started < 60
        assert zygote.process.poll() is None, "the zygote keeps serving"
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(path))
        probe.sendall(b"\x00\x00\x00\x05garba")            # a malformed request is dropped, not fatal
        probe.close()
        time.sleep(0.2)
        assert zygote.process.poll() is None
    assert not path.exists() and zygote.process.poll() is not None


def test_zygote_child_dies_with_its_client(tmp_path):
    path = tmp_path / "z.sock"
    with forkkernel.Zygote(path, preload=("json",)) as zygote:
        env = {**os.environ, forkkernel.SOCKET_ENV: str(path)}
        # a kernel on a connection file that does not exist yet waits; kill the client, the child must go too
        client = subprocess.Popen([sys.executable, forkkernel.__file__, "launch", "-f", str(tmp_path / "c.json")],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        children = []
        while time.time() < deadline and not children:
            time.sleep(0.2)
            children = _children(zygote.process.pid)
        assert children, "no kernel was forked"
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in children), "an orphaned kernel outlived its client"


def _children(ppid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == ppid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_zygote_exits_when_its_grader_is_killed(tmp_path):
    """A grader killed without cleaning up must not leave its zygote behind."""
    path = tmp_path / "z.sock"
    grader = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"z = subprocess.Popen([sys.executable, {forkkernel.__file__!r}, 'serve', {str(path)!r}, '--preload', 'json'],"
        " stdout=subprocess.PIPE, text=True)\n"
        "assert z.stdout.readline().strip() == 'ready'\n"
        "print(z.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    zygote_pid = int(grader.stdout.readline())
    assert _alive(zygote_pid)
    grader.kill()
    grader.wait(10)
    deadline = time.time() + 20
    while time.time() < deadline and _alive(zygote_pid):
        time.sleep(0.2)
    assert not _alive(zygote_pid), "the zygote outlived its grader"
    assert not path.exists(), "the zygote removes its socket when it stops"
