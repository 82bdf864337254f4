"""Slurm at the edge: which Slurm job this process is, and what the scheduler says about other jobs.

A run created inside a Slurm job records the job (`colq.slurm_job_id`, `colq.slurm_cluster`). Whether such a
run's owner still lives is then asked of the scheduler, wherever the asking process runs: `sacct` (the
accounting database of a real cluster), else `squeue --states=all` (the controller's records, which keep a
finished job for MinJobAge). Both are called with a short timeout; no answer means "unknown", never "dead".
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from colq_sweep import contract as R

# Job states after which no process of the job runs any more (sacct/squeue spelling). A run still RUNNING whose
# job is in one of these lost its process. COMPLETED too: the job's program ended without closing the run.
ENDED = frozenset({
    "CANCELLED", "TIMEOUT", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
    "COMPLETED", "REVOKED", "SPECIAL_EXIT",
})  # fmt: skip
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class JobState:
    state: str  # e.g. RUNNING, CANCELLED (sacct's "CANCELLED by 0" is cut to its first word)
    source: str  # "sacct" or "squeue"

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def current_job_tags() -> dict[str, str]:
    """Tags naming the Slurm job this process runs in (none outside Slurm)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    tags = {R.SLURM_JOB_ID: job}
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        tags[R.SLURM_ARRAY_JOB] = f"{array}_{task}"
    if os.environ.get("SLURM_CLUSTER_NAME"):
        tags[R.SLURM_CLUSTER] = os.environ["SLURM_CLUSTER_NAME"]
    return tags


def _run(cmd: list[str], timeout: float = TIMEOUT_S) -> str | None:
    """The command's output, or None when it is missing, fails or times out (no Slurm here, controller down)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def local_cluster() -> str | None:
    """The ClusterName of the cluster this machine's Slurm commands talk to (None without Slurm)."""
    for line in (_run(["scontrol", "show", "config"]) or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ClusterName":
            return value.strip() or None
    return None


def job_states(job_ids: Iterable[str], timeout: float = TIMEOUT_S) -> dict[str, JobState] | None:
    """The scheduler's state of each job it knows, keyed by raw job id and by array form (`12_3`). None when
    neither sacct nor squeue answered at all (no Slurm here, controller down): nothing can be concluded."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    states: dict[str, JobState] = {}
    answered = False
    out = _run(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,JobID,State", "-j", ",".join(ids)], timeout)
    if out is not None:
        answered = True
        _parse(out, "sacct", states)
    missing = [j for j in ids if j not in states]
    if missing:
        out = _run(["squeue", "--states=all", "-r", "-h", "-o", "%A|%i|%T", "-j", ",".join(missing)], timeout)
        if out is not None:
            answered = True
            _parse(out, "squeue", states)
    return states if answered else None


def _parse(out: str, source: str, into: dict[str, JobState]) -> None:
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[2].strip():
            continue
        state = JobState(parts[2].split()[0].rstrip("+"), source)
        for key in parts[:2]:
            if key and key not in into:
                into[key] = state


def run_job_states(runs: list) -> dict[str, JobState]:
    """For MLflow runs carrying a Slurm job id of this machine's cluster: run id -> the job's state. Runs of
    another cluster, or whose job the scheduler does not know, are absent (their owner is unknown)."""
    with_job = [r for r in runs if r.data.tags.get(R.SLURM_JOB_ID)]
    if not with_job:
        return {}
    cluster = local_cluster()
    mine = [r for r in with_job if r.data.tags.get(R.SLURM_CLUSTER) in (None, cluster)]
    states = job_states([r.data.tags[R.SLURM_JOB_ID] for r in mine]) or {}
    return {r.info.run_id: states[r.data.tags[R.SLURM_JOB_ID]] for r in mine if r.data.tags[R.SLURM_JOB_ID] in states}
