"""Hydra callbacks around a multirun: the MLflow parent run at the start, a summary and exit code at the end.

The summary is read from the status file each job writes into its job directory, so it works for every
launcher (in-process, the process pool, Slurm through a shared filesystem). A job directory without a status
file is a job that died without reporting (killed, out of host memory): it counts as failed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("colq_sweep")


class SweepCallback(Callback):
    def _tracker(self, config: DictConfig):
        from colq_sweep.tracking import Tracker, resolve_tracking_uri

        return Tracker(resolve_tracking_uri(config.outputs_dir, config.get("tracking_uri")), str(config.name))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from colq_sweep.tracking import ROLE_SWEEP, sweep_id_for

        sweep_dir = Path(str(config.hydra.sweep.dir))
        tracker = self._tracker(config)
        sid = sweep_id_for(sweep_dir)
        if tracker.find_parent(sid) is None:
            overrides = " ".join(config.hydra.overrides.task)
            run_id = tracker.create_run(
                f"sweep {sweep_dir.name}", {"colq.role": ROLE_SWEEP, "colq.sweep_id": sid, "colq.sweep_dir": str(sweep_dir.resolve()), "colq.overrides": overrides}
            )
            log.info("MLflow parent run %s (experiment %s, store %s)", run_id, config.name, tracker.uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from colq_sweep.sweep import STATUS_FILE
        from colq_sweep.tracking import sweep_id_for

        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = []
        for job_dir in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name)):
            status_file = job_dir / STATUS_FILE
            if status_file.exists():
                s = json.loads(status_file.read_text())
            else:
                s = {"label": _overrides_of(job_dir), "model": "?", "status": "CRASHED", "metrics": {}, "error": "no status written (process died?)"}
            rows.append((job_dir.name, s))
        failed = [r for r in rows if r[1]["status"] not in ("FINISHED", "SKIPPED")]
        print(format_summary(rows), file=sys.stderr)
        tracker = self._tracker(config)
        parent = tracker.find_parent(sweep_id_for(sweep_dir))
        if parent:
            tracker.log(parent, metrics={"points": len(rows), "points_failed": len(failed)})
            tracker.finish(parent, "FAILED" if failed else "FINISHED")
        if failed:
            print(f"colq_sweep: {len(failed)} of {len(rows)} sweep points failed (see the table above)", file=sys.stderr)
            sys.exit(1)


def abort_sweep(config: DictConfig, reason: str) -> None:
    """Mark the multirun's parent run FAILED when the sweep stops before launching (e.g. a bad config)."""
    from colq_sweep.tracking import Tracker, resolve_tracking_uri, sweep_id_for

    tracker = Tracker(resolve_tracking_uri(config.outputs_dir, config.get("tracking_uri")), str(config.name))
    parent = tracker.find_parent(sweep_id_for(str(config.hydra.sweep.dir)))
    if parent:
        tracker.log(parent, tags={"colq.error": reason[:4000]})
        tracker.finish(parent, "FAILED")


def _overrides_of(job_dir: Path) -> str:
    f = job_dir / ".hydra" / "overrides.yaml"
    return f.read_text().replace("\n", " ").strip() if f.exists() else job_dir.name


def format_summary(rows: list[tuple[str, dict]]) -> str:
    header = ("job", "model", "point", "status", "avg ndcg@5", "delta vs original")
    lines = [header]
    for job, s in rows:
        m = s.get("metrics") or {}
        avg = m.get("avg_ndcg_at_5_all")
        delta = m.get("delta_ndcg_at_5_all")
        status = s["status"] + (f" ({s['error']})" if s.get("error") else "")
        lines.append((job, s.get("model", "?"), s.get("label", "?"), status[:80],
                      f"{avg:.5f}" if avg is not None else "-", f"{delta:+.5f}" if delta is not None else "-"))  # fmt: skip
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = ["", "colq_sweep summary"] + [fmt.format(*r) for r in lines[:1]] + ["  ".join("-" * w for w in widths)]
    out += [fmt.format(*r) for r in lines[1:]]
    return "\n".join(out)
