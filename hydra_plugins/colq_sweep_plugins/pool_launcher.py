"""A Hydra launcher that runs each job in a fresh process on its own GPU slot, queueing the rest.

Why: submitit_local gives every job the same CUDA_VISIBLE_DEVICES and has no concurrency cap (hydra issues
2757, 2602), and the in-process basic launcher lets one job's leaked CUDA context or crash poison the next.
Here a slot is a set of `gpus_per_job` devices; at most one job holds a slot; each job is a new `spawn`ed
process whose CUDA_VISIBLE_DEVICES is set before anything imports torch. (Validating every job before the
first starts is the sweeper's job: hydra_plugins/colq_sweep_plugins/sweeper.py.)

With `share_idle` (the default), a slot left free once no job is waiting helps a running point evaluate: the point
offers its tasks on a shard board (colq_sweep/evaluate/shards.py) and the slot runs a helper process
(colq_sweep/pipeline/helper.py) that takes the largest unclaimed tasks; the point reads them back and tracks them.

Configs: conf/hydra/launcher/local.yaml (CPU, one job at a time: the default) and gpu-pool.yaml.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from colq_sweep.evaluate import shards
from hydra_plugins.colq_sweep_plugins.compose import compose_job

log = logging.getLogger(__name__)


def detect_gpus() -> list[str]:
    """GPU ids visible to this process, without initialising CUDA here (children must choose their own)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def make_slots(devices: Any, gpus_per_job: int, max_parallel: int | None) -> list[str | None]:
    """Slots as CUDA_VISIBLE_DEVICES strings; "" = a CPU slot (GPUs hidden); None = environment untouched."""
    if devices == "inherit":
        return [None] * (max_parallel or 1)
    if isinstance(devices, (ListConfig, list, tuple)):
        devs = [str(d) for d in devices]
    elif devices in (None, "auto"):
        devs = detect_gpus()
        if not devs:
            raise LauncherConfigError("hydra.launcher.devices", devices, "no GPU found; use hydra/launcher=local on a CPU machine, or list devices")
    elif devices == "cpu":
        devs = []
    else:
        devs = [d.strip() for d in str(devices).split(",") if d.strip()]
    if gpus_per_job < 1:
        raise LauncherConfigError("hydra.launcher.gpus_per_job", gpus_per_job, "must be >= 1")
    if max_parallel is not None and max_parallel < 1:
        raise LauncherConfigError("hydra.launcher.max_parallel", max_parallel, "must be null or >= 1")
    if not devs:
        return [""] * (max_parallel or 1)
    if len(devs) < gpus_per_job:
        raise LauncherConfigError("hydra.launcher.gpus_per_job", gpus_per_job, f"only {len(devs)} device(s): {','.join(devs)}")
    slots = [",".join(devs[i : i + gpus_per_job]) for i in range(0, len(devs) - gpus_per_job + 1, gpus_per_job)]
    if len(devs) % gpus_per_job:
        log.warning("devices %s left idle: %d devices do not split into slots of %d", devs[len(slots) * gpus_per_job :], len(devs), gpus_per_job)
    return slots[: max_parallel or len(slots)]


