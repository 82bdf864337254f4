"""hydra-submitit-launcher's Slurm launcher, waiting for jobs the way a long sweep needs.

The upstream launcher submits one job array through sbatch (kept as is) and then waits with `job.results()`,
job by job: a job that Slurm cancelled, timed out or lost with its node raises there, which ends the whole
sweep at the first such job (no summary, the other jobs unwatched); and its state comes from `sacct` only, so on
a cluster without an accounting database a job that ended without a result is waited for forever. Here every
job is waited for: a result file means the job reported; a job the scheduler (sacct, else squeue) says has
ended without one is a FAILED job return naming its Slurm state, which the sweep's summary shows
(conf/hydra/launcher/slurm.yaml).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

RESULT_GRACE_S = 15.0  # a job that ended may need a moment before its result file is visible (network filesystems)
UNKNOWN_POLLS = 10  # polls in a row in which the scheduler answers but no longer knows a job: it is gone


class ColqSlurmLauncher(SlurmLauncher):
    poll_seconds = 2.0  # one squeue/sacct call per poll, for all pending jobs together

    def launch(self, job_overrides, initial_job_idx: int):
        import submitit

        assert self.config is not None
        # as the upstream launcher: one executor, its parameters, one job array
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update({f"{self._EXECUTOR}_{x}": y for x, y in self.params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in self.params.items() if x not in init_keys}
        executor.update_parameters(**params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        for i, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=True)):
            log.info("\t#%d : %s  [Slurm job %s]", initial_job_idx + i, " ".join(filter_overrides(overrides)), job.job_id)
        return self._wait(jobs, job_overrides)

    def _wait(self, jobs: list, job_overrides) -> list[JobReturn]:
        """Every job's return, in order: its result once it has one, or a FAILED return once Slurm says it
        ended without one (cancelled, timed out, out of memory, node failure, ...)."""
        from submitit.core.utils import pickle_load

        from colq_sweep.launch.slurm import job_states

        results: dict[int, JobReturn] = {}
        ended_at: dict[int, float] = {}
        unknown: dict[int, int] = {}
        while len(results) < len(jobs):
            pending = [i for i in range(len(jobs)) if i not in results]
            states = job_states([jobs[i].job_id for i in pending])
            for i in pending:
                job = jobs[i]
                if job.paths.result_pickle.exists():
                    results[i] = self._outcome(pickle_load(job.paths.result_pickle), job, job_overrides[i])
                    continue
                state = (states or {}).get(job.job_id)
                if states is not None and state is None:
                    unknown[i] = unknown.get(i, 0) + 1
                else:
                    unknown.pop(i, None)
                gone = unknown.get(i, 0) >= UNKNOWN_POLLS
                if (state is not None and state.ended) or gone:
                    first = ended_at.setdefault(i, time.monotonic())
                    if time.monotonic() - first >= RESULT_GRACE_S or gone:
                        what = f"{state.state} ({state.source})" if state is not None else "unknown to the scheduler"
                        results[i] = _failed(job_overrides[i], f"Slurm job {job.job_id} ended {what} without a result; "
                                                               f"its log: {job.paths.stderr}")  # fmt: skip
            if len(results) < len(jobs):
                time.sleep(self.poll_seconds)
        return [results[i] for i in range(len(jobs))]

    @staticmethod
    def _outcome(output: tuple[str, Any], job, overrides) -> JobReturn:
        outcome, value = output
        if outcome == "success":
            return value
        return _failed(overrides, f"Slurm job {job.job_id} raised outside the task: {str(value)[-2000:]}")


def _failed(overrides, message: str) -> JobReturn:
    ret = JobReturn(overrides=list(overrides))
    ret.status = JobStatus.FAILED
    ret._return_value = RuntimeError(message)
    return ret
