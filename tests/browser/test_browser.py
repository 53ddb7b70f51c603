"""The reader's path in a real browser: the website, a chapter in JupyterLab, an assignment solved.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, or ``$MMCOURSE_CHROMIUM``) through
``executable_path``: nothing downloads a browser. Every request that leaves localhost fails the test.
Without Chromium the tests skip, except under CI (``CI=true``), where a missing browser fails.
Screenshots are written to ``build/browser/``. ``make browser`` runs this file after ``make book``.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

from mmcourse.course import notebooks
from mmcourse.utils import project_root

ROOT = project_root()
BUILD = ROOT / "build"                 # the repository's build/, not the unit tests' temporary one
SITE = BUILD / "site"
SHOTS = BUILD / "browser"
CHROMIUM = os.environ.get("MMCOURSE_CHROMIUM", "/usr/bin/chromium")
# The flags this machine kind needs: no sandbox as root, and none of Chromium's own calls home.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
LOCAL = {"127.0.0.1", "localhost", "[::1]", "::1"}
ASSIGNMENT = "12_medical"              # the assignment whose student copy is solved in JupyterLab
LAB_TIMEOUT_S = 120


def _require_browser():
    """Skip without Playwright or Chromium; under CI (CI=true) their absence fails instead."""
    try:
        import playwright.sync_api  # noqa: F401
        missing = None if Path(CHROMIUM).is_file() else (
            f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium, as .ci/run does; "
            f"or set MMCOURSE_CHROMIUM)")
    except ImportError:
        missing = "the playwright package is not installed (make setup installs it)"
    if missing:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(missing)


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def _guarded_context(browser):
    """A new browser context whose every request off localhost is refused, and the list that records them."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    left: list[str] = []

    def route(r):
        host = urlsplit(r.request.url).hostname or ""
        if r.request.url.startswith(("data:", "blob:")) or host in LOCAL:
            r.continue_()
        else:
            left.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return context, left


@pytest.fixture
def page(browser, request):
    """A page in a guarded context (:func:`_guarded_context`): no request may leave localhost.

    A failing test leaves a screenshot of where it stopped: build/browser/failed_<test>.png.
    """
    context, left = _guarded_context(browser)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"failed_{request.node.name}.png"))
    context.close()
    assert not left, f"requests left localhost: {left[:5]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ the site
