"""nbgrader's configuration for teachers who run nbgrader's own commands from this folder.

`make assignments` and `make grade` (python -m classroom) use the same settings, from
classroom.grading.course_config: the source stays here, everything nbgrader writes goes to build/classroom.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from classroom.grading import course_config  # noqa: E402

c = get_config()  # noqa: F821 - provided by nbgrader when it reads this file
c.merge(course_config(fork=False))   # nbgrader's CLI starts ordinary kernels; python -m classroom forks them
