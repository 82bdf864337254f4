"""Hydra's basic sweep (the cartesian product of the overrides), made safe for long GPU sweeps.

Before any job runs, every job's config is composed and validated (one line naming the field, exit 2: a bad
value in job 5 costs no GPU time on jobs 1-4). Then the MLflow parent run is opened, the jobs are launched by
whichever launcher is configured, and a job that raised is recorded instead of aborting the sweep. At the end
a summary of exactly these jobs is printed, the parent run is closed, and the exit code is 1 if any point failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import filter_overrides
from omegaconf import OmegaConf, open_dict

from hydra_plugins.colq_sweep_plugins.compose import compose_job

log = logging.getLogger(__name__)


class ColqSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None, validate: bool = True):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.validate = validate

    def _compose(self, overrides: list[str], idx: int):
        """Job `idx`'s config and its directory. Hydra re-composes each job from the primary config: the sweep
        directory resolved once in sweep() is pinned."""
        assert self.config is not None and self.hydra_context is not None
        cfg = compose_job(self.hydra_context, self.config, overrides, idx, str(self.config.hydra.sweep.dir))
        return cfg, Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def _check(self, cfg):
        """The validated point of a composed job config (a ConfigError names the first bad field)."""
        from colq_sweep.config import validate
        from colq_sweep.launch.preflight import preflight

        point = validate(cfg)
        preflight(point, jobs_run_here=self._jobs_run_here())
        return point

    def _jobs(self, all_overrides: list[list[str]], what: str = "job") -> list[tuple[int, Path, str]]:
        """Compose (and validate) every job's config; return (number, job directory, overrides) per job. The
        validated points are kept in `self.points` for the checks that look at all of them at once."""
        from colq_sweep.config import ConfigError

        jobs = []
        self.points = []
        for idx, overrides in enumerate(all_overrides):
            cfg, job_dir = self._compose(overrides, idx)
            shown = " ".join(filter_overrides(overrides))
            if self.validate:
                try:
                    self.points.append(self._check(cfg))
                except ConfigError as err:
                    print(f"colq_sweep: {what} #{idx} ({shown}): {err} [nothing was launched]", file=sys.stderr)
                    sys.exit(2)
            jobs.append((idx, job_dir, shown))
        return jobs

    def _note_same_points(self, jobs: list[tuple[int, Path, str]]) -> None:
        """Jobs that differ only in knobs their method does not read (`quant=rtn seqlen=256,512,1024`) are one point:
        say so once, before anything runs; the first builds it, the others find it and are skipped."""
        from colq_sweep.keys import config_hash

        if not self.validate:
            return
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(self.points):
            paths = (p.model.path, p.calib.path if p.quant.needs_calibration else None, p.eval.fixture_dir)
            groups.setdefault((config_hash(p), *paths), []).append(i)
        for members in (m for m in groups.values() if len(m) > 1):
            first, rest = members[0], members[1:]
            words = [dict(w.split("=", 1) for w in jobs[i][2].split() if "=" in w) for i in members]
            differ = sorted({k for w in words for k in w if len({v.get(k) for v in words}) > 1})
            print(f"colq_sweep: note: job(s) {', '.join(f'#{i}' for i in rest)} are the same point as job #{first} "
                  f"({self.points[first].label}): {', '.join(differ) or 'nothing'} cannot change it, so it is built and "
                  "evaluated once and the others are skipped", file=sys.stderr)  # fmt: skip

    def _check_hub_inputs(self, arguments: list[str]) -> None:
        """Every checkpoint, calibration set and dataset the jobs read from the Hub is cached (offline) or
        reachable (online, within seconds): else one line per missing item and exit 2, nothing launched."""
        if not self.validate:
            return
        from colq_sweep.hub.prefetch import check_lines

        lines = check_lines(self.points, arguments)
        if lines:
            for line in lines:
                print(line, file=sys.stderr)
            print(f"colq_sweep: {len(lines)} input(s) missing [nothing was launched]", file=sys.stderr)
            sys.exit(2)

    def _jobs_run_here(self) -> bool:
        """False when a scheduler runs the jobs on other machines (their device is checked there, not here)."""
        target = str(self.config.hydra.launcher.get("_target_", ""))
        return "submitit" not in target and "Slurm" not in target

    def _warn_sqlite_on_cluster(self) -> None:
        """Jobs on other hosts writing one sqlite file: say once why that is fragile and what to use instead."""
        from colq_sweep.track.store import resolve_tracking_uri

        if "Slurm" not in str(self.config.hydra.launcher.get("_target_", "")):
            return
        uri = resolve_tracking_uri(str(self.config.outputs_dir), self.config.get("tracking_uri"))
        if uri.startswith("sqlite:"):
            print(f"colq_sweep: note: Slurm jobs on several hosts would share the sqlite store {uri[len('sqlite:///'):]}: "
                  "sqlite's file locking is unreliable on network filesystems (NFS, Lustre) and writes can fail or be lost; "
                  "for multi-host sweeps run a server, e.g. `mlflow server --backend-store-uri sqlite:///$HOME/mlflow.db "
                  "--artifacts-destination $HOME/mlartifacts --serve-artifacts --host 0.0.0.0 --port 5000`, and pass "
                  "tracking_uri=http://<that host>:5000", file=sys.stderr)  # fmt: skip

    def _pin_sweep_dir(self) -> Path:
        """One literal sweep directory for every job, wherever it runs: `${colq_stamp:}` would re-evaluate in a
        job process (a Slurm node), scattering its outputs and losing its parent run."""
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        with open_dict(self.config):
            self.config.hydra.sweep.dir = str(sweep_dir)
        return sweep_dir

    def _parsed(self, arguments: list[str]) -> list:
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        return parser.parse_overrides(self._parse_config() + list(arguments))

    def _open_parent(self, sweep_dir: Path, n_jobs: int) -> None:
        """The sweep directory, its multirun.yaml and the MLflow parent run (exit 2 if the store is unreachable)."""
        from colq_sweep.track.multirun import open_sweep
        from colq_sweep.track.store import TrackingUnavailable

        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        try:
            open_sweep(self.config, n_jobs)
        except TrackingUnavailable as exc:
            print(f"colq_sweep: {exc} [nothing was launched]", file=sys.stderr)
            sys.exit(2)

    def _launch(self, batch: list[list[str]], initial_job_idx: int, notes: dict[int, str]) -> list:
        """Launch one batch; a job that raised is noted (job number -> why) for the summary, not re-raised."""
        assert self.launcher is not None
        results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
        for i, r in enumerate(results):
            if r.status.name == "FAILED":
                log.error("job failed: %s: %s", " ".join(r.overrides), r._return_value)
                notes[initial_job_idx + i] = str(r._return_value)
        return results

    def _refuse_search_keys(self, sweeper: str = "colq") -> None:
        """`search.*` is read only by the tolerance search: another sweep given one says so instead of ignoring it."""
        assert self.config is not None
        given = [o for o in self.config.hydra.overrides.task if o.lstrip("+~").startswith("search.")]
        if given:
            fix = "add hydra/sweeper=colq-tolerance" if sweeper == "colq" else f"hydra/sweeper={sweeper} does not read it"
            print(f"colq_sweep: config error: {given[0]}: search.* is read only by a tolerance search; {fix} (or drop "
                  "it) [nothing was launched]", file=sys.stderr)  # fmt: skip
            sys.exit(2)

    def sweep(self, arguments: list[str]) -> Any:
        from colq_sweep.track.multirun import abort_sweep, close_sweep

        sweep_dir = self._pin_sweep_dir()
        self._refuse_search_keys()
        self.overrides = self.split_arguments(self._parsed(arguments), self.max_batch_size)
        jobs = self._jobs([job for batch in self.overrides for job in batch])  # exits 2 before anything is written
        self._check_hub_inputs(list(arguments))
        self._note_same_points(jobs)
        self._warn_sqlite_on_cluster()
        self._open_parent(sweep_dir, len(jobs))
        returns = []
        notes: dict[int, str] = {}  # job number -> why it failed, as its launcher saw it (e.g. its Slurm state)
        initial_job_idx = 0
        try:
            while not self.is_done():
                batch = self.get_job_batch()
                returns.append(self._launch(batch, initial_job_idx, notes))
                initial_job_idx += len(batch)
        except BaseException as exc:  # the launcher itself gave up (bad pool settings, Ctrl-C, ...)
            abort_sweep(self.config, f"{type(exc).__name__}: {exc}")
            raise
        if close_sweep(self.config, jobs, notes):
            sys.exit(1)
        return returns
