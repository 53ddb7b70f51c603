"""The shared argument checks: whole numbers and probabilities, with messages that name the argument."""
import math
import re

import pytest

from mmcourse.checks import check_int, check_probability


@pytest.mark.parametrize("value,minimum", [(1, 1), (7, 1), (0, 0), (3, 3)])
def test_check_int_returns_what_it_accepts(value, minimum):
    assert check_int(value, "n", minimum) == value


@pytest.mark.parametrize("value,minimum,words", [
    (0, 1, "a positive int"), (-1, 0, "a non-negative int"), (2, 3, "an int >= 3"),
    (True, 1, "a positive int"), (1.0, 1, "a positive int"), ("2", 1, "a positive int"), (None, 1, "a positive int"),
])
def test_check_int_names_the_argument_and_the_value(value, minimum, words):
    with pytest.raises(ValueError, match=re.escape(f"n must be {words}, got {value!r}")):
        check_int(value, "n", minimum)


def test_check_int_allows_none_only_when_asked():
    assert check_int(None, "steps", allow_none=True) is None
    with pytest.raises(ValueError, match=re.escape("steps must be a positive int or None, got 0")):
        check_int(0, "steps", allow_none=True)


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_check_probability_accepts_the_closed_interval(value):
    assert check_probability(value, "p") == float(value)


@pytest.mark.parametrize("value", [-0.1, 1.1, math.nan, math.inf, True, "0.5", None])
def test_check_probability_refuses_everything_else(value):
    with pytest.raises(ValueError, match=re.escape(f"p must be a number in [0, 1], got {value!r}")):
        check_probability(value, "p")


def test_check_probability_below_one_excludes_one():
    assert check_probability(0.99, "p", below_one=True) == 0.99
    with pytest.raises(ValueError, match=re.escape("p must be a number in [0, 1), got 1.0")):
        check_probability(1.0, "p", below_one=True)
