"""``python -m mmcourse``: the command line of :mod:`mmcourse.cli` (e.g. ``python -m mmcourse predict --help``)."""
from .cli import main

raise SystemExit(main())
