"""The search sweepers: `hydra/sweeper=colq-tolerance` (colq_sweep/search/tolerance.py) and `hydra/sweeper=colq-optuna`
(colq_sweep/search/study.py). Both keep what the grid sweeper guarantees: every candidate's config (for Optuna:
every choice and both ends of every range) validated before the first job runs, the Hub inputs checked, one MLflow
parent run with the jobs as children, the end-of-sweep summary and exit code (1 when a point failed), any launcher.
Jobs are launched in batches through the configured launcher (local, gpu-pool, Slurm), each batch after the
previous one's results are read: a search decides what to run next from what it has seen.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import filter_overrides

from hydra_plugins.colq_sweep_plugins.sweeper import ColqSweeper


def _refuse(err: Exception) -> None:
    print(f"colq_sweep: {err} [nothing was launched]", file=sys.stderr)
    sys.exit(2)


class _SearchSweeper(ColqSweeper):
    def _finish(self, jobs: list, notes: dict[int, str], record: dict, answer: str, table: str, params: dict,
                child_tags: dict) -> None:  # fmt: skip
        from colq_sweep.track.multirun import close_sweep, record_search

        record_search(self.config, record, answer, params, child_tags)
        failed = close_sweep(self.config, jobs, notes)  # prints the jobs' summary
        print(f"\ncolq_sweep {record['kind']} search\n{table}\n{answer}", file=sys.stderr)
        if failed:
            sys.exit(1)


class ToleranceSweeper(_SearchSweeper):
    """The cheapest candidate within `search.max_loss_pct`: candidates in cost order, stop at the first that passes."""

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.core.override_parser.types import IntervalSweep

        from colq_sweep.config import ConfigError
        from colq_sweep.search.tolerance import SearchSpec

        assert self.config is not None
        sweep_dir = self._pin_sweep_dir()
        try:
            spec = SearchSpec.from_config(dict(self.config.get("search") or {}))
            parsed = self._parsed(arguments)
            for o in parsed:
                if o.is_sweep_override() and o.key_or_group.startswith("search."):
                    raise ConfigError(o.get_key_element(), str(o.input_line).split("=", 1)[-1],
                                      "a search setting takes one value: run one search per tolerance")  # fmt: skip
                if isinstance(o.value(), IntervalSweep):
                    raise ConfigError(o.get_key_element(), str(o.input_line).split("=", 1)[-1],
                                      "a tolerance search tries a list of candidates (a,b,c or choice(a,b,c)); for "
                                      "ranges use hydra/sweeper=colq-optuna")  # fmt: skip
            grid = [job for batch in self.split_arguments(parsed, None) for job in batch]
        except ConfigError as err:
            _refuse(err)
        self.validate = True
        self._jobs(grid, what="candidate")  # exits 2 before anything is written
        self._check_hub_inputs(list(arguments))
        self._warn_sqlite_on_cluster()
        originals = self._originals_of_models(grid)  # empty unless the index settings vary
        try:  # the store and the checkpoints' headers, before anything is written: an error is one line, exit 2
            from colq_sweep.search.cost import checkpoint_shapes
            from colq_sweep.search.runs import original_vectors
            from colq_sweep.track.multirun import sweep_tracker

            self.tracker = sweep_tracker(self.config)
            shapes = {p.model.name: checkpoint_shapes(p) for p in self.points}
            first = [o for o in originals.values() if original_vectors(self.tracker, o[1]) is None]
        except Exception as exc:  # noqa: BLE001 - an unreachable store or Hub: one line
            _refuse(f"the candidates' costs cannot be predicted: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        self._open_parent(sweep_dir, len(grid) + len(first))
        notes: dict[int, str] = {}
        from colq_sweep.track.multirun import abort_sweep

        try:
            jobs = self._run_originals([o[0] for o in first], notes)
            cands, order = self._ordered(grid, spec, len(first), shapes)  # after the originals: index sizes known
        except BaseException as exc:
            abort_sweep(self.config, f"{type(exc).__name__}: {exc}")
            raise
        jobs += self._run(grid, cands, order, spec, notes)
        from colq_sweep import contract as R
        from colq_sweep.search.tolerance import answer, as_record, decide, table

        chosen = decide(cands, spec)
        tags = {c.run_id: {R.SEARCH_VERDICT: c.verdict[:4000], R.SEARCH_CHOSEN: str(c is chosen).lower()}
                for c in cands if c.run_id}  # fmt: skip
        params = {"search.max_loss_pct": spec.max_loss_pct, "search.criterion": spec.criterion, "search.cost": spec.cost,
                  "search.candidates": len(cands)}  # fmt: skip
        self._finish(jobs, notes, as_record(cands, spec), answer(cands, spec), table(cands, spec), params, tags)

    def _originals_of_models(self, grid: list[list[str]]) -> dict[str, tuple[list[str], Any]]:
        """model name -> (the overrides of its original, that point), checked (exit 2) when the candidates differ in
        index settings: the index costs scale the original's stored vectors, so it may have to be evaluated first."""
        if not self._index_varies():
            return {}
        out: dict[str, tuple[list[str], Any]] = {}
        for g, p in zip(grid, self.points, strict=True):
            if p.model.name not in out:
                out[p.model.name] = self._original_of(g)
        return out

    def _index_varies(self) -> bool:
        return len({p.eval.index for p in self.points}) > 1

    def _ordered(self, grid: list[list[str]], spec, offset: int, shapes: dict):
        """The candidates in cost order (job numbers from `offset`) and the grid index of each; the points (and the
        same-point notes) follow that order, so every number said is a job number."""
        from colq_sweep.search.cost import calibration_tokens, predict
        from colq_sweep.search.runs import original_vectors
        from colq_sweep.search.tolerance import Candidate

        vectors: dict[str, float | None] = {}
        costs = []
        for p in self.points:
            if p.model.name not in vectors:
                vectors[p.model.name] = original_vectors(self.tracker, p)
            headers, dim = shapes[p.model.name]
            costs.append(predict(p.quant, headers, p.eval.index, vectors[p.model.name], dim,
                                 calib_tokens=calibration_tokens(p)))  # fmt: skip
        if self._index_varies() and None in vectors.values():
            unknown = ", ".join(sorted(m for m, v in vectors.items() if v is None))
            print(f"colq_sweep: note: the index size of {unknown} is unknown (its original did not finish): those "
                  "candidates are ordered by their weights alone", file=sys.stderr)  # fmt: skip
        order = sorted(range(len(grid)), key=lambda i: (costs[i].sort_key(spec.cost), i))
        shown = _distinguishing(grid)
        cands = [Candidate(num=offset + pos, overrides=shown[i], model=self.points[i].model.name,
                           label=self.points[i].label, cost=costs[i]) for pos, i in enumerate(order)]  # fmt: skip
        self.points = [self.points[i] for i in order]
        self._note_same_points([(c.num, Path(), " ".join(filter_overrides(grid[i]))) for c, i in zip(cands, order, strict=True)])
        return cands, order

    def _original_of(self, overrides: list[str]) -> tuple[list[str], Any]:
        """A candidate's overrides less what quantizes or compresses: its model's original, uncompressed index."""
        from colq_sweep.config import ConfigError

        keep = [o for o in overrides if not o.lstrip("+~").startswith(("quant", "index."))] + ["quant=none"]
        try:
            return keep, self._check(self._compose(keep, 0)[0])
        except ConfigError as err:
            _refuse(f"the original (to measure the index size the costs need) does not compose from {' '.join(keep)}: "
                    f"{err}; or use search.cost=quant_time")  # fmt: skip

    def _run_originals(self, first: list[list[str]], notes: dict[int, str]) -> list[tuple[int, Path, str]]:
        from colq_sweep.track.multirun import abort_sweep

        if not first:
            return []
        try:
            self._launch(first, 0, notes)
        except BaseException as exc:
            abort_sweep(self.config, f"{type(exc).__name__}: {exc}")
            raise
        return [(i, self._compose(o, i)[1], " ".join(filter_overrides(o))) for i, o in enumerate(first)]

    def _run(self, grid, cands, order, spec, notes: dict[int, str]) -> list[tuple[int, Path, str]]:
        """Launch the candidates in order, `max_batch_size` (default 1) at a time, until one passes; return the
        launched jobs (number, directory, overrides)."""
        from colq_sweep.search.runs import interval_of
        from colq_sweep.track.multirun import abort_sweep, job_status

        jobs: list[tuple[int, Path, str]] = []
        step = self.max_batch_size or 1
        try:
            for at in range(0, len(cands), step):
                batch = cands[at : at + step]
                overrides = [grid[order[at + k]] for k in range(len(batch))]
                self._launch(overrides, batch[0].num, notes)
                for c, o in zip(batch, overrides, strict=False):
                    job_dir = self._compose(o, c.num)[1]
                    jobs.append((c.num, job_dir, c.overrides))
                    status = job_status(job_dir, c.label, notes.get(c.num))
                    ok = status["status"] in ("FINISHED", "SKIPPED")
                    c.record(status, interval_of(self.tracker, status.get("run_id")) if ok else None)
                if any(c.passes(spec) for c in batch):
                    break
        except BaseException as exc:
            abort_sweep(self.config, f"{type(exc).__name__}: {exc}")
            raise
        return jobs


