"""The Optuna search (`hydra/sweeper=colq-optuna`): trials sampled from a search space (search/space.py), each
one sweep point, the objectives read from what its job reported.

- Objectives: `ndcg5` (the average NDCG@5 over every evaluated entry, maximised) and `bytes` (the deployed
  footprint: the checkpoint on disk + the index, minimised). One objective: TPE; two: NSGA-II (`sampler: auto`).
- The study lives in a database beside the MLflow store (`sqlite:///<outputs_dir>/optuna.db` unless
  `hydra.sweeper.storage` says otherwise), named after the experiment and a digest of what defines the search
  (space, fixed overrides, objectives, sampler, seed), so rerunning the same command resumes it: finished trials
  count towards `n_trials` and are not run again; a trial left RUNNING by a killed sweep is marked FAIL
  (`colq_interrupted`) and its parameters are queued to run first. `n_trials` is the study's total, so
  `n_trials=12` after a finished 6-trial search runs 6 more.
- A point that failed is a FAIL trial with its error (`colq_error`), never a zero; a trial whose sampled
  combination the config refuses (a value inside a range can break a rule its ends pass, e.g. nsamples not a
  multiple of batch_size) is a FAIL trial that launched nothing.
- A sampled configuration that an earlier trial finished is not run again: the trial is told that trial's values
  (`colq_same_as`), so the sampler learns, and does not count; one that failed in this sweep, or that the config
  refused, is told FAIL the same way (a rerun of the command retries what failed in an earlier sweep). A finite
  space (choices, integer ranges) ends the search once every configuration has been tried, with fewer trials than
  n_trials if it has fewer configurations. A resumed study's sampler is seeded with seed + its trial count, so it
  does not replay the samples it made before.
- A study of the same name made for other objectives or another space is refused (one line, exit 2); so is a
  storage that cannot be opened.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from colq_sweep import contract as R
from colq_sweep.config.checks import ConfigError, pos_int

OBJECTIVES = {"ndcg5": "maximize", "bytes": "minimize"}
SAMPLERS = ("auto", "tpe", "nsga2", "random")
INTERRUPTED, ERROR, OVERRIDES, RUN_ID, LABEL = "colq_interrupted", "colq_error", "colq_overrides", "colq_run_id", "colq_label"
OWNER, SPACE = "colq_owner", "colq_space"  # a trial's process; the space a study was made for
SAME_AS = "colq_same_as"  # a sampled configuration already finished: told that trial's values, not run, not counted
MAX_REPEATS = 100  # samples in a row that only repeat finished configurations: the sampler has nothing new to try


@dataclass(frozen=True)
class StudySettings:
    n_trials: int = 20
    n_jobs: int = 1
    objectives: tuple[str, ...] = ("ndcg5",)
    sampler: str = "auto"
    seed: int = 42
    storage: str | None = None
    study_name: str | None = None

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> StudySettings:
        objectives = d.get("objectives") or ["ndcg5"]
        objectives = [objectives] if isinstance(objectives, str) else list(objectives)
        s = cls(n_trials=d.get("n_trials", 20), n_jobs=d.get("n_jobs", 1), objectives=tuple(objectives),
                sampler=d.get("sampler", "auto"), seed=d.get("seed", 42), storage=d.get("storage"),
                study_name=d.get("study_name"))  # fmt: skip
        pos_int("hydra.sweeper.n_trials", s.n_trials)
        pos_int("hydra.sweeper.n_jobs", s.n_jobs)
        bad = [o for o in s.objectives if o not in OBJECTIVES]
        if bad or len(set(s.objectives)) != len(s.objectives) or not 1 <= len(s.objectives) <= 2:
            raise ConfigError("hydra.sweeper.objectives", list(s.objectives), "[ndcg5] (NDCG@5 up) or [ndcg5,bytes] "
                              "(NDCG@5 up, checkpoint + index bytes down)")  # fmt: skip
        if s.sampler not in SAMPLERS:
            raise ConfigError("hydra.sweeper.sampler", s.sampler, f"allowed: {', '.join(SAMPLERS)}")
        if isinstance(s.seed, bool) or not isinstance(s.seed, int):
            raise ConfigError("hydra.sweeper.seed", s.seed, "must be an integer")
        return s

    @property
    def sampler_name(self) -> str:
        return ("tpe" if len(self.objectives) == 1 else "nsga2") if self.sampler == "auto" else self.sampler

    def make_sampler(self, offset: int = 0):
        """The sampler, seeded with `seed` + `offset` (the trials a resumed study already has: the same seed would
        replay the samples it already made)."""
        import optuna

        return {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "random": optuna.samplers.RandomSampler}[self.sampler_name](seed=self.seed + offset)  # fmt: skip

    def name_for(self, experiment: str, space_text: str, fixed: list[str]) -> str:
        if self.study_name:
            return self.study_name
        what = json.dumps([space_text, sorted(fixed), list(self.objectives), self.sampler_name, self.seed])
        return f"{experiment}-{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def open_study(settings: StudySettings, storage: str, name: str, space_text: str):
    """The study (created, or loaded to resume), its sampler seeded past the trials it has. A ConfigError when the
    storage cannot be opened, or when a study of that name was made for other objectives or another space."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [OBJECTIVES[o] for o in settings.objectives]
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, directions=directions)
    except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, an unwritable file: one line
        raise ConfigError("hydra.sweeper.storage", storage, f"the Optuna storage cannot be opened: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}") from None  # fmt: skip
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise ConfigError("hydra.sweeper.objectives", list(settings.objectives), f"study {name} in {storage} was made "
                          f"for {len(stored)} objective(s) ({', '.join(stored)}): use another hydra.sweeper.study_name")  # fmt: skip
    made_for = study.user_attrs.get(SPACE)
    if made_for is None:
        study.set_user_attr(SPACE, space_text)
    elif made_for != space_text:
        raise ConfigError("hydra.sweeper.study_name", name, f"that study searches another space ({made_for}): use "
                          "another hydra.sweeper.study_name (or null: named after its space)")  # fmt: skip
    study.sampler = settings.make_sampler(offset=len(study.trials))
    return study


