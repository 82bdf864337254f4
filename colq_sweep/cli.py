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


def check_overrides_or_exit(argv: list[str] | None = None):
    """Before Hydra composes or creates a folder: every overridden key exists, and every job's outputs_dir can be
    written and its tracking server answers. Returns the reading of the command line (config/overrides.py)."""
    from colq_sweep.config.overrides import read_command_line

    argv = sys.argv[1:] if argv is None else argv
    line = read_command_line(argv)
    if line.error:
        refuse(line.error)
    given = [a for a in argv if a.lstrip("+~").startswith("search.")]
    if given and not {"-m", "--multirun"} & set(argv):  # a multirun's sweeper decides (only a search reads it)
        refuse(f"colq_sweep: config error: {given[0]}: search.* is read only by a tolerance search: "
               "python -m colq_sweep -m hydra/sweeper=colq-tolerance <candidates> (or drop it)")  # fmt: skip
    for outputs_dir, tracking_uri in line.results:
        check_results_or_exit(outputs_dir, tracking_uri)
    return line


def check_results_or_exit(outputs_dir: str, tracking_uri: str | None) -> None:
    """outputs_dir (and a sqlite store's folder) writable; an http(s) tracking server answering MLflow's API."""
    import os
    from pathlib import Path

    from colq_sweep.launch.preflight import check_tracking_server, check_writable
    from colq_sweep.track.store import resolve_tracking_uri

    field = "tracking_uri" if tracking_uri else "MLFLOW_TRACKING_URI"
    try:
        uri = resolve_tracking_uri(outputs_dir, tracking_uri)
        if uri.startswith(("http://", "https://")):
            check_tracking_server(field, uri)
        check_writable("outputs_dir", outputs_dir)
        if uri.startswith("sqlite:///") and (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
            check_writable(field, str(Path(uri[len("sqlite:///") :]).parent))
    except ConfigError as err:
        refuse(f"colq_sweep: {err} [nothing was run]")


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