@pytest.fixture(scope="module")
def site_url():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no site at {SITE}: run `make book` first (make browser does)")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _expected(path: Path) -> tuple[int, bool]:
    """(figures, has math) of a committed chapter: its image outputs, and whether its text holds TeX."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    images = sum(1 for c in nb["cells"] for o in c.get("outputs", [])
                 if {"image/png", "image/svg+xml", "image/jpeg"} & set(o.get("data", {})))
    math = any(re.search(r"\$\$|(?<![\\$])\$[^$\n]+\$", "".join(c["source"])) for c in nb["cells"]
               if c["cell_type"] == "markdown")
    return images, math


def _typeset(page) -> bool:
    """Wait for MathJax to typeset the page; False if the page loads no MathJax (Sphinx adds it where math is)."""
    if page.locator("script[src*='mathjax']").count() == 0:
        return False
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=15000)
    page.evaluate("() => MathJax.startup.promise")
    return True


def test_home_page_shows_the_syllabus_and_every_chapter_its_figures_and_math(page, site_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{site_url}/index.html")
    rows = page.locator("table tbody tr")
    chapters = notebooks()
    assert rows.count() == len(chapters), "one syllabus row per chapter"
    assert "make test" in page.inner_text("body") and "make course" in page.inner_text("body")
    page.screenshot(path=str(SHOTS / "site_home.png"))
    for path in chapters:
        images, math = _expected(path)
        page.goto(f"{site_url}/chapters/{path.stem}.html")
        has_mathjax = _typeset(page)
        shown = page.evaluate("() => [...document.querySelectorAll('article img')]"
                              ".filter(i => i.complete && i.naturalWidth > 0).length")
        assert shown >= images, f"{path.stem}: {shown} figures shown, {images} in the notebook"
        typeset = page.locator("mjx-container").count()
        failed = page.locator("mjx-merror").count()
        assert failed == 0, f"{path.stem}: {failed} formulas MathJax could not typeset"
        if math:
            assert has_mathjax and typeset > 0, f"{path.stem}: the notebook has TeX, the page shows no typeset formula"
        assert not page.js_errors, f"{path.stem}: script errors {page.js_errors[:3]}"
        if path.stem.startswith("05"):
            page.locator("mjx-container").first.scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / "site_chapter_05.png"))


def test_the_guard_catches_a_request_that_leaves_localhost(browser, site_url):
    context, left = _guarded_context(browser)
    page = context.new_page()
    page.goto(f"{site_url}/index.html")
    page.evaluate("() => fetch('https://cdn.example.org/mathjax.js').catch(() => null)")
    context.close()
    assert left == ["https://cdn.example.org/mathjax.js"]


def test_search_finds_a_chapter(page, site_url):
    page.goto(f"{site_url}/search.html?q=contrastive")
    page.wait_for_selector("#search-results ul li", timeout=15000)
    hits = page.locator("#search-results ul li a").all_inner_texts()
    assert any("pretraining" in h.lower() for h in hits), hits[:10]


# --------------------------------------------------------------------------------------------- JupyterLab
def _solution_text(source: str) -> str:
    """An nbgrader solution cell's text with its BEGIN/END SOLUTION marker lines removed."""
    return "\n".join(line for line in source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


@pytest.fixture(scope="module")
def lab():
    """`make lab` on a copy of chapter 00 and one assignment's student copy under build/, smoke profile."""
    _require_browser()
    folder = BUILD / "browser" / "lab"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "00_welcome.ipynb", folder)
    released = BUILD / "classroom" / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    subprocess.run([sys.executable, "-m", "classroom", "release", ASSIGNMENT], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "MMCOURSE_BUILD": str(BUILD)})
    shutil.copy(released, folder)
    settings = BUILD / "browser" / "lab-settings"
    _write_settings(settings)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "MMCOURSE_PROFILE": "smoke", "MMCOURSE_PROGRESS": "0", "MMCOURSE_BUILD": str(BUILD),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(settings / "workspaces")}
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={token} --LabApp.news_url=None "
            f"--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    log = open(BUILD / "browser" / "lab.log", "w")
    server = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_DIR={folder}", f"LAB_ARGS={args}"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start: {(BUILD / 'browser' / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, token, folder
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _write_settings(folder: Path):
    """JupyterLab's user settings for the test: every cell in the page (no windowing), no news."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, value in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                        "checkForUpdates": False}}.items():
        path = folder / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value), encoding="utf-8")


PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"   # the notebook on show, not others the lab keeps open
NB = f"{PANEL} .jp-Notebook"
IDLE = f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']"


def _open(page, url, token, folder: Path, name: str):
    """Open one notebook alone (?reset: the workspace does not bring back the notebooks of earlier tests) and
    wait until all its cells are in the page and its kernel is idle: before that, Run All runs what has loaded."""
    cells = len(nbformat.read(folder / name, as_version=4).cells)
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")
    page.wait_for_function(f"() => document.querySelectorAll('{NB} .jp-Cell').length === {cells} && "
                           "/\\| Idle/.test(document.querySelector('#jp-main-statusbar').textContent)",
                           timeout=60000)


def _run_all(page):
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _save_and_read(page, path: Path):
    """Save the notebook on show with its toolbar's save button; read the file once its bytes have changed.

    A run always changes them (outputs, counts). The button is clicked again every 5 s: a first save
    sometimes stays at "Saving started" in a lab that has only just started.
    """
    before = path.read_bytes()
    save = page.locator(f"{PANEL} .jp-Toolbar [data-command='docmanager:save']")
    deadline = time.monotonic() + 30
    while path.read_bytes() == before:
        assert time.monotonic() < deadline, f"JupyterLab did not save {path.name} in 30 s"
        save.click()
        for _ in range(50):
            time.sleep(0.1)
            if path.read_bytes() != before:
                break
    time.sleep(0.5)                    # the server writes the file in place: let it finish
    return nbformat.read(path, as_version=4)


def _wait_idle(page):
    page.wait_for_function(f"() => !/\\[\\*\\]/.test([...document.querySelectorAll('{NB} .jp-InputPrompt')]"
                           ".map(e => e.textContent).join(' '))", timeout=LAB_TIMEOUT_S * 1000)
    page.wait_for_selector(IDLE, timeout=LAB_TIMEOUT_S * 1000)


def test_chapter_00_runs_in_jupyterlab_in_the_smoke_profile(page, lab):
    url, token, folder = lab
    _open(page, url, token, folder, "00_welcome.ipynb")
    _run_all(page)
    page.wait_for_function(f"() => [...document.querySelectorAll('{NB} .jp-CodeCell .jp-InputPrompt')]"
                           ".every(e => /\\[\\d+\\]/.test(e.textContent))", timeout=LAB_TIMEOUT_S * 1000)
    _wait_idle(page)
    body = page.inner_text(NB)
    assert "profile: smoke" in body, "the kernel ran in the smoke profile"
    assert "cuda available:" in body and "python: 3." in body, "the environment report appears"
    assert page.locator(f"{NB} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                        ":text('Traceback')").count() == 0
    page.locator(f"{NB} .jp-CodeCell").nth(3).scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab_chapter_00.png"))
    nb = _save_and_read(page, folder / "00_welcome.ipynb")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every cell ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"a cell raised {errors[0].ename}: {errors[0].evalue}"
    assert not (ROOT / "notebooks" / "00_welcome.ipynb").read_text().count('"profile: smoke'), \
        "the committed notebook was left alone"


def test_a_student_solves_one_task_of_an_assignment(page, lab):
    url, token, folder = lab
    source = nbformat.read(ROOT / "assignments" / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    released = nbformat.read(folder / f"{ASSIGNMENT}.ipynb", as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in released.cells]
    solution = next(i for i, c in enumerate(released.cells) if c.metadata.get("nbgrader", {}).get("solution"))
    test = next(i for i, c in enumerate(released.cells) if i > solution and c.metadata.get("nbgrader", {}).get("grade"))
    assert "raise NotImplementedError" in released.cells[solution].source, "the student copy is unsolved"
    answer = _solution_text(next(c.source for c in source.cells
                                 if c.metadata.get("nbgrader", {}).get("grade_id") == ids[solution]))

    _open(page, url, token, folder, f"{ASSIGNMENT}.ipynb")
    editor = page.locator(f"{NB} .jp-Cell").nth(solution).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(answer)
    page.keyboard.press("Escape")
    _run_all(page)          # stops at the next unsolved task, after this task's test cell
    page.wait_for_function(f"() => /\\[\\d+\\]/.test(document.querySelectorAll('{NB} .jp-Cell')[{test}]"
                           ".querySelector('.jp-InputPrompt').textContent)", timeout=LAB_TIMEOUT_S * 1000)
    _wait_idle(page)
    page.locator(f"{NB} .jp-Cell").nth(test).scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab_assignment.png"))
    nb = _save_and_read(page, folder / f"{ASSIGNMENT}.ipynb")
    assert nb.cells[solution].source.strip() == answer.strip(), "the solution cell holds what was typed"
    ran = nb.cells[test]
    assert ran.execution_count, f"test cell {ids[test]} ran"
    assert not [o for o in ran.outputs if o.output_type == "error"], f"test cell {ids[test]} passed"
    later = [c for c in nb.cells[test + 1:] if c.cell_type == "code" and c.outputs]
    assert any(o.output_type == "error" and o.ename == "NotImplementedError" for c in later for o in c.outputs), \
        "the next, unsolved task still raises"
