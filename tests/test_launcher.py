"""The process-pool launcher: one job per GPU slot with distinct CUDA_VISIBLE_DEVICES, never above the pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hydra_plugins.colq_sweep_plugins.pool_launcher import make_slots

# Hydra's plugin discovery may re-import the launcher module (new class objects), so errors are matched by
# base class and message rather than by the class imported here.
LauncherConfigError = ValueError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "colq_sweep", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def probes(outputs: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (outputs / "probe").glob("job-*.json")), key=lambda r: r["job"])


def max_overlap(records: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def assert_distinct_devices_while_overlapping(records: list[dict]) -> None:
    for a in records:
        for b in records:
            if a["job"] < b["job"] and a["start"] < b["end"] and b["start"] < a["end"]:
                assert not set(a["cuda_visible_devices"].split(",")) & set(b["cuda_visible_devices"].split(",")), (a, b)


@pytest.mark.slow
def test_gpu_pool_spreads_jobs_over_distinct_devices(tmp_path, fixture_outputs_dir):
    devices, per_job, slots = "[0,1,2,3,4]", 2, 2  # slots "0,1" and "2,3"; device 4 idles
    outputs = tmp_path / "out"
    proc = run_cli([
        "-m", "experiment=demo", f"outputs_dir={outputs}", "model.path=" + str(fixture_outputs_dir / "fixtures/tiny-colqwen3"),
        "calib.path=" + str(fixture_outputs_dir / "fixtures/calib.jsonl"), "eval.fixture_dir=" + str(fixture_outputs_dir / "fixtures/vidore-fixture"),
        "hydra/launcher=gpu-pool", f"hydra.launcher.devices={devices}", f"hydra.launcher.gpus_per_job={per_job}",
        "hydra.launcher.task=colq_sweep.launch.probe.probe_task", "seqlen=64", "seed=1,2,3,4,5",
    ])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = probes(outputs)
    assert [r["job"] for r in records] == [0, 1, 2, 3, 4]
    assert all(not r["torch_imported"] for r in records)  # the device env was set before torch could load
    used = {r["cuda_visible_devices"] for r in records}
    expected = {",".join(map(str, range(i * per_job, (i + 1) * per_job))) for i in range(slots)}
    assert used <= expected and len(used) == slots
    assert max_overlap(records) <= slots
    assert max_overlap(records) >= 2  # it really ran jobs side by side
    assert_distinct_devices_while_overlapping(records)


def test_slots_from_device_lists():
    assert make_slots([0, 1, 2, 3], 1, None) == ["0", "1", "2", "3"]
    assert make_slots([0, 1, 2, 3], 2, None) == ["0,1", "2,3"]
    assert make_slots([0, 1, 2], 2, None) == ["0,1"]  # device 2 idles, with a warning
    assert make_slots("0,1,2,3", 1, 2) == ["0", "1"]  # max_parallel caps the pool
    assert make_slots("cpu", 1, 3) == ["", "", ""]  # GPUs hidden
    assert make_slots("inherit", 1, None) == [None]


def test_auto_detection_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert make_slots("auto", 1, None) == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(LauncherConfigError, match="no GPU found"):
        make_slots("auto", 1, None)


def test_bad_pool_settings_are_one_line_errors():
    with pytest.raises(LauncherConfigError, match="gpus_per_job"):
        make_slots([0], 2, None)
    with pytest.raises(LauncherConfigError, match="max_parallel"):
        make_slots([0], 1, 0)


@pytest.mark.parametrize("launcher", ["local", "basic"])  # the sweeper validates, whatever launches the jobs
def test_bad_value_in_a_later_job_launches_nothing(tmp_path, fixture_outputs_dir, launcher):
    outputs = tmp_path / "out"
    proc = run_cli([
        "-m", "experiment=demo", f"hydra/launcher={launcher}", f"outputs_dir={outputs}", "model.path=" + str(fixture_outputs_dir / "fixtures/tiny-colqwen3"),
        "calib.path=" + str(fixture_outputs_dir / "fixtures/calib.jsonl"), "eval.fixture_dir=" + str(fixture_outputs_dir / "fixtures/vidore-fixture"),
        "seqlen=64", "batch_size=2,4,64",
    ] + (["hydra.launcher.task=colq_sweep.launch.probe.probe_task"] if launcher == "local" else []))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "job #2" in proc.stderr and "config error: nsamples=8: must be >= batch_size (64)" in proc.stderr
    assert not (outputs / "probe").exists()
    assert not list(outputs.glob("hydra/demo/multirun-*/0"))  # no job directory: nothing started
    assert not (outputs / "mlflow.db").exists()  # not even a parent run
    assert "Traceback" not in proc.stderr


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher"])
    assert proc.returncode == 0, proc.stderr
    assert "gpus_per_node: 1" in proc.stdout and "partition: gpu" in proc.stdout
    assert "ColqSlurmLauncher" in proc.stdout  # ours, not upstream's


def test_the_slurm_launcher_reports_jobs_slurm_ended_without_a_result(tmp_path, monkeypatch):
    """A job Slurm cancelled (or timed out, ...) is a FAILED return naming its state, not an exception that
    ends the sweep; a job with a result returns it; a job still running is waited for."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core.utils import cloudpickle_dump

    from colq_sweep.launch import slurm
    from hydra_plugins.colq_sweep_plugins import slurm_launcher as sl

    class Job:
        def __init__(self, job_id):
            self.job_id = job_id
            self.paths = type("P", (), {"result_pickle": tmp_path / f"{job_id}_result.pkl", "stderr": tmp_path / "x.err"})

    done = JobReturn(overrides=["seqlen=32"])
    done.status = JobStatus.COMPLETED
    cloudpickle_dump(("success", done), tmp_path / "7_0_result.pkl")
    polls = []

    def states(ids, timeout=10.0):  # 7_2 runs for two polls, then reports its result
        polls.append(sorted(ids))
        if len(polls) == 3:
            cloudpickle_dump(("success", done), tmp_path / "7_2_result.pkl")
        return {"7_1": slurm.JobState("CANCELLED", "squeue"), "7_2": slurm.JobState("RUNNING", "squeue")}

    monkeypatch.setattr(slurm, "job_states", states)
    monkeypatch.setattr(sl, "RESULT_GRACE_S", 0.0)
    launcher = sl.ColqSlurmLauncher.__new__(sl.ColqSlurmLauncher)
    launcher.poll_seconds = 0.01
    got = launcher._wait([Job("7_0"), Job("7_1"), Job("7_2")], [["seqlen=32"], ["seqlen=48"], ["seqlen=64"]])
    assert [r.status for r in got] == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.COMPLETED]
    assert str(got[1]._return_value).startswith("Slurm job 7_1 ended CANCELLED (squeue) without a result")
    assert got[1].overrides == ["seqlen=48"]
