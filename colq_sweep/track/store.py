"""MLflow at the edge: the store, one parent run per multirun, one child run per sweep point.

The embedded default is a sqlite file under outputs/ (no server). Several job processes writing one sqlite
store race on schema creation and on writes ("duplicate column", "database is locked"), so every client call
on a sqlite store is serialised by an advisory file lock next to the database; a remote server
(`MLFLOW_TRACKING_URI=http://...`) needs no lock.

A server that stops answering is `TrackingUnavailable`, raised within a bounded time: MLflow's own HTTP retry
budget (about 3.5 minutes of retries by default) is cut to `HTTP_DEFAULTS` unless the environment sets it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from colq_sweep import contract as R
from colq_sweep.fsio import file_lock
from colq_sweep.launch.slurm import current_job_tags, run_job_states
from colq_sweep.runtime import process_alive, process_start

# MLflow's HTTP client settings for our processes (the environment wins): 2 retries 1 s and 2 s apart, 20 s per
# request. A server that is gone (connection refused) is reported after ~3 s, one that hangs after ~65 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # fmt: skip  (its "View run at" lines on stdout)
for _k, _v in HTTP_DEFAULTS.items():
    os.environ.setdefault(_k, _v)


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer (refused, timed out, or failing with 5xx after MLflow's retries)."""

    def __init__(self, uri: str, reason: str):
        self.uri = uri
        super().__init__(f"the tracking server {uri} is unreachable ({reason})")


def _unreachable(exc: BaseException) -> str | None:
    """Why `exc` means the server is not answering, or None when it is another failure."""
    import requests

    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
            return type(e).__name__
        e = e.__cause__ or e.__context__
    text = str(exc)
    for marker in ("Max retries exceeded", "Connection refused", "Read timed out", "too many 5"):
        if marker in text:
            return marker.lower()
    return None


@contextlib.contextmanager
def _translated(uri: str):
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised as it was unless the server is unreachable
        reason = _unreachable(exc) if uri.startswith(("http://", "https://")) else None
        if reason is None:
            raise
        raise TrackingUnavailable(uri, reason) from exc