def _distinguishing(grid: list[list[str]]) -> list[str]:
    """Each job's overrides less those every job shares (`quant.scheme=W8A16`, not the whole command line)."""
    from colq_sweep.track.multirun import distinguishing

    lists = [" ".join(filter_overrides(g)) for g in grid]
    return [d or full for d, full in zip(distinguishing(lists), lists, strict=True)]


class OptunaSweeper(_SearchSweeper):
    """Trials sampled by Optuna from choice()/interval()/range() overrides; the study stored beside the MLflow store."""

    def __init__(self, n_trials: int = 20, n_jobs: int = 1, objectives: Any = ("ndcg5",), sampler: str = "auto",
                 seed: int = 42, storage: str | None = None, study_name: str | None = None,
                 params: dict[str, str] | None = None, validate: bool = True, max_batch_size: int | None = None):  # fmt: skip
        super().__init__(max_batch_size=max_batch_size, params=params, validate=validate)
        self.settings = dict(n_trials=n_trials, n_jobs=n_jobs, objectives=objectives, sampler=sampler, seed=seed,
                             storage=storage, study_name=study_name)  # fmt: skip

    def sweep(self, arguments: list[str]) -> Any:
        from colq_sweep.config import ConfigError
        from colq_sweep.search.space import parse_space
        from colq_sweep.search.study import StudySettings, counted, open_study, recover_interrupted

        assert self.config is not None
        sweep_dir = self._pin_sweep_dir()
        self._refuse_search_keys("colq-optuna")
        try:
            settings = StudySettings.from_config(self.settings)
            space = parse_space(self._parsed(arguments))
        except ConfigError as err:
            _refuse(err)
        if not space.dims:
            _refuse("config error: nothing to search: give at least one choice(...), a,b list, interval(a,b) or range(a,b)")
        corners, full = space.corners()
        self.validate = True
        self._jobs(corners, what="search corner")  # every choice and both ends of every range; exits 2
        self._check_hub_inputs(list(arguments))
        self._warn_sqlite_on_cluster()
        if not full:
            print(f"colq_sweep: note: {len(corners)} corner configurations checked one value at a time (the whole "
                  "product is too large); a sampled combination the config refuses fails its trial without running", file=sys.stderr)  # fmt: skip
        storage = settings.storage or f"sqlite:///{Path(str(self.config.outputs_dir)).resolve() / 'optuna.db'}"
        name = settings.name_for(str(self.config.name), space.describe(), list(space.fixed))
        try:  # before the parent run: a storage that cannot be opened, or a study made for something else, is exit 2
            study = open_study(settings, storage, name, space.describe())
        except ConfigError as err:
            _refuse(err)
        requeued = recover_interrupted(study)
        if requeued:
            print(f"colq_sweep: study {name}: trial(s) {', '.join(f'#{n}' for n in requeued)} were left running by an "
                  "interrupted sweep: marked FAIL and queued again", file=sys.stderr)  # fmt: skip
        done = counted(study)
        if done:
            print(f"colq_sweep: study {name} ({storage}): {done} trial(s) already done, "
                  f"{max(settings.n_trials - done, 0)} to run", file=sys.stderr)  # fmt: skip
        self._open_parent(sweep_dir, max(settings.n_trials - done, 0))
        notes: dict[int, str] = {}
        jobs = self._trials(study, settings, space, name, notes)
        from colq_sweep import contract as R
        from colq_sweep.search.study import INTERRUPTED, RUN_ID, answer, as_record, table

        record = as_record(study, settings, space.describe(), storage)
        record["answer"] = answer(record)
        best_runs = {t["run_id"] for t in record["trials"] if t["best"] and t["run_id"]}
        trials: dict[str, list[int]] = {}
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get(RUN_ID) and not t.user_attrs.get(INTERRUPTED):
                trials.setdefault(t.user_attrs[RUN_ID], []).append(t.number)
        tags = {rid: {R.SEARCH_BEST: str(rid in best_runs).lower(), R.SEARCH_TRIALS: ",".join(map(str, nums))}
                for rid, nums in trials.items()}  # fmt: skip
        params = {"search.space": space.describe()[:6000], "search.study": name, "search.storage": storage,
                  "search.objectives": ",".join(settings.objectives), "search.sampler": settings.sampler_name,
                  "search.n_trials": settings.n_trials}  # fmt: skip
        self._finish(jobs, notes, record, record["answer"], table(record), params, tags)

    def _trials(self, study, settings, space, name: str, notes: dict[int, str]) -> list[tuple[int, Path, str]]:
        """Ask, launch and tell, `n_jobs` trials a round, until the study has n_trials (or its space is exhausted)."""
        from optuna.trial import TrialState

        from colq_sweep.search.study import (
            MAX_REPEATS,
            OWNER,
            SAME_AS,
            config_key,
            counted,
            owner,
            tried_configs,
        )
        from colq_sweep.track.multirun import abort_sweep

        dists = {d.name: d.distribution() for d in space.dims}
        jobs: list[tuple[int, Path, str]] = []
        me, repeats = owner(), 0
        try:
            while counted(study) < settings.n_trials:
                tried = tried_configs(study)
                if space.size is not None and len(tried) >= space.size:
                    print(f"colq_sweep: study {name}: all {space.size} configuration(s) of the space have been tried "
                          f"({counted(study)} trial(s) counted, n_trials={settings.n_trials})", file=sys.stderr)  # fmt: skip
                    break
                if repeats >= MAX_REPEATS:
                    print(f"colq_sweep: study {name}: the sampler repeated tried configurations {MAX_REPEATS} times "
                          "in a row: stopping", file=sys.stderr)  # fmt: skip
                    break
                batch, twins, in_batch = [], [], {}
                for _ in range(min(settings.n_jobs, settings.n_trials - counted(study))):
                    trial = study.ask(dists)
                    trial.set_user_attr(OWNER, me)
                    key = config_key(trial.params)
                    if key in tried:  # told the earlier outcome: the sampler learns, nothing runs, not counted
                        trial.set_user_attr(SAME_AS, tried[key][0])
                        values = tried[key][1]
                        study.tell(trial, values) if values else study.tell(trial, state=TrialState.FAIL)
                        repeats += 1
                        continue
                    if key in in_batch:  # sampled twice in one round: told the first one's outcome after it
                        trial.set_user_attr(SAME_AS, in_batch[key].number)
                        twins.append((trial, in_batch[key]))
                        continue
                    repeats = 0
                    in_batch[key] = trial
                    prepared = self._prepare(trial, space, len(jobs) + len(batch))
                    if prepared is not None:
                        batch.append(prepared)
                self._round(study, batch, settings, notes, jobs)
                for twin, first in twins:
                    values = study.get_trials(deepcopy=False)[first.number].values
                    study.tell(twin, values) if values else study.tell(twin, state=TrialState.FAIL)
        except BaseException as exc:
            abort_sweep(self.config, f"{type(exc).__name__}: {exc}")
            raise
        return jobs

    def _prepare(self, trial, space, num: int):
        """A trial's overrides validated (a refusal is a FAIL trial that runs nothing): (trial, overrides, job number,
        job directory, shown)."""
        from optuna.trial import TrialState

        from colq_sweep.config import ConfigError
        from colq_sweep.search.study import ERROR, LABEL, OVERRIDES

        overrides = space.overrides(trial.params)
        shown = " ".join(overrides[len(space.fixed):])
        trial.set_user_attr(OVERRIDES, shown)
        cfg, job_dir = self._compose(overrides, num)
        try:
            point = self._check(cfg)
        except ConfigError as err:
            trial.set_user_attr(ERROR, str(err)[:1000])
            trial.study.tell(trial, state=TrialState.FAIL)
            print(f"colq_sweep: trial #{trial.number} ({shown}): {err}: not run (FAIL)", file=sys.stderr)
            return None
        trial.set_user_attr(LABEL, f"{point.model.name} {point.label}")
        return trial, overrides, num, job_dir, shown

    def _round(self, study, batch: list, settings, notes: dict[int, str], jobs: list) -> None:
        """Launch one round of trials and tell each its objective values (FAIL with the error when there are none)."""
        from optuna.trial import TrialState

        from colq_sweep.search.study import ERROR, RUN_ID, objective_values
        from colq_sweep.track.multirun import job_status

        if not batch:
            return
        self._launch([b[1] for b in batch], batch[0][2], notes)
        for trial, _, n, job_dir, shown in batch:
            jobs.append((n, job_dir, f"trial #{trial.number}: {shown}"))
            status = job_status(job_dir, shown, notes.get(n))
            if status.get("run_id"):
                trial.set_user_attr(RUN_ID, status["run_id"])
            ok = status["status"] in ("FINISHED", "SKIPPED")
            values = objective_values(status.get("metrics") or {}, settings.objectives) if ok else None
            if values is None:
                trial.set_user_attr(ERROR, str(status.get("error") or "no objective values")[:1000])
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, values)
