"""The command line's edge: everything refused before any work gets one line on stderr and exit code 2, no traceback.

`python -m colq_sweep` runs these in order: the overrides against the config tree (config/overrides.py, before
Hydra composes), then in the job the composed config's values (config.validate), then the world a single run
needs (launch/preflight.py, hub/inputs.py; a multirun's sweeper runs those for every job before the first starts).
"""

from __future__ import annotations

import sys
from typing import NoReturn

from colq_sweep.config import ConfigError, SweepPoint, validate


def refuse(*lines: str) -> NoReturn:
    print("\n".join(lines), file=sys.stderr)
    sys.exit(2)


def check_overrides_or_exit(argv: list[str] | None = None) -> None:
    from colq_sweep.config.overrides import unknown_key

    msg = unknown_key(sys.argv[1:] if argv is None else argv)
    if msg:
        refuse(msg)


def validate_or_exit(cfg) -> SweepPoint:
    """One line on stderr and exit code 2 for a bad value: no traceback, nothing loaded."""
    try:
        return validate(cfg)
    except ConfigError as err:
        refuse(f"colq_sweep: {err}")


def preflight_or_exit(point: SweepPoint, overrides: list[str]) -> None:
    """The checks of the world a single run makes before its point (a sweep's were made by its sweeper)."""
    from colq_sweep.hub.prefetch import check_lines
    from colq_sweep.launch.preflight import preflight

    try:
        preflight(point)
    except ConfigError as err:
        refuse(f"colq_sweep: {err}")
    lines = check_lines([point], overrides)
    if lines:
        refuse(*lines)
