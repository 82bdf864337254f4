"""What a person sees while a sweep runs, and what only the job's log file gets.

The console (Hydra's logging configs conf/hydra/job_logging/colq.yaml and conf/hydra/hydra_logging/colq.yaml)
shows, per point, one line when each stage starts and one when it ends with its elapsed time (`stage`), the
evaluation's progress bar over all pages and queries (`EvalProgress`), auto-round's per-block bar, colq_sweep's
warnings, anyone's errors, and the end-of-sweep summary. Third-party INFO and WARNING lines (mteb, transformers,
datasets, auto-round, mlflow, Python warnings) and colq_sweep's own detail lines go to the job's log file
(`<job dir>/<job name>.log`) only, and per-file loading bars are off. `python -m colq_sweep -v ...` (or any
`hydra.verbose=...`) brings all of it back to the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

VERBOSE_ENV = "COLQ_VERBOSE"  # set by `-v` on the command line; job processes inherit it (pool, Slurm)
log = logging.getLogger("colq_sweep.console")

# Libraries that install their own stderr handler (and stop propagation): their records are handed to the root
# logger instead, where the console filter and the job's log file decide.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "mlflow", "autoround", "sqlalchemy.engine",
                   "alembic", "huey")  # fmt: skip


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def take_verbose_flag(argv: list[str]) -> list[str]:
    """Remove `-v` / `--verbose` from a command line (Hydra has no such flag) and remember it in the environment."""
    rest = [a for a in argv if a not in ("-v", "--verbose")]
    if len(rest) != len(argv):
        os.environ[VERBOSE_ENV] = "1"
    return rest


class ConsoleFilter(logging.Filter):
    """Which records reach the console: everything when verbose; else ERROR and above from anyone, WARNING and
    above from the `warn` logger prefixes, INFO and above from the `info` prefixes."""

    def __init__(self, verbose: object = False, info: list[str] | None = None, warn: list[str] | None = None):
        super().__init__()
        self.verbose = bool(verbose) or is_verbose()
        self.info = tuple(info or ())
        self.warn = tuple(warn or ())

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.ERROR:
            return True
        name = record.name
        if record.levelno >= logging.WARNING and _under(name, self.warn):
            return True
        return record.levelno >= logging.INFO and _under(name, self.info)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 <message>` for INFO lines of colq_sweep and Hydra; other records also name their logger and level."""

    PLAIN = ("colq_sweep", "hydra", "hydra_plugins", "__main__")

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", "%H:%M:%S")
        self.other = logging.Formatter("%(asctime)s [%(name)s][%(levelname)s] %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and _under(record.name, self.PLAIN):
            return super().format(record)
        return self.other.format(record)


class ConsoleHandler(logging.StreamHandler):
    """A stream handler that prints above a running tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def adopt_library_loggers() -> None:
    """Hand the records of libraries with their own stderr handler to the root logger (console filter + log file).
    Idempotent; called when a job starts and again after importing a library that installs its handler at import
    (auto-round). Nothing changes when no root handler exists yet (a plain script keeps the libraries' output)."""
    if not logging.getLogger().handlers:
        return
    logging.captureWarnings(True)  # warnings.warn(...) -> logger py.warnings -> the log file
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        # their own plain stderr handlers go; anything else attached (e.g. the autoround method's AutoRoundLogWatch) stays
        lg.handlers = [h for h in lg.handlers if type(h) is not logging.StreamHandler]
        lg.propagate = True


def quiet_library_bars() -> None:
    """Per-file loading bars (transformers' "Loading weights", datasets' Map/Filter, MLflow's artifact downloads,
    auto-round's repacking) stay off unless verbose; auto-round's per-block quantization bar is not touched."""
    if is_verbose():
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError):
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()


def quiet_autoround_repacking() -> None:
    """auto-round's load-time "repacking to CPU/XPU format" bar (one tick per layer), off unless verbose."""
    if is_verbose():
        return
    mod = sys.modules.get("auto_round.inference.convert_model")
    if mod is not None and not getattr(mod.tqdm, "_colq_quiet", False):
        from functools import partial

        quiet = partial(mod.tqdm, disable=True)
        quiet._colq_quiet = True  # type: ignore[attr-defined]
        mod.tqdm = quiet


def setup_job() -> None:
    """A job process's console: library loggers through the root logger, loading bars off (unless verbose). The
    libraries every job uses are imported first: each installs its own handler on import (or first use)."""
    for module in ("mlflow", "transformers", "datasets"):
        with contextlib.suppress(ImportError):
            __import__(module)
    import transformers.utils.logging as tlog

    tlog.get_logger()  # transformers configures its library logger (handler, no propagation) on first use
    adopt_library_loggers()
    quiet_library_bars()


# ------------------------------------------------------------------------------------------------ stages


def say(message: str, *args: object) -> None:
    """One console line (and a log-file line)."""
    log.info(message, *args)


@contextlib.contextmanager
def stage(who: str, name: str) -> Iterator[dict]:
    """`<who> | <name>: start` now and `<who> | <name>: done in 1.2 s (<result>)` at the end; the body may put
    a short result into the yielded dict's "result". A stage that raises ends with `failed after 1.2 s`."""
    info: dict = {"result": ""}
    say("%s | %s: start", who, name)
    t0 = time.perf_counter()
    try:
        yield info
    except BaseException as exc:
        say("%s | %s: failed after %s (%s)", who, name, _seconds(time.perf_counter() - t0), type(exc).__name__)
        raise
    say("%s | %s: done in %s%s", who, name, _seconds(time.perf_counter() - t0), f" ({info['result']})" if info["result"] else "")


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


# ------------------------------------------------------------------------------------------------ progress


class EvalProgress:
    """One tqdm bar over every page and query an evaluation hands to the encoder, with rate and ETA.

    The total is known before the first task runs (mteb's descriptive statistics of each selected subset, or the
    task's data counted when it has none). Pages served from the page cache count as done when they are looked
    up; when a task ends, what is left of its estimate counts as done (subsets served from the result cache, or
    an estimate above the real size), and a task that needs more than estimated grows the total.
    """

    def __init__(self, desc: str, total: int, enabled: bool = True):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, leave=True, file=sys.stderr,
                        mininterval=0.5 if tty else 30.0, disable=not enabled or total <= 0)  # fmt: skip
        self.expected = 0
        self.done = 0

    def begin_task(self, expected: int) -> None:
        self.expected, self.done = expected, 0

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        self.done += n
        if self.done > self.expected:  # more than estimated: grow the total, never run past it
            self.bar.total += self.done - self.expected
            self.expected = self.done
        self.bar.update(n)

    def end_task(self) -> None:
        """The rest of the task's estimate was served from caches (or the estimate was high): count it as done."""
        if self.expected > self.done:
            self.bar.update(self.expected - self.done)
        self.expected = self.done = 0

    def close(self) -> None:
        self.bar.close()