def owner() -> dict:
    """This process, as a trial records its owner (a resumed study leaves a live owner's trials alone)."""
    import os
    import socket

    from colq_sweep.runtime import process_start

    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}


def recover_interrupted(study) -> list[int]:
    """Trials left RUNNING by a sweep that is gone (killed): FAIL (`colq_interrupted`), their parameters queued
    again. A trial whose owner still runs on this host (another sweep of the same study) is left alone."""
    import socket

    import optuna
    from optuna.trial import TrialState

    from colq_sweep.runtime import process_alive

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        o = t.user_attrs.get(OWNER) or {}
        if o.get("host") == socket.gethostname() and process_alive(int(o.get("pid") or 0), o.get("start")):
            continue
        optuna.trial.Trial(study, t._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"colq_requeued_from": t.number})
        out.append(t.number)
    return out


def counted(study) -> int:
    """Trials that count towards n_trials: finished ones and real failures (not the interrupted)."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SAME_AS) is None and (
               t.state == TrialState.COMPLETE or t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)))  # fmt: skip


def tried_configs(study) -> dict[tuple, tuple[int, list[float] | None]]:
    """Each configuration not to run again (its sorted parameters) -> (the trial that ran it, its values, None for
    a failure): finished ones, ones the config refused, and ones that failed in this sweep (a rerun retries those)."""
    from optuna.trial import TrialState

    me = owner()
    out: dict[tuple, tuple[int, list[float] | None]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.user_attrs.get(SAME_AS) is not None or t.user_attrs.get(INTERRUPTED):
            continue
        if t.state == TrialState.COMPLETE:
            out.setdefault(config_key(t.params), (t.number, list(t.values)))
        elif str(t.user_attrs.get(ERROR, "")).startswith("config error") or t.user_attrs.get(OWNER) == me:
            out.setdefault(config_key(t.params), (t.number, None))
    return out


def config_key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def objective_values(metrics: dict[str, float], objectives: tuple[str, ...]) -> list[float] | None:
    """The objectives from a point's metrics; None when one is missing or not finite (the trial fails)."""
    out = []
    metrics = R.tracked(metrics)  # a status file written before the contract's names too
    for o in objectives:
        if o == "ndcg5":
            v = metrics.get(R.AVG5_ALL)
        else:
            from colq_sweep.search.cost import built_bytes

            weights = built_bytes(metrics)
            v = None if weights is None else float(weights) + float(metrics.get(R.INDEX_TOTAL_BYTES, 0.0))
        if v is None or not math.isfinite(float(v)):
            return None
        out.append(float(v))
    return out


