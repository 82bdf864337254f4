"""The multirun around the sweep points: its MLflow parent run, the end-of-sweep summary and exit code.

Called by the sweeper (hydra_plugins/colq_sweep_plugins/sweeper.py) in the process that launches the jobs, so
it works the same for every launcher (the process pool, Slurm through submitit, Hydra's basic launcher). The
summary is read from the status file (pipeline/job.py) each job writes into its own job directory; a job directory without one
is a job that died without reporting (killed, out of host memory, a Slurm time-out) and counts as failed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

from omegaconf import DictConfig

from colq_sweep import contract as R

log = logging.getLogger("colq_sweep")
STATUS_FILE = "colq_status.json"


def sweep_tracker(config: DictConfig):
    from colq_sweep.console import adopt_library_loggers
    from colq_sweep.track.store import Tracker, resolve_tracking_uri

    adopt_library_loggers()  # MLflow's own lines (e.g. creating its database) only with -v
    return Tracker(resolve_tracking_uri(config.outputs_dir, config.get("tracking_uri")), str(config.name))


def open_sweep(config: DictConfig, n_jobs: int) -> str:
    """Create (or find, on a re-launch of the same sweep directory) the multirun's parent run."""
    from colq_sweep.track.store import sweep_id_for

    sweep_dir = Path(str(config.hydra.sweep.dir))
    tracker = sweep_tracker(config)
    killed = tracker.mark_dead_runs_killed(reason="found by a later sweep")
    if killed:
        log.warning("marked %d run(s) left RUNNING by a process or Slurm job that has ended as KILLED: %s", len(killed), ", ".join(killed))
    sid = sweep_id_for(sweep_dir)
    run_id = tracker.find_parent(sid)
    if run_id is None:
        overrides = " ".join(config.hydra.overrides.task)
        task = list(config.hydra.overrides.task)
        run_id = tracker.create_run(sweep_name(task, sweep_dir.name), {
            R.ROLE: R.ROLE_SWEEP, R.SWEEP_ID: sid, R.SWEEP_DIR: str(sweep_dir.resolve()), R.OVERRIDES: overrides,
        })  # fmt: skip
        # its axes and their values as params (`sweep.seqlen` = `32,64,128`): the parents filter and compare by them
        # (a key MLflow would refuse, `model@pkg=a,b`, is left out rather than failing the sweep)
        axes = dict(o.split("=", 1) for o in _swept(_named(task)))
        params = {f"sweep.{k.lstrip('+~')}": v[:6000] for k, v in axes.items()}
        tracker.log(run_id, params={k: v for k, v in params.items() if re.fullmatch(r"[\w.\- ]+", k)})
    tracker.log(run_id, metrics={R.SWEEP_POINTS: n_jobs})
    log.info("MLflow parent run %s (experiment %s, store %s)", run_id, config.name, tracker.uri)
    return run_id


# overrides that say where and how a sweep ran, not what it compares: left out of its run's name
_NOT_NAMED = ("experiment", "outputs_dir", "name", "tracking_uri", "force", "system_metrics", "device")


