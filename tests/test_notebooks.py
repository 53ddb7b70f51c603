"""The committed notebooks and the nbval sanitiser (notebooks/sanitize.cfg)."""
from __future__ import annotations

import re

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

from mmcourse.course import notebooks
from mmcourse.report import committed_run_problems
from mmcourse.utils import project_root

NOTEBOOKS = notebooks()


def _sanitize(text: str) -> str:
    config = (project_root() / "notebooks" / "sanitize.cfg").read_text(encoding="utf-8")
    for regex, replace in get_sanitize_patterns(config):
        text = re.sub(regex, replace, text)
    return text


def test_sanitiser_hides_paths_addresses_times_warnings_and_progress_bars():
    raw = ("wrote /home/ana/mmcourse/build/data/m.jsonl\n"
           "<Figure at 0x7f3a2c>\n"
           "training took 49.4 s\n"
           "/x/site-packages/torch/nn/modules/module.py:12: UserWarning: something\n"
           "  warnings.warn(msg)\n"
           " 40%|####      | 4/10 [00:01<00:02, 3.1it/s]\n"
           "W1202 16:24:01.591000 19530 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum\n"
           "accuracy 0.779\n")
    assert _sanitize(raw) == ("wrote <PATH>/build/data/m.jsonl\n<Figure at 0xADDRESS>\n"
                              "training took <TIME>\naccuracy 0.779\n")


def test_sanitiser_keeps_numbers_that_are_results():
    text = "Bayes accuracy, image + text: 0.850\nshape (5, 32, 17)\n"
    assert _sanitize(text) == text


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))]
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_a_clean_default_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for name in ("PROFILE", "SEED", "DEVICE"):
        assert re.search(rf"^{name} = ", params[0].source, re.M), f"parameters cell lacks {name}"
    assert 'os.environ.get("MMCOURSE_PROFILE"' in params[0].source
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "executed top to bottom in one fresh kernel"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"committed error output: {errors[0].get('ename')}"
    printed = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert re.search(r"profile: default\b", printed), "committed outputs must come from the default profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_run_is_of_the_current_code_with_every_target_met(path):
    """Changing mmcourse means re-executing the notebooks (make execute); a missed target fails here too."""
    problems = committed_run_problems(path)
    assert not problems, "\n".join(problems)