def best_numbers(study) -> list[int]:
    """The best trial (one objective) or the Pareto set (two), by trial number, each configuration once (the trial
    that ran it, not its repeats); [] before any trial finished."""
    try:
        best = study.best_trials
    except ValueError:
        return []
    return sorted({t.user_attrs.get(SAME_AS, t.number) for t in best})


def format_value(objective: str, v: float) -> str:
    return f"{v:.5f}" if objective == "ndcg5" else f"{v / 1e6:.4g} MB"


def as_record(study, settings: StudySettings, space_text: str, storage: str) -> dict:
    """The study as the parent run's `search/search.json` (what the report reads)."""
    from optuna.trial import TrialState

    best = set(best_numbers(study))
    trials = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or t.user_attrs.get(SAME_AS) is not None:
            continue
        trials.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                       "values": list(t.values) if t.values else None, "best": t.number in best,
                       "run_id": t.user_attrs.get(RUN_ID), "label": t.user_attrs.get(LABEL),
                       "overrides": t.user_attrs.get(OVERRIDES), "error": t.user_attrs.get(ERROR),
                       "interrupted": bool(t.user_attrs.get(INTERRUPTED))})  # fmt: skip
    return {"kind": "optuna", "study": study.study_name, "storage": storage, "space": space_text,
            "objectives": list(settings.objectives), "sampler": settings.sampler_name, "seed": settings.seed,
            "n_trials": settings.n_trials, "best": sorted(best), "trials": trials}  # fmt: skip


def table(record: dict) -> str:
    """The study's trials: number, state, parameters, objective values, best / Pareto mark."""
    objs = record["objectives"]
    mark = "best" if len(objs) == 1 else "pareto"
    head = ("trial", "state", "parameters", *objs, mark)
    rows = [head]
    for t in record["trials"]:
        if t["interrupted"]:
            continue
        vals = [format_value(o, v) for o, v in zip(objs, t["values"], strict=False)] if t["values"] else ["-"] * len(objs)
        params = " ".join(f"{k}={v}" for k, v in t["params"].items())
        state = t["state"] + (f" ({t['error']})"[:70] if t["error"] else "")
        rows.append((f"#{t['number']}", state, params[:70], *vals, "*" if t["best"] else ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*rows[0]), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in rows[1:])])


def answer(record: dict) -> str:
    objs = record["objectives"]
    best = [t for t in record["trials"] if t["best"]]
    if not best:
        return "No trial finished: no best configuration."
    def one(t: dict) -> str:
        vals = ", ".join(f"{o} {format_value(o, v)}" for o, v in zip(objs, t["values"], strict=False))
        return f"#{t['number']} {t['label'] or ''} ({t['overrides']}: {vals})"
    if len(objs) == 1:
        return f"Best trial: {one(best[0])}."
    return f"Pareto set ({len(best)} trial(s), NDCG@5 up, bytes down): " + "; ".join(one(t) for t in best) + "."