def _named(overrides: list[str]) -> list[str]:
    return [o for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") not in _NOT_NAMED and "/" not in o]


def _swept(overrides: list[str]) -> list[str]:
    """The overrides a sweep varies, as Hydra's parser reads them: a comma list or a sweep function (`seqlen=32,64`,
    `x=choice(1,2)`; not a list value, `eval.tasks=[A,B]`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra parsed them before the sweep began; a name is not worth a failure
        return []
    return [o for o, p in zip(overrides, parsed, strict=True) if p.is_sweep_override()]


def sweep_name(overrides: list[str], dir_name: str) -> str:
    """The parent run's name: what the sweep compares (its swept overrides; for a sweep of one point its other
    overrides, paths left out), then when (`sweep seqlen=32,64,128 · 12-04 22:32`; the directory's name when it has
    no time stamp), so parents read apart in the runs table."""
    words = _named(overrides)
    words = _swept(words) or words
    m = re.search(r"\d{4}-(\d\d-\d\d)_(\d\d)-(\d\d)", dir_name)
    when = f"{m.group(1)} {m.group(2)}:{m.group(3)}" if m else dir_name
    return f"sweep {' '.join(words) or '(defaults)'} · {when}"[:250]


def abort_sweep(config: DictConfig, reason: str) -> None:
    """Mark the parent run FAILED when the sweep stops before its jobs ran (e.g. no GPU slot)."""
    from colq_sweep.track.store import TrackingUnavailable, sweep_id_for

    try:
        tracker = sweep_tracker(config)
        parent = tracker.find_parent(sweep_id_for(str(config.hydra.sweep.dir)))
        if parent:
            tracker.log(parent, tags={R.ERROR: reason[:4000]})
            tracker.finish(parent, "FAILED")
    except TrackingUnavailable as exc:
        print(f"colq_sweep: the sweep's parent run could not be marked FAILED: {exc}", file=sys.stderr)


def record_search(config: DictConfig, record: dict, answer: str, params: dict[str, str], child_tags: dict[str, dict[str, str]]) -> None:
    """A search's outcome on its parent run (still open): the record as `search/search.json` (what the report
    reads), the answer as the run's description and a tag, the searched space as params; and tags on the runs of
    its candidates or trials (`child_tags`: run id -> tags, e.g. `colq.search.chosen`)."""
    import tempfile

    from colq_sweep.track.store import TrackingUnavailable, sweep_id_for

    try:
        tracker = sweep_tracker(config)
        parent = tracker.find_parent(sweep_id_for(str(config.hydra.sweep.dir)))
        if parent is None:
            return
        tracker.log(parent, params=params, tags={R.SEARCH_KIND: record["kind"], R.SEARCH_ANSWER: answer[:4000],
                                                 R.NOTE: answer})  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(R.SEARCH_ARTIFACT).name
            path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
            tracker.log_artifact(parent, path, str(Path(R.SEARCH_ARTIFACT).parent))
        for run_id, tags in child_tags.items():
            tracker.log(run_id, tags=tags)
    except TrackingUnavailable as exc:
        print(f"colq_sweep: the search's outcome could not be logged to its parent run: {exc}", file=sys.stderr)


def job_status(job_dir: Path, label: str, note: str | None = None) -> dict:
    """The status a job wrote; a job that wrote none crashed (`note`: what its launcher knows, e.g. its Slurm state)."""
    status_file = job_dir / STATUS_FILE
    if status_file.exists():
        return json.loads(status_file.read_text())
    return {"label": label, "model": "?", "status": "CRASHED", "metrics": {}, "error": note or "no status written (process died?)"}


def close_sweep(config: DictConfig, jobs: list[tuple[int, Path, str]], notes: dict[int, str] | None = None) -> int:
    """Print the summary of exactly these jobs (number, directory, overrides), close the parent run with the
    sweep's status, and return how many points failed (at least 1 when the parent run could not be closed).
    `notes`: job number -> why its launcher saw it fail."""
    notes = notes or {}
    rows = [(str(num), job_status(job_dir, overrides, notes.get(num))) for num, job_dir, overrides in jobs]
    failed = [r for r in rows if r[1]["status"] not in ("FINISHED", "SKIPPED")]
    print(format_summary(rows), file=sys.stderr)
    if failed:
        print(f"colq_sweep: {len(failed)} of {len(rows)} sweep points failed (see the table above)", file=sys.stderr)
    from colq_sweep.track.store import TrackingUnavailable

    try:
        _name_children(config, jobs, rows)
        _close_parent(config, failed)
    except TrackingUnavailable as exc:
        print(f"colq_sweep: the sweep's parent run could not be closed: {exc}; the next sweep against that server "
              "marks what this one left RUNNING as KILLED and reruns it, reusing what was built", file=sys.stderr)  # fmt: skip
        return max(len(failed), 1)
    return len(failed)


def distinguishing(shown: list[str]) -> list[str]:
    """Each job's overrides (as shown, space-separated) less those every job shares: what tells it apart (nothing,
    for a sweep of one job: its run keeps the point's own name)."""
    lists = [re.sub(r"^trial #\d+: ", "", s).split() for s in shown]
    shared = set.intersection(*(set(x) for x in lists)) if lists else set()
    return [" ".join(o for o in x if o not in shared) for x in lists]


def _name_children(config: DictConfig, jobs: list[tuple[int, Path, str]], rows: list[tuple[str, dict]]) -> None:
    """Each point's run named after what the sweep varies, then its model and short label (`seqlen=64 · tiny
    w4g128`): MLflow's runs table cuts names after a few characters, and the full label starts with the same words."""
    varying = distinguishing([o for _, _, o in jobs])
    tracker = None
    for (_, status), words in zip(rows, varying, strict=True):
        if not words or not status.get("run_id") or status["status"] not in ("FINISHED", "SKIPPED"):
            continue
        from colq_sweep.track.tags import label_head

        tracker = tracker or sweep_tracker(config)
        head = " ".join(label_head(str(status.get("label", ""))))
        tracker.log(status["run_id"], tags={"mlflow.runName": f"{words} · {status.get('model', '?')} {head}".strip()})


def _close_parent(config: DictConfig, failed: list) -> None:
    from colq_sweep.track.store import sweep_id_for

    tracker = sweep_tracker(config)
    parent = tracker.find_parent(sweep_id_for(str(config.hydra.sweep.dir)))
    if parent:
        # every job has ended: a child run still RUNNING lost its process (the summary shows it as CRASHED)
        for run in tracker.children(parent, status="RUNNING"):
            tracker.log(run.info.run_id, tags={R.ERROR: "its job ended without closing the run (CRASHED)"})
            tracker.finish(run.info.run_id, "KILLED")
        tracker.log(parent, metrics={R.SWEEP_FAILED: len(failed)})
        tracker.finish(parent, "FAILED" if failed else "FINISHED")
    foreign = tracker.foreign_running()
    if foreign:
        print(f"colq_sweep: {len(foreign)} run(s) are RUNNING on other hosts (owner unknown from here): "
              + ", ".join(f"{r.info.run_id} ({r.data.tags.get(R.HOST, '?')})" for r in foreign[:10]), file=sys.stderr)


def format_summary(rows: list[tuple[str, dict]]) -> str:
    header = ("job", "model", "point", "status", "avg ndcg@5", "delta vs original")
    lines = [header]
    for job, s in rows:
        m = R.tracked(s.get("metrics") or {})
        avg, delta = m.get(R.AVG5_ALL), m.get(R.DELTA5_ALL)
        status = s["status"] + (f" ({s['error']})" if s.get("error") else "")
        lines.append((job, s.get("model", "?"), s.get("label", "?"), status[:80],
                      f"{avg:.5f}" if avg is not None else "-", f"{delta:+.5f}" if delta is not None else "-"))  # fmt: skip
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = ["", "colq_sweep summary", fmt.format(*lines[0]), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*r) for r in lines[1:]]
    return "\n".join(out)
