"""A real one-node Slurm cluster (scripts/slurm-up.sh, fixture `slurm_cluster`): the demo sweep through sbatch,
and a job cancelled with scancel whose run the next sweep marks KILLED from the scheduler's record and reruns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colq_sweep.track.store import Tracker, resolve_tracking_uri
from tests.support import hold_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# CPU-only one-node cluster: no GPUs asked for (gpus_per_node null), one core and a little memory per job
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=20"]  # fmt: skip


def sweep(conf: str, outputs: Path, fixtures: Path, *overrides: str, env: dict | None = None, log: Path | None = None):
    cmd = [sys.executable, "-m", "colq_sweep", "-m", "experiment=demo", f"outputs_dir={outputs}",
           f"model.path={fixtures / 'tiny-colqwen3'}", f"calib.path={fixtures / 'calib.jsonl'}",
           f"eval.fixture_dir={fixtures / 'vidore-fixture'}", "iters=2", "nsamples=4", "batch_size=2", *SLURM, *overrides]  # fmt: skip
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "SLURM_CONF": conf,
                "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", **(env or {})}  # fmt: skip
    full_env.pop("MLFLOW_TRACKING_URI", None)
    if log is not None:  # in the background, output to a file (a pipe nobody reads could fill up)
        with log.open("w") as fh:
            return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def tracker(outputs: Path) -> Tracker:
    return Tracker(resolve_tracking_uri(outputs), "demo")


def by_role(outputs: Path, role: str, status: str | None = None) -> list:
    return tracker(outputs).find(f"tags.`colq.role` = '{role}'", status=status)


@pytest.fixture(scope="module")
def slurm_sweep(slurm_cluster, tmp_path_factory, fixture_paths):
    outputs = tmp_path_factory.mktemp("slurm") / "outputs"
    proc = sweep(slurm_cluster, outputs, fixture_paths.root, "seqlen=32,48", "system_metrics=true")
    return slurm_cluster, outputs, proc


def test_the_demo_sweep_runs_through_sbatch(slurm_sweep, monkeypatch):
    from colq_sweep.launch.slurm import job_states

    conf, outputs, proc = slurm_sweep
    monkeypatch.setenv("SLURM_CONF", conf)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = proc.stderr[proc.stderr.index("colq_sweep summary"):]
    assert summary.count("FINISHED") == 2 and "seqlen=32" in summary and "seqlen=48" in summary
    # jobs on other hosts and a sqlite file: one line says why that is fragile and how to start a server
    note = [ln for ln in proc.stderr.splitlines() if "sqlite's file locking is unreliable" in ln]
    assert len(note) == 1 and "mlflow server --backend-store-uri" in note[0] and "tracking_uri=http://" in note[0]
    # MLflow: one parent run, both points and the baseline (computed by one of them) under it, all FINISHED
    (parent,) = by_role(outputs, "sweep", status=None)
    points, (baseline,) = by_role(outputs, "quantized", status=None), by_role(outputs, "baseline", status=None)
    assert parent.info.status == "FINISHED" and len(points) == 2
    assert {r.info.status for r in [*points, baseline]} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in [*points, baseline]} == {parent.info.run_id}
    assert sorted(r.data.params["seqlen"] for r in points) == ["32", "48"]
    # through sbatch: the runs name their Slurm jobs, one job array of two tasks, which Slurm says COMPLETED
    sweep_dir = Path(parent.data.tags["colq.sweep_dir"])
    (script,) = sweep_dir.glob(".submitit/*/*_submission.sh")
    array = script.parent.name
    assert "#SBATCH --array=0-1%2" in script.read_text() and "#SBATCH --cpus-per-task=1" in script.read_text()
    assert {r.data.tags["colq.slurm_array_job"] for r in points} == {f"{array}_0", f"{array}_1"}
    assert baseline.data.tags["colq.slurm_array_job"] in {f"{array}_0", f"{array}_1"}
    assert {r.data.tags["colq.slurm_cluster"] for r in [*points, baseline]} == {"colq"}
    # submitit hands the result back when the job's function returns; the batch step ends a moment later, and
    # Slurm records COMPLETED only then (seconds on a loaded machine)
    ids = [r.data.tags["colq.slurm_job_id"] for r in points]
    deadline = time.monotonic() + 60
    while {s.state for s in (job_states(ids) or {}).values()} & {"RUNNING", "COMPLETING"} and time.monotonic() < deadline:
        time.sleep(1)
    states = job_states(ids)
    assert {states[i].state for i in ids} == {"COMPLETED"}
    for i in (0, 1):  # each job's output went where submitit put it, the stage lines included
        out = (sweep_dir / ".submitit" / f"{array}_{i}" / f"{array}_{i}_0_log.out").read_text()
        assert "quantize: done in" in out and "track: done in" in out
    # system_metrics=true: MLflow's system metrics logged to each point's run (and the baseline's) while it worked
    for r in [*points, baseline]:
        assert r.data.metrics.get("system/cpu_utilization_percentage") is not None, r.data.metrics.keys()
        assert r.data.metrics.get("system/system_memory_usage_megabytes", 0) > 0


def test_a_cancelled_job_is_marked_killed_by_the_next_sweep_and_rerun(slurm_sweep, fixture_paths, tmp_path, monkeypatch):
    from colq_sweep.launch.slurm import job_states

    conf, outputs, first = slurm_sweep
    monkeypatch.setenv("SLURM_CONF", conf)
    assert first.returncode == 0
    env = {**os.environ, "SLURM_CONF": conf}
    # sweep A: seqlen=64, a new point, holds after its run exists
    a = sweep(conf, outputs, fixture_paths.root, "seqlen=64", env=hold_env(300), log=tmp_path / "a.log")
    deadline = time.monotonic() + 240
    held = []
    while not held and time.monotonic() < deadline:
        held = [r for r in by_role(outputs, "quantized", "RUNNING") if r.data.params.get("seqlen") == "64"]
        time.sleep(0.5)
    assert held, (tmp_path / "a.log").read_text()[-3000:]
    job = held[0].data.tags["colq.slurm_job_id"]
    # the process that launched the sweep goes (a closed login session); then Slurm cancels the job mid-run
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    subprocess.run(["scancel", job], env=env, check=True, timeout=30)
    deadline = time.monotonic() + 60
    while (job_states([job]) or {}).get(job) is None or job_states([job])[job].state != "CANCELLED":
        assert time.monotonic() < deadline, job_states([job])
        time.sleep(0.5)
    # runs of other hosts: one owned by the same (cancelled) Slurm job, one with no Slurm job (owner unknown)
    t = tracker(outputs)
    same_job = t.create_run("elsewhere, in the cancelled job", {"colq.role": "probe", "colq.host": "gpu-node-7",
                            "colq.pid": "1", "colq.slurm_job_id": job, "colq.slurm_cluster": "colq"})  # fmt: skip
    no_job = t.create_run("elsewhere, no Slurm job", {"colq.role": "probe", "colq.host": "gpu-node-7", "colq.pid": "1"})
    b = sweep(conf, outputs, fixture_paths.root, "seqlen=64")  # the next sweep
    assert b.returncode == 0, b.stderr[-4000:]
    run = t.client.get_run(held[0].info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["colq.error"] == (f"its Slurm job {job} ended CANCELLED (squeue) without closing the run "
                                           "(found by a later sweep)")  # fmt: skip
    assert t.client.get_run(same_job).info.status == "KILLED"  # the scheduler's record, whatever the host
    assert "its Slurm job" in t.client.get_run(same_job).data.tags["colq.error"]
    assert t.client.get_run(no_job).info.status == "RUNNING"  # nobody here can tell: listed, left alone
    assert f"{no_job} (gpu-node-7)" in b.stderr and "owner unknown" in b.stderr and same_job not in b.stderr
    # the launching process of sweep A is gone too: its parent run is KILLED (this host, by its pid)
    parents = {r.data.tags["colq.sweep_dir"]: r for r in by_role(outputs, "sweep", status=None)}
    assert sorted(r.info.status for r in parents.values()) == ["FINISHED", "FINISHED", "KILLED"]
    # and the cancelled point ran again: FINISHED in sweep B
    summary = b.stderr[b.stderr.index("colq_sweep summary"):]
    assert summary.count("FINISHED") == 1 and "CRASHED" not in summary
    rerun = [r for r in by_role(outputs, "quantized", "FINISHED") if r.data.params.get("seqlen") == "64"]
    assert len(rerun) == 1 and rerun[0].data.tags["colq.slurm_job_id"] != job
    t.finish(no_job)


def test_a_tolerance_search_runs_its_candidates_through_sbatch_one_round_at_a_time(slurm_sweep, fixture_paths, monkeypatch):
    """The search's rounds through the Slurm launcher: each candidate an sbatch job, submitted after the previous
    one's result was read (W4A16 RTN fails 1 %, W8A16 passes), the parent run closed with the answer."""
    conf, outputs, first = slurm_sweep
    monkeypatch.setenv("SLURM_CONF", conf)
    assert first.returncode == 0
    proc = sweep(conf, outputs, fixture_paths.root, "hydra/sweeper=colq-tolerance", "search.max_loss_pct=1",
                 "quant.algorithms=[rtn]", "quant.scheme=W8A16,W4A16")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    search = proc.stderr[proc.stderr.index("colq_sweep tolerance search"):]
    assert "Chosen: #1 tiny rtn w8g128 (quant.scheme=W8A16)" in search and "#0   quant.scheme=W4A16" in search
    chosen = [r for r in by_role(outputs, "quantized") if r.data.tags.get("colq.search.chosen") == "true"]
    assert [r.data.params["quant.scheme"] for r in chosen] == ["W8A16"] and chosen[0].data.tags.get("colq.slurm_job_id")
