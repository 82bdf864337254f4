"""The embedded MLflow store under concurrent writers, and the metric helpers of a sweep point."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from colq_sweep.contract import compare, flatten, summarise
from colq_sweep.track.store import Tracker, resolve_tracking_uri


def _writer(uri: str, worker: int, n_runs: int, start, tmp: str) -> None:
    start.wait()
    tracker = Tracker(uri, "concurrency")  # first use of a fresh db: schema creation races without the lock
    for i in range(n_runs):
        run_id = tracker.create_run(f"w{worker}-r{i}", {"colq.worker": str(worker), "colq.i": str(i)})
        tracker.log(run_id, params={f"p{k}": k * worker for k in range(30)}, metrics={"value": worker * 100 + i, "step": i})
        art = Path(tmp) / f"w{worker}-r{i}.txt"
        art.write_text(f"{worker}/{i}")
        tracker.log_artifact(run_id, art)
        tracker.finish(run_id)


@pytest.mark.slow
def test_four_concurrent_processes_lose_nothing(tmp_path):
    uri = resolve_tracking_uri(tmp_path / "out", f"sqlite:///{tmp_path}/out/mlflow.db")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(uri, w, 4, start, str(tmp_path))) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 16
    seen = set()
    for run in runs:
        w, i = int(run.data.tags["colq.worker"]), int(run.data.tags["colq.i"])
        seen.add((w, i))
        assert run.info.status == "FINISHED"
        assert run.data.metrics["value"] == w * 100 + i
        assert len(run.data.params) == 30 and run.data.params["p7"] == str(7 * w)
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"w{w}-r{i}.txt"]
    assert seen == {(w, i) for w in range(4) for i in range(4)}
    # artifacts sit next to the store, not in the working directory
    assert exp.artifact_location == (tmp_path / "out" / "mlartifacts" / "concurrency").as_uri()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri(tmp_path, f"sqlite:///{tmp_path}/x/y.db") == f"sqlite:///{tmp_path.resolve()}/x/y.db"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "1,2", "d": None}


def _entry(task, subset, lang, n5, n10=None):
    return {"task": task, "subset": subset, "language": lang, "ndcg_at_5": n5, "ndcg_at_10": n10 if n10 is not None else n5,
            "main_score": n5}  # fmt: skip


def test_summaries_and_deltas_use_the_same_entries():
    base = [_entry("A", "default", "en", 0.8), _entry("B", "french", "fr", 0.6), _entry("B", "english", "en", 0.4)]
    quant = [_entry("A", "default", "en", 0.7), _entry("B", "english", "en", 0.5)]  # B/french missing
    s = summarise(quant)
    assert s["ndcg5/avg_all"] == pytest.approx(0.6) and s["ndcg5/avg_en"] == pytest.approx(0.6)
    assert s["entry/A/default/ndcg_at_5"] == 0.7
    c = compare(quant, base)
    assert c["entries/compared"] == 2 and c["entries/missing_vs_original"] == 1
    assert c["ndcg5/delta_all"] == pytest.approx(0.6 - 0.6)
    assert c["entries/improved"] == 1 and c["entries/degraded"] == 1 and c["entries/unchanged"] == 0
    only_fr = compare([_entry("B", "french", "fr", 0.3)], base)
    assert only_fr["ndcg5/delta_pct_all"] == pytest.approx(-50.0)
    assert "ndcg5/delta_en" not in only_fr
    assert math.isnan(summarise([_entry("B", "french", "fr", 0.3)])["ndcg5/avg_en"])


def test_an_old_stores_metric_names_read_as_the_contracts_and_duplicates_are_dropped():
    """Runs logged before the grouped names: each old name maps to the one tracked name of its quantity, whatever
    the role (a baseline's total_bytes and a quantized run's quant_total_bytes are both size/total_bytes); the
    duplicates old runs carried (quant_wall_time_s = quant_seconds, calib_samples_used = samples_used, the
    original's parameter counts on a quantized run) are dropped; names already tracked pass unchanged."""
    from colq_sweep.contract import RENAMED, tracked

    baseline = tracked({"avg_ndcg_at_5_all": 0.8, "total_bytes": 10.0, "params_total": 5.0, "pages_per_s": 3.0})
    assert baseline == {"ndcg5/avg_all": 0.8, "size/total_bytes": 10.0, "params/total": 5.0, "eval/pages_per_s": 3.0}
    old = {"quant_total_bytes": 4.0, "base_total_bytes": 10.0, "quant_seconds": 7.0, "quant_wall_time_s": 7.0,
           "samples_used": 8.0, "calib_samples_used": 8.0, "base_params_total": 5.0, "params_int4": 3.0,
           "delta_pct_ndcg_at_5_all_ci_low": -2.0, "entry/A/default/ndcg_at_5": 0.7, "knob/seqlen": 64.0}
    assert tracked(old) == {"size/total_bytes": 4.0, "size/original_total_bytes": 10.0, "quant/seconds": 7.0,
                            "calib/samples_used": 8.0, "params/int4": 3.0, "ndcg5/delta_pct_all_ci_low": -2.0,
                            "entry/A/default/ndcg_at_5": 0.7, "knob/seqlen": 64.0}  # fmt: skip
    assert tracked(tracked(old)) == tracked(old)
    new = [n for n in RENAMED.values() if n is not None]
    assert all("/" in n for n in new) and not set(new) & set(RENAMED)  # grouped; no new name is also an old one


def _fake_slurm(bin_dir: Path, sacct: str | None, squeue: str = "") -> None:
    """sacct / squeue / scontrol stand-ins printing fixed answers (sacct=None: accounting is disabled)."""
    bin_dir.mkdir(exist_ok=True)
    scripts = {
        "sacct": "echo 'Slurm accounting storage is disabled' >&2; exit 1" if sacct is None else f"printf '{sacct}'",
        "squeue": f"printf '{squeue}'",
        "scontrol": "echo 'ClusterName             = colq'",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)


def test_slurm_job_states_from_sacct_else_squeue(tmp_path, monkeypatch):
    from colq_sweep.launch import slurm

    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    _fake_slurm(tmp_path / "bin", sacct="12|12|CANCELLED by 0\\n14|13_1|TIMEOUT\\n15|15|RUNNING\\n")
    got = slurm.job_states(["12", "13_1", "15"])
    assert {k: (v.state, v.source, v.ended) for k, v in got.items()} == {
        "12": ("CANCELLED", "sacct", True), "13_1": ("TIMEOUT", "sacct", True), "14": ("TIMEOUT", "sacct", True),
        "15": ("RUNNING", "sacct", False)}  # fmt: skip
    # no accounting database: the controller's records (squeue --states=all) answer
    _fake_slurm(tmp_path / "bin", sacct=None, squeue="12|12|OUT_OF_MEMORY\\n")
    assert {k: v.state for k, v in slurm.job_states(["12"]).items()} == {"12": "OUT_OF_MEMORY"}
    (tmp_path / "bin" / "squeue").write_text("#!/bin/sh\nexit 1\n")
    assert slurm.job_states(["12"]) is None  # nobody answered: nothing can be concluded


def test_runs_of_slurm_jobs_are_judged_by_the_scheduler_on_any_host(tmp_path, monkeypatch):
    import socket

    from colq_sweep.launch import slurm

    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    slurm.local_cluster.cache_clear()
    _fake_slurm(tmp_path / "bin", sacct="21|21|RUNNING\\n22|22|TIMEOUT\\n23|23|RUNNING\\n")
    t = Tracker(resolve_tracking_uri(tmp_path / "out"), "slurm")
    dead_pid = mp.get_context("spawn").Process(target=math.sqrt, args=(1.0,))
    dead_pid.start()
    dead_pid.join()

    def run(name: str, host: str, job: str | None, pid: int = 1, cluster: str = "colq") -> str:
        tags = {"colq.host": host, "colq.pid": str(pid)}
        if job:
            tags.update({"colq.slurm_job_id": job, "colq.slurm_cluster": cluster})
        return t.create_run(name, tags)

    running = run("job running elsewhere", "gpu-node-1", "21")
    timed_out = run("job timed out elsewhere", "gpu-node-2", "22")
    crashed_here = run("job running, its process here gone", socket.gethostname(), "23", pid=dead_pid.pid)
    other_cluster = run("job of another cluster", "gpu-node-3", "22", cluster="other")
    unknown = run("no Slurm job, elsewhere", "gpu-node-4", None)
    killed = t.mark_dead_runs_killed(reason="found by a test")
    assert sorted(killed) == sorted([timed_out, crashed_here])
    assert t.client.get_run(timed_out).data.tags["colq.error"] == (
        "its Slurm job 22 ended TIMEOUT (sacct) without closing the run (found by a test)")
    assert t.client.get_run(crashed_here).data.tags["colq.error"].startswith("its process ended")
    assert {r.info.run_id for r in t.foreign_running()} == {other_cluster, unknown}  # whose owner is unknown here
    assert t.client.get_run(running).info.status == "RUNNING"
    slurm.local_cluster.cache_clear()


def test_system_metrics_are_logged_to_a_run_while_it_works(tmp_path, monkeypatch):
    import time

    from colq_sweep.track import sysmetrics

    switch = [("auto", "cuda:0"), ("auto", "cpu"), ("true", "cpu"), ("false", "cuda")]
    assert [sysmetrics.wanted(s, d) for s, d in switch] == [True, False, True, False]
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    t = Tracker(resolve_tracking_uri(tmp_path / "out"), "sysmetrics")
    run, quiet = t.create_run("works", {}), t.create_run("auto on a CPU", {})
    monitors = [sysmetrics.start("true", "cpu", t, run), sysmetrics.start("auto", "cpu", t, quiet)]
    time.sleep(1.5)
    for m in monitors:
        m.finish()
    history = t.client.get_metric_history(run, "system/cpu_utilization_percentage")
    assert len(history) >= 3 and [m.step for m in history] == list(range(len(history)))
    assert t.client.get_run(run).data.metrics["system/system_memory_usage_megabytes"] > 0
    assert not any(k.startswith("system/") for k in t.client.get_run(quiet).data.metrics)


def test_logged_model_names_are_the_whole_label_in_characters_mlflow_accepts():
    """A logged model's name is its point's whole label (the Models tab tells a sweep's checkpoints apart), with
    what MLflow's store refuses (`. / : % " '`: a mixed calibration's `mixed0.5`) replaced."""
    from mlflow.utils.validation import _validate_logged_model_name

    from colq_sweep.track.catalog import model_name

    names = [model_name("tiny", "w4g128 seqlen=512 bs=8 n=512 iters=1000 seed=42 calib=mixed0.5"),
             model_name("tiny", "signround+awq w4g128 seqlen=64 calib=pages+q0.25 index=pool3-int8"),
             model_name("org/4b", "original")]  # fmt: skip
    assert names == ["tiny-w4g128-seqlen512-bs8-n512-iters1000-seed42-calibmixed0_5",
                     "tiny-signround_awq-w4g128-seqlen64-calibpages_q0_25-indexpool3-int8", "org_4b-original"]
    for n in names:
        _validate_logged_model_name(n)  # raises for a name the store would refuse


def test_a_sweeps_name_and_axes_are_what_hydra_sweeps():
    """The parent run is named after the overrides Hydra sweeps (a comma list, a sweep function; not a list value
    or a path), then when; with nothing swept, after its other overrides; and those are its `sweep.<param>`s."""
    from colq_sweep.track.multirun import _named, _swept, sweep_name

    task = ["seqlen=32,64", "quant=rtn", "eval.tasks=[A,B]", "iters=choice(2,4)", "outputs_dir=/x/y",
            "name=demo", "+calib.mix=a,b", "calib.path=/d/f.txt"]  # fmt: skip
    assert _swept(_named(task)) == ["seqlen=32,64", "iters=choice(2,4)", "+calib.mix=a,b"]
    assert sweep_name(task, "2026-12-04_22-36-01") == "sweep seqlen=32,64 iters=choice(2,4) +calib.mix=a,b · 12-04 22:36"
    assert sweep_name(["quant=rtn", "eval.tasks=[A,B]"], "run7") == "sweep quant=rtn eval.tasks=[A,B] · run7"
    assert sweep_name([], "run7") == "sweep (defaults) · run7"


def test_older_sweeps_get_the_reports_recommendation_and_keep_their_own(tmp_path):
    """The report is logged on the newest sweep; an older sweep whose runs it compared gets the recommendation as its
    description, led by the run that holds the report, and a later report replaces it; a sweep with a description
    of its own (a search's choice) keeps it."""
    from colq_sweep.report.annotate import ELSEWHERE, annotate

    tracker = Tracker(resolve_tracking_uri(tmp_path / "out"), "demo")
    newest, older, search = (tracker.create_run(n, {"colq.role": "sweep"}) for n in ("new", "old", "search"))
    tracker.log(search, tags={"mlflow.note.content": "Chosen: #2"})
    annotate(tracker, [], newest, "**`tiny`: use `seqlen=32`**", older=(older, search))
    note = lambda run: tracker.client.get_run(run).data.tags.get("mlflow.note.content")  # noqa: E731
    assert note(newest) == "**`tiny`: use `seqlen=32`**"
    assert note(older) == f"{ELSEWHERE} (`{newest}`, artifacts `report/`).\n\n**`tiny`: use `seqlen=32`**"
    assert note(search) == "Chosen: #2"
    annotate(tracker, [], newest, "**`tiny`: use `seqlen=64`**", older=(older, search))
    assert note(older).endswith("use `seqlen=64`**") and note(search) == "Chosen: #2"