def _helper(root: str, env: dict[str, str], log_path: str) -> None:
    os.environ.update(env)  # before torch is imported: this slot's devices only
    logging.basicConfig(filename=log_path, level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from colq_sweep.pipeline.helper import help_evaluate

    sys.exit(help_evaluate(root))


class _Helpers:
    """Helper processes on free slots, one board at a time per slot (at most one helper per unclaimed task)."""

    def __init__(self, ctx, configs: list[DictConfig], slots: list[str | None], shown: list[str]):
        from colq_sweep.track.store import sweep_id_for

        self.ctx, self.slots, self.shown = ctx, slots, shown
        self.sweep_dir = Path(str(configs[0].hydra.sweep.dir)) if configs else Path(".")
        self.sweep_id = sweep_id_for(str(configs[0].hydra.sweep.dir)) if configs else ""
        self.outputs = {str(Path(str(c.outputs_dir)).resolve()) for c in configs}
        self.running: dict[int, tuple[Any, str]] = {}  # slot -> (process, board)
        self.n = 0

    def start(self, free: list[int]) -> None:
        if not free:
            return
        for board in shards.open_offers(self.outputs, self.sweep_id):
            left = len(board.unclaimed()) - sum(b == str(board.root) for _, b in self.running.values())
            while free and left > 0:
                slot, left = free.pop(0), left - 1
                env = {"COLQ_SWEEP_SLOT": str(slot), **({} if self.slots[slot] is None else {"CUDA_VISIBLE_DEVICES": self.slots[slot]})}
                log_path = self.sweep_dir / "helpers" / f"helper-{self.n}-slot{slot}.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                proc = self.ctx.Process(target=_helper, args=(str(board.root), env, str(log_path)), name=f"colq-helper-{self.n}")
                proc.start()
                self.n += 1
                self.running[slot] = (proc, str(board.root))
                o = board.offer()
                log.info("\tslot %d (%s) helps evaluate %s@%s (log: %s)", slot, self.shown[slot], o["model_name"],
                         o["revision"], log_path)  # fmt: skip

    def reap(self) -> list[int]:
        """Slots whose helper ended."""
        done = []
        for slot, (proc, _board) in list(self.running.items()):
            if not proc.is_alive():
                proc.join()
                if proc.exitcode != 0:
                    log.warning("the helper on slot %d exited with code %s (its tasks go back to the point)", slot, proc.exitcode)
                del self.running[slot]
                done.append(slot)
        return done


class LauncherConfigError(ValueError):
    def __init__(self, field: str, value: Any, fix: str):
        super().__init__(f"config error: {field}={value!r}: {fix}")


def _child(payload: bytes, env: dict[str, str], task: str | None) -> None:
    os.environ.update(env)  # before anything in this fresh process can import torch / initialise CUDA
    import cloudpickle

    hydra_context, task_function, sweep_config, singleton_state = cloudpickle.loads(payload)
    Singleton.set_state(singleton_state)
    setup_globals()
    if task:
        import importlib

        module, _, name = task.rpartition(".")
        task_function = getattr(importlib.import_module(module), name)
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if ret.status == JobStatus.FAILED:
        import traceback

        err = ret._return_value
        traceback.print_exception(type(err), err, err.__traceback__)
        sys.exit(3)


class PoolLauncher(Launcher):
    def __init__(
        self,
        devices: Any = "cpu",
        gpus_per_job: int = 1,
        max_parallel: int | None = None,
        task: str | None = None,
        poll_seconds: float = 0.2,
        share_idle: bool = True,
    ) -> None:
        self.devices = devices
        self.gpus_per_job = gpus_per_job
        self.max_parallel = max_parallel
        self.task = task
        self.poll_seconds = poll_seconds
        self.share_idle = share_idle
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _compose_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[DictConfig]:
        """Every job's config, composed here so that each child gets a finished config (and one sweep dir)."""
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = str(self.config.hydra.sweep.dir)  # resolved once here: children must not re-evaluate ${colq_stamp:}
        configs = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            configs.append(compose_job(self.hydra_context, self.config, overrides, idx, sweep_dir))
        return configs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import cloudpickle

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        try:
            slots = make_slots(self.devices, self.gpus_per_job, self.max_parallel)
        except LauncherConfigError as err:
            print(f"colq_sweep: {err}", file=sys.stderr)
            sys.exit(2)
        configs = self._compose_all(job_overrides, initial_job_idx)
        Path(str(configs[0].hydra.sweep.dir) if configs else ".").mkdir(parents=True, exist_ok=True)
        shown = ", ".join("inherited devices" if s is None else (s or "cpu") for s in slots)
        log.info("Launching %d jobs on %d slot(s) [%s], one process per job", len(configs), len(slots), shown)

        ctx = mp.get_context("spawn")
        state = Singleton.get_state()
        pending = list(range(len(configs)))
        free = list(range(len(slots)))
        running: dict[int, tuple[Any, int]] = {}  # job -> (process, slot)
        exit_codes: dict[int, int] = {}
        share = self.share_idle and len(slots) > 1
        helpers = _Helpers(ctx, configs, slots, shown.split(", ")) if share else None
        while pending or running or (helpers and helpers.running):
            while pending and free:
                job, slot = pending.pop(0), free.pop(0)
                payload = cloudpickle.dumps((self.hydra_context, self.task_function, configs[job], state))
                env = {"COLQ_SWEEP_SLOT": str(slot)}
                if share:
                    env[shards.ENV] = "1"
                if slots[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slots[slot]
                proc = ctx.Process(target=_child, args=(payload, env, self.task), name=f"colq-job-{job}")
                proc.start()
                running[job] = (proc, slot)
                log.info("\t#%d : %s  [slot %d: %s]", initial_job_idx + job,
                         " ".join(filter_overrides(job_overrides[job])), slot, shown.split(", ")[slot])  # fmt: skip
            if helpers is not None and not pending:
                helpers.start(free)  # free slots help the points still evaluating
            time.sleep(self.poll_seconds)
            if helpers is not None:
                free.extend(helpers.reap())
            for job, (proc, slot) in list(running.items()):
                if not proc.is_alive():
                    proc.join()
                    exit_codes[job] = proc.exitcode
                    if proc.exitcode != 0:
                        log.error("job #%d exited with code %s", initial_job_idx + job, proc.exitcode)
                    del running[job]
                    free.append(slot)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        results = []
        for job, cfg in enumerate(configs):
            ret = JobReturn(overrides=list(job_overrides[job]), cfg=cfg, hydra_cfg=OmegaConf.create({"hydra": cfg.hydra}))
            ret.status = JobStatus.COMPLETED  # outcomes (incl. crashes) are reported by the sweep summary
            ret.return_value = exit_codes.get(job)
            results.append(ret)
        return results