def resolve_tracking_uri(outputs_dir: str | os.PathLike, explicit: str | None = None) -> str:
    """Explicit config value > MLFLOW_TRACKING_URI > sqlite:///<outputs_dir>/mlflow.db. A sqlite path is made
    absolute (MLflow's relative form `sqlite:///rel.db` would otherwise mean a different file in every job's
    working directory)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path(outputs_dir).resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    return uri


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store live next to it (outputs/mlartifacts), not in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return None


def store_lock(tracking_uri: str):
    """The cross-process lock of a sqlite store (a no-op context for a server): hold it around every write."""
    if tracking_uri.startswith("sqlite:///"):
        return file_lock(Path(tracking_uri[len("sqlite:///") :]).with_suffix(".lock"))
    return contextlib.nullcontext()


class Tracker:
    """A thin, process-safe wrapper over MlflowClient for one experiment."""

    def __init__(self, tracking_uri: str, experiment: str):
        self.uri = tracking_uri
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        with self.locked():
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = self.client.create_experiment(experiment, artifact_location=_exp_artifacts(tracking_uri, experiment))
            else:
                exp_id = exp.experiment_id
        self.experiment_id = exp_id
        self.experiment = experiment

    @contextlib.contextmanager
    def locked(self):
        """The store's lock (sqlite) around a client call; a server that does not answer is TrackingUnavailable."""
        with store_lock(self.uri), _translated(self.uri):
            yield

    # ------------------------------------------------------------------ runs
    def create_run(self, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
        tags = dict(tags)
        tags.setdefault(R.HOST, socket.gethostname())
        tags.setdefault(R.PID, str(os.getpid()))
        tags.setdefault(R.PID_START, process_start(os.getpid()) or "")
        for k, v in current_job_tags().items():  # inside a Slurm job: the scheduler can tell when it ended
            tags.setdefault(k, v)
        if parent_id:
            tags[R.PARENT] = parent_id
        with self.locked():
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def log(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        step: int = 0,
    ) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        p = [Param(k, _param_str(v)) for k, v in (params or {}).items()]
        m = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _is_number(v)]
        t = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        with self.locked():
            for i in range(0, max(len(p), len(m), len(t), 1), 100):  # MLflow caps a batch at 100 params
                self.client.log_batch(run_id, metrics=m[i : i + 100], params=p[i : i + 100], tags=t[i : i + 100])

    def log_artifact(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        with self.locked():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        with self.locked():
            self.client.log_artifacts(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        with self.locked():
            self.client.set_terminated(run_id, status=status)

    def download(self, run_id: str, artifact: str, dst: str | os.PathLike) -> Path:
        with self.locked():
            return Path(self.client.download_artifacts(run_id, artifact, str(dst)))

    def find(self, filter_string: str, status: str | None = "FINISHED", all_experiments: bool = False) -> list:
        """Runs matching `filter_string` (and `status`, unless None), newest first."""
        if status:
            status_filter = f"attributes.status = '{status}'"
            filter_string = f"{filter_string} and {status_filter}" if filter_string else status_filter
        with self.locked():
            if all_experiments:
                exp_ids = [e.experiment_id for e in self.client.search_experiments()]
            else:
                exp_ids = [self.experiment_id]
            return list(
                self.client.search_runs(exp_ids, filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=1000)
            )

    def find_parent(self, sweep_id: str) -> str | None:
        runs = self.find(f"tags.`{R.SWEEP_ID}` = '{sweep_id}' and tags.`{R.ROLE}` = '{R.ROLE_SWEEP}'", status=None)
        return runs[0].info.run_id if runs else None

    def mark_dead_runs_killed(self, run_key: str | None = None, reason: str = "") -> list[str]:
        """Runs (of this run key, or any) left RUNNING by an owner that is gone become KILLED, with the cause in
        `colq.error` (`reason` says who found it). A run made inside a Slurm job is judged by the scheduler's
        record of that job (sacct, else squeue; any host); any other run by its process, on this host only.
        Runs of other hosts that the scheduler cannot speak for are left alone: `foreign_running` lists them."""
        killed = []
        host = socket.gethostname()
        filt = f"tags.`{R.RUN_KEY}` = '{run_key}'" if run_key else ""
        runs = self.find(filt, status="RUNNING")
        jobs = run_job_states(runs)
        for run in runs:
            tags = run.data.tags
            job = jobs.get(run.info.run_id)
            if job is not None and job.ended:
                cause = f"its Slurm job {tags[R.SLURM_JOB_ID]} ended {job.state} ({job.source}) without closing the run"
            elif tags.get(R.HOST) == host and not process_alive(int(tags.get(R.PID, "0") or 0), tags.get(R.PID_START) or None):
                cause = "its process ended without closing the run"
            else:
                continue
            self.log(run.info.run_id, tags={R.ERROR: f"{cause} ({reason})" if reason else cause})
            self.finish(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            killed.append(run.info.run_id)
        return killed

    def foreign_running(self) -> list:
        """RUNNING runs owned by another host whose owner cannot be told from here (no Slurm job the scheduler
        here knows of)."""
        host = socket.gethostname()
        runs = [r for r in self.find("", status="RUNNING") if r.data.tags.get(R.HOST) != host]
        known = run_job_states(runs)
        return [r for r in runs if r.info.run_id not in known]

    def children(self, parent_id: str, status: str | None = None) -> list:
        return self.find(f"tags.`{R.PARENT}` = '{parent_id}'", status=status)


def _exp_artifacts(tracking_uri: str, experiment: str) -> str | None:
    root = artifact_root(tracking_uri)
    return f"{root}/{experiment}" if root else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # drops NaN


def _param_str(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5990] + "...(cut)"


def sweep_id_for(sweep_dir: str | os.PathLike) -> str:
    return hashlib.sha256(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:16]
