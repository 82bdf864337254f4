"""End to end on the fixtures: Hydra multirun -> quantize -> evaluate -> MLflow, resumable, failure-isolated."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def command(outputs: Path, fixtures: Path, *overrides: str, multirun: bool = True) -> list[str]:
    return [
        sys.executable, "-m", "colq_sweep", *(["-m"] if multirun else []), "experiment=demo", f"outputs_dir={outputs}",
        f"model.path={fixtures / 'tiny-colqwen3'}", f"calib.path={fixtures / 'calib.jsonl'}",
        f"eval.fixture_dir={fixtures / 'vidore-fixture'}", "iters=2", "nsamples=4", "batch_size=2", *overrides,
    ]  # fmt: skip


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sweep(outputs: Path, fixtures: Path, *overrides: str, multirun: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command(outputs, fixtures, *overrides, multirun=multirun), cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def store(outputs: Path) -> str:
    return f"sqlite:///{outputs.resolve()}/mlflow.db"


def runs(outputs: Path):
    """All runs of the demo experiment as a DataFrame (without leaving a global tracking URI behind:
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which later tests would inherit)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(store(outputs)):
        return mlflow.search_runs(experiment_names=["demo"], max_results=1000)


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory, fixture_paths):
    outputs = tmp_path_factory.mktemp("sweep") / "outputs"
    # two points at a time: they quantize side by side and must still produce exactly one baseline run
    proc = sweep(outputs, fixture_paths.root, "seqlen=32,48,64", "hydra.launcher.max_parallel=2")
    return outputs, proc


def test_three_point_multirun_tracks_three_children_and_the_baseline(first_sweep):
    outputs, proc = first_sweep
    assert proc.returncode == 0, proc.stderr[-4000:]
    df = runs(outputs)
    parents = df[df["tags.colq.role"] == "sweep"]
    points = df[df["tags.colq.role"] == "quantized"]
    baseline = df[df["tags.colq.role"] == "baseline"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert len(points) == 3 and set(points["status"]) == {"FINISHED"}
    assert len(baseline) == 1 and baseline.iloc[0]["status"] == "FINISHED"
    parent_id = parents.iloc[0]["run_id"]
    assert set(points["tags.mlflow.parentRunId"]) == {parent_id}
    assert sorted(points["params.seqlen"].astype(int)) == [32, 48, 64]
    for col in ("params.quant.bits", "params.quant.group_size", "params.model.name", "params.eval.tasks", "params.iters"):
        assert points[col].notna().all(), col
    for tag in ("colq.config_hash", "colq.artifact_key", "mlflow.source.git.commit", "version.auto-round", "colq.device", "colq.kernel_backend"):
        assert points[f"tags.{tag}"].notna().all(), tag
    assert points["tags.colq.artifact_key"].nunique() == 3  # three distinct quantized checkpoints
    assert set(points["tags.colq.baseline_run_id"]) == {baseline.iloc[0]["run_id"]}
    for metric in (
        "ndcg5/avg_all", "ndcg5/avg_en", "ndcg5/delta_all", "ndcg5/delta_en",
        "entry/VidoreFixtureRetrieval/en/ndcg_at_5", "entry/VidoreFixtureRetrieval/fr/ndcg_at_10",
        "size/total_bytes", "size/original_total_bytes", "quant/seconds", "eval/seconds", "eval/pages_per_s", "eval/queries_per_s",
    ):  # fmt: skip
        assert points[f"metrics.{metric}"].notna().all(), metric
    # the delta is the point's average minus the baseline's, over the same two entries
    b = baseline.iloc[0]["metrics.ndcg5/avg_all"]
    for _, row in points.iterrows():
        assert row["metrics.ndcg5/delta_all"] == pytest.approx(row["metrics.ndcg5/avg_all"] - b, abs=1e-9)
    client = mlflow.tracking.MlflowClient(store(outputs))
    run_id = points.iloc[0]["run_id"]
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "results")}
    assert {"config.yaml", "quantization_manifest.json", "results/entries.csv", "results/per_query.csv"} <= names
    assert any(n.endswith(".log") for n in names)
    assert "colq_sweep summary" in proc.stderr
    assert points["metrics.eval/peak_rss_mb"].notna().all() and baseline["metrics.size/total_bytes"].notna().all()
    assert set(points["tags.colq.eval_hash"]) == set(baseline["tags.colq.eval_hash"])


def test_the_console_shows_stages_and_progress_and_the_log_files_the_rest(first_sweep, fixture_paths):
    """Per point one line as each stage starts and ends, with its time; one evaluation bar over every page and
    query (pages cached after the first subset count as done); auto-round's per-block bar. Third-party chatter
    and loading bars are not on the console; the jobs' log files have the chatter."""
    outputs, proc = first_sweep
    assert proc.returncode == 0
    out, err = proc.stdout, proc.stderr
    for job, seqlen in enumerate((32, 48, 64)):
        who = f"#{job} tiny w4g128 seqlen={seqlen} bs=2 n=4 iters=2 seed=42 | "
        for stage in ("quantize", "evaluate", "baseline", "track"):
            assert out.count(f"{who}{stage}: start") == 1, (stage, out[-3000:])
            assert out.count(f"{who}{stage}: done in ") == 1, (stage, out[-3000:])
        assert f"{who}track: done in" in out and "FINISHED: avg ndcg@5" in out
    task = fixture_paths.task
    pages = len((task / "corpus.jsonl").read_text().splitlines())
    total = sum(pages + len((task / f"queries-{s}.jsonl").read_text().splitlines()) for s in ("en", "fr"))
    assert err.count(f"| evaluate: 100%") == 3 and err.count(f" {total}/{total} [") >= 3  # noqa: F541
    assert "item/s]" in err and "Quantizing vlm.model.language_model.layers" in err  # rate; auto-round's bar
    chatter = ("Running task VidoreFixtureRetrieval", "Passing 'group_size' directly", "Loading weights",
               "Downloading artifacts", "UserWarning", "Creating initial MLflow database", "repacking to CPU",
               "Map:", "INFO")  # fmt: skip
    for line in chatter:
        assert line not in out + err, line
    logs = [p.read_text() for p in outputs.glob("hydra/demo/multirun-*/*/__main__.log")]
    assert len(logs) == 3
    for text in logs:
        assert "[mteb." in text and "Running task VidoreFixtureRetrieval" in text and "[autoround][" in text
        assert "| quantize: start" in text and "[py.warnings][WARNING]" in text


def test_report_from_the_real_sweep(first_sweep):
    """The report reads what the sweep logged: same runs, same numbers, logged back to the parent run."""
    from colq_sweep.report import build_report

    outputs, proc = first_sweep
    assert proc.returncode == 0
    path = build_report("demo", outputs_dir=outputs, n_boot=200)
    text = path.read_text()
    df = runs(outputs)
    points = df[df["tags.colq.role"] == "quantized"]
    for _, row in points.iterrows():
        assert f"`{row['tags.colq.label']}`" in text or f"seqlen={row['params.seqlen']}" in text
        assert f"{row['metrics.ndcg5/avg_all']:.5f}" in text
    base = df[df["tags.colq.role"] == "baseline"].iloc[0]
    assert f"{base['metrics.ndcg5/avg_all']:.5f}" in text
    parent = df[df["tags.colq.role"] == "sweep"].iloc[0]["run_id"]
    logged = {a.path for a in mlflow.tracking.MlflowClient(store(outputs)).list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html"} <= logged


def test_the_runs_read_apart_in_the_mlflow_ui(first_sweep):
    """What the MLflow UI lists, read through MLflow's API after the sweep and its report: run names that differ in
    their first 14 characters, no quantization or calibration params on the original, tags to group by, each
    configuration's interval and significance, one best, the parent's axes and recommendation, `make ui`'s
    address of the runs view, a logged model per checkpoint (where it lies) with its metrics, the evaluated task and
    the calibration set as dataset inputs, the entries table, and the one command that registers the best."""
    from colq_sweep.report import build_report

    outputs, proc = first_sweep
    assert proc.returncode == 0
    build_report("demo", outputs_dir=outputs, n_boot=200, plots=False)
    client = mlflow.tracking.MlflowClient(store(outputs))
    exp = client.get_experiment_by_name("demo").experiment_id
    points = client.search_runs([exp], "tags.`colq.role` = 'quantized'")
    names = sorted(r.info.run_name for r in points if r.data.params["seqlen"] in ("32", "48", "64"))
    by_knob = sorted(points, key=lambda r: r.data.metrics["knob/seqlen"])  # numeric knobs sort as numbers (metrics)
    assert [r.data.metrics["knob/seqlen"] for r in by_knob][:3] == [32.0, 48.0, 64.0]
    assert all(r.data.metrics["knob/quant.bits"] == 4.0 and "knob/eval.page_batch_size" not in r.data.metrics for r in points)
    assert len({n[:14] for n in names}) == len(names) == 3 and names[0].startswith("seqlen=32 · tiny w4g128"), names
    (base,) = client.search_runs([exp], "tags.`colq.role` = 'baseline'")
    assert base.info.run_name == "original · tiny (baseline)" and base.data.tags["colq.method"] == "none"
    assert [k for k in base.data.params if k.startswith(("quant.", "calib.")) or k in ("seqlen", "iters", "seed")] == ["quant.method"]
    base_files = {a.path for a in client.list_artifacts(base.info.run_id)}
    assert "config.yaml" in base_files and any(f.endswith(".log") for f in base_files)  # its settings, its job's log
    # params: the settings that define the result, as config.yaml has them; nothing unset, no testing aid, no
    # speed-only knob; metrics grouped under one name per quantity whatever the role
    for r in [*points, base]:
        params = r.data.params
        assert not {"fail_point", "force", "outputs_dir", "name", "system_metrics", "eval.page_batch_size",
                    "eval.preprocess_workers", "eval.corpus_cache"} & set(params) and "" not in params.values()
        assert "None" not in params.values(), [k for k, v in params.items() if v == "None"]
        cfg = OmegaConf.create(Path(client.download_artifacts(r.info.run_id, "config.yaml", str(outputs / "ui-check" / r.info.run_id))).read_text())
        for k, v in params.items():
            want = OmegaConf.select(cfg, k, default=OmegaConf.select(cfg, k.replace("eval.", "eval.encoder.", 1)))
            if want is not None and not OmegaConf.is_config(want) and want != "auto":  # auto: logged as resolved
                assert str(want).lower() == v.lower(), (k, want, v)
        grouped = [k for k in r.data.metrics if not k.startswith(("entry/", "system/"))]
        assert all("/" in k for k in grouped) and {"size/total_bytes", "ndcg5/avg_all", "eval/seconds"} <= set(grouped)
        assert not {"avg_main_score_all", "quant_wall_time_s", "calib_samples_used", "base_params_total"} & set(r.data.metrics)
    best = []
    for r in points:
        m, t = r.data.metrics, r.data.tags
        assert t["colq.method"] == "signround" and t["colq.scheme"] == "W4A16G128"
        assert m["ndcg5/delta_all_ci_low"] <= m["ndcg5/delta_all"] <= m["ndcg5/delta_all_ci_high"]
        assert m["ndcg5/delta_pct_all_ci_low"] <= m["ndcg5/delta_pct_all"] <= m["ndcg5/delta_pct_all_ci_high"]
        sig = "degraded" if m["ndcg5/delta_all_ci_high"] < 0 else "improved" if m["ndcg5/delta_all_ci_low"] > 0 \
            else "not significant"
        assert t["colq.significance"] == sig
        best += [r] if t["colq.best"] == "true" else []
    assert len(best) == 1 and best[0].data.metrics["ndcg5/avg_all"] == max(r.data.metrics["ndcg5/avg_all"] for r in points)
    parents = client.search_runs([exp], "tags.`colq.role` = 'sweep'", order_by=["attributes.start_time DESC"])
    newest = parents[0].data
    # parents read apart by what they compare and when (not the fixed overrides, paths, or how it was launched)
    assert re.fullmatch(r"sweep seqlen=32,48,64 · \d\d-\d\d \d\d:\d\d", parents[-1].info.run_name), parents[-1].info.run_name
    axes = {k: v for k, v in parents[-1].data.params.items() if k.startswith("sweep.")}
    assert axes == {"sweep.seqlen": "32,48,64"}  # its axes and values, logged as it starts
    assert set(newest.params["report.levels.seqlen"].split(",")) >= {"32", "48", "64"}  # what the report compared
    assert newest.tags["mlflow.note.content"].startswith("**`tiny`: use `") and newest.metrics["sweep/tiny/configurations"] == len(points)
    ui = subprocess.run([sys.executable, "-m", "colq_sweep.track.ui", "--outputs-dir", str(outputs), "--print-only"],
                        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ui.returncode == 0 and f"http://127.0.0.1:5000/#/experiments/{exp}?workflowType=machine_learning" in ui.stdout
    # the Models tab: each checkpoint a logged model where it lies, with its params and the run's metrics linked
    models = {m.source_run_id: m for m in client.search_logged_models([exp])}
    assert len({models[r.info.run_id].name for r in points}) == len(points)  # the Models tab tells them apart
    for r in [*points, base]:
        m = models[r.info.run_id]
        assert str(m.status).endswith("READY") and m.model_type == "colqwen3"
        assert {x.key: x.value for x in m.metrics}["ndcg5/avg_all"] == r.data.metrics["ndcg5/avg_all"]
        assert [o.model_id for o in r.outputs.model_outputs] == [m.model_id]
        uri = m.tags["colq.checkpoint_uri"]
        assert uri.startswith("file://") and Path(uri[len("file://"):]).is_dir()
        if r is base:
            assert m.name == "tiny-original" and "quant.bits" not in m.params
        else:
            assert m.params["quant.bits"] == "4" and m.params["seqlen"] == r.data.params["seqlen"]
            assert uri.endswith(r.data.tags["colq.artifact_key"])  # the cached artifact, not a copy
        contexts = {d.dataset.name: [t.value for t in d.tags] for d in r.inputs.dataset_inputs}
        assert contexts["VidoreFixtureRetrieval"] == ["evaluation"] and (r is base) == (len(contexts) == 1)
        assert "eval/entries.json" in {a.path for a in client.list_artifacts(r.info.run_id, "eval")}
    register = [sys.executable, "-m", "colq_sweep.track.ui", "--outputs-dir", str(outputs), "--register-best", "colq-t"]
    reg = subprocess.run([*register, "--name", "demo"], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120)
    assert reg.returncode == 0 and reg.stdout.startswith("registered colq-t version 1: tiny w4g128"), reg.stderr[-2000:]
    (version,) = client.search_model_versions("name = 'colq-t'")
    assert version.run_id == best[0].info.run_id and version.source == f"models:/{models[best[0].info.run_id].model_id}"


# what differs between two trackings of the same points by nature: clocks, memory peaks, what caches served, where
# the store is, and who ran it
TIMING = ("seconds", "_per_s", "peak_rss_mb", "peak_cuda_mb")
# what a job measured by doing the work: a point served from caches encodes nothing and loads no model
CACHE_COUNTERS = {"eval/pages_encoded", "eval/queries_encoded", "eval/pages_from_cache", "eval/pages_from_disk", "eval/weights_device_mb"}
SAME_TAGS = ("colq.role", "colq.model", "colq.label", "colq.config_hash", "colq.eval_hash", "colq.artifact_key",
             "colq.kernel_backend", "colq.kernel_compute_dtype", "colq.dataset_revisions", "colq.device",
             "mlflow.source.git.commit", "version.mlflow", "version.auto-round")  # fmt: skip


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def _same_sweep_view(uri: str, tmp: Path) -> dict:
    """Every run of the demo experiment's one sweep, by (role, label): params, numeric metrics (timing and cache
    counters left out), identity tags, artifact names (logs and reports left out) and the bytes of each result
    artifact, the manifest and the config (its tracking_uri line left out)."""
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("demo")
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        t = run.data.tags
        key = (t["colq.role"], t.get("colq.label", "-"))
        assert key not in out, f"two runs {key}"
        names = [n for n in _artifacts(client, run.info.run_id) if not n.endswith(".log") and not n.startswith("report/")]
        files = {}
        for name in names:
            if name.startswith("results/") or name in ("quantization_manifest.json", "config.yaml"):
                text = Path(client.download_artifacts(run.info.run_id, name, str(tmp / run.info.run_id))).read_text()
                files[name] = "\n".join(ln for ln in text.splitlines() if not ln.startswith("tracking_uri:"))
        # a baseline's knob params are those of whichever point computed it first (they do not enter its run key)
        skip = {"tracking_uri"} | ({"seqlen", "batch_size", "nsamples", "iters", "seed"} if key[0] == "baseline" else set())
        # what a report writes back onto the runs (report/annotate.py): only the store a report was built from has it
        annotated = ("_ci_low", "_ci_high", "/ndcg5_avg_all", "/ndcg5_delta_pct_all", "/configurations")
        out[key] = {
            "status": run.info.status,
            "params": {k: v for k, v in run.data.params.items() if k not in skip and not k.startswith("report.levels.")},
            "metrics": {k: v for k, v in run.data.metrics.items()
                        if not k.endswith(TIMING) and k not in CACHE_COUNTERS and not k.endswith(annotated)},  # fmt: skip
            "tags": {k: t.get(k) for k in SAME_TAGS},
            "has_parent": t.get("mlflow.parentRunId") is not None,
            "artifacts": sorted(names),
            "files": files,
        }
    return out


def _report_view(report: Path) -> dict:
    """The report's numbers and text, without run ids, its time stamp and store line, the speed table and the
    frontier (speed is one of its objectives)."""
    import re

    import pandas as pd

    def no_ids(text: str) -> str:
        return re.sub(r"\b[0-9a-f]{32}\b", "<run>", text)

    md = report.read_text()
    for timed in ("## Across models", "## Speed and memory"):  # measured speeds (and the frontier they enter)
        cut = md.index(timed)
        md = md[:cut] + md[md.index("\n## ", cut):]
    md = no_ids("\n".join(ln for ln in md.splitlines() if not ln.startswith("Generated ")))
    summary = pd.read_csv(report.parent / "summary.csv")
    summary = summary[[c for c in summary.columns if c != "run_id" and not c.endswith(TIMING)]]
    return {"md": md, "summary": summary.to_csv(index=False), "entries": no_ids((report.parent / "entries.csv").read_text())}


def test_the_same_sweep_through_an_mlflow_server_tracks_the_same(first_sweep, fixture_paths, mlflow_server, tmp_path):
    """The demo sweep logged to a real `mlflow server` (REST + proxied artifacts) holds exactly what the embedded
    sqlite store holds: every run, param, metric and per-query file, and the same report. The points reuse the first
    sweep's quantized artifacts and cached results (same outputs_dir), so only the store differs."""
    from colq_sweep.report import build_report

    outputs, first = first_sweep
    assert first.returncode == 0
    # the same three points (all three jobs at once: how many run side by side changes nothing tracked)
    proc = sweep(outputs, fixture_paths.root, "seqlen=32,48,64", "hydra.launcher.max_parallel=3",
                 f"tracking_uri={mlflow_server}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    embedded, served = _same_sweep_view(store(outputs), tmp_path / "a"), _same_sweep_view(mlflow_server, tmp_path / "b")
    assert sorted(embedded) == sorted(served) and len(served) == 5  # the sweep, the baseline and three points
    for key in embedded:
        a, b = embedded[key], served[key]
        differ = {(part, k): (a[part].get(k), b[part].get(k)) for part in ("params", "metrics", "tags", "files")
                  for k in a[part].keys() | b[part].keys() if a[part].get(k) != b[part].get(k)}
        assert not differ and a == b, (key, differ)
    assert all(any(k.startswith("entry/") for k in v["metrics"]) for (role, _), v in served.items() if role != "sweep")
    assert all(v["files"].get("results/per_query.csv") for (role, _), v in served.items() if role != "sweep")
    assert not any(k.startswith("system/") for v in served.values() for k in v["metrics"])  # auto: off on CPU
    reports = [build_report("demo", tracking_uri=uri, outputs_dir=outputs, out_dir=tmp_path / name, n_boot=200)
               for uri, name in ((store(outputs), "embedded"), (mlflow_server, "served"))]  # fmt: skip
    assert _report_view(reports[0]) == _report_view(reports[1])


def test_rerun_quantizes_and_evaluates_nothing(first_sweep, fixture_paths):
    outputs, first = first_sweep
    assert first.returncode == 0
    before = runs(outputs)
    models = {p.name: p.stat().st_mtime_ns for p in (outputs / "models").iterdir()}
    proc = sweep(outputs, fixture_paths.root, "seqlen=32,48,64")
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = runs(outputs)
    assert len(after[after["tags.colq.role"] != "sweep"]) == len(before[before["tags.colq.role"] != "sweep"])
    assert proc.stderr.count("SKIPPED") == 3
    assert (proc.stdout + proc.stderr).count("already FINISHED") == 3
    assert {p.name: p.stat().st_mtime_ns for p in (outputs / "models").iterdir()} == models


def test_a_local_calibration_file_as_typed_gives_the_fixture_artifact(first_sweep, fixture_paths):
    """`calib=local calib.path=<file>` from the command line (a mandatory `???` key) runs, and the same file gives
    the same artifact as `calib=fixture` (the first sweep's seqlen=32 point): reused, not rebuilt."""
    outputs, first = first_sweep
    assert first.returncode == 0
    proc = sweep(outputs, fixture_paths.root, "calib=local", f"calib.path={fixture_paths.calibration}", "seqlen=32",
                 "name=local", multirun=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = runs(outputs)
    ref = df[(df["tags.colq.role"] == "quantized") & (df["params.seqlen"] == "32")].iloc[0]
    client = mlflow.tracking.MlflowClient(store(outputs))
    (run,) = client.search_runs([client.get_experiment_by_name("local").experiment_id], "tags.`colq.role` = 'quantized'")
    assert run.info.status == "FINISHED" and run.data.params["calib.path"] == str(fixture_paths.calibration)
    assert run.data.tags["colq.artifact_key"] == ref["tags.colq.artifact_key"]
    assert run.data.tags["colq.artifact_reused"] == "true"


def test_the_tracking_server_lost_mid_sweep(first_sweep, fixture_paths, killable_mlflow_server, tmp_path):
    """`mlflow server` killed (SIGKILL) while a point works: the console says so within seconds, the point finishes
    its stage (its artifact stays on disk), the sweep ends with its summary and exit 1, no traceback; against the
    restarted server the rerun finishes both points, reusing that artifact, and the lost run is marked KILLED."""
    import time

    from tests.support import hold_env

    outputs, first = first_sweep
    assert first.returncode == 0
    server = killable_mlflow_server
    log = tmp_path / "sweep.log"
    args = command(outputs, fixture_paths.root, "seqlen=56,64", f"tracking_uri={server.url}", "name=lost")
    env = environment(**hold_env(5), COLQ_SERVER_WATCH_INTERVAL_S="1")
    with log.open("w") as fh:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "quantize: start" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        server.kill()
        killed = time.monotonic()
        proc.wait(timeout=300)
    took, out = time.monotonic() - killed, log.read_text()
    assert proc.returncode == 1 and "Traceback" not in out, out[-4000:]
    lost = out.index(f"the tracking server {server.url} does not answer")
    assert lost < out.index("quantize: failed") and "colq_sweep summary" in out  # said while the point worked
    assert out.count("FAILED (TrackingUnavailable") == 2 and "could not be closed" in out and took < 90, (took, out[-3000:])
    models = {p.name for p in (outputs / "models").iterdir()}
    restarted = server.restart()
    again = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(restarted.url)
    exp = client.get_experiment_by_name("lost").experiment_id
    points = client.search_runs([exp], "tags.`colq.role` = 'quantized'")
    by_status = sorted((r.info.status, r.data.params["seqlen"]) for r in points)
    assert by_status == [("FINISHED", "56"), ("FINISHED", "64"), ("KILLED", "56")], by_status
    rerun_56 = next(r for r in points if r.info.status == "FINISHED" and r.data.params["seqlen"] == "56")
    assert rerun_56.data.tags["colq.artifact_reused"] == "true" and rerun_56.data.tags["colq.artifact_key"] in models


def test_a_failing_point_is_failed_and_the_others_finish(first_sweep, fixture_paths):
    outputs, first = first_sweep
    assert first.returncode == 0
    proc = sweep(outputs, fixture_paths.root, "seqlen=40", "fail_point=true,false")
    assert proc.returncode == 1
    assert "1 of 2 sweep points failed" in proc.stderr
    df = runs(outputs)
    mine = df[(df["tags.colq.role"] == "quantized") & (df["params.seqlen"] == "40")]
    assert "params.fail_point" not in df or mine["params.fail_point"].isna().all()  # a testing aid, not a param
    by_fail = {"True" if r["status"] == "FAILED" else "False": r for _, r in mine.iterrows()}
    assert sorted(mine["status"]) == ["FAILED", "FINISHED"]
    assert "made to fail" in by_fail["True"]["tags.colq.error"]
    client = mlflow.tracking.MlflowClient(store(outputs))
    tb = client.download_artifacts(by_fail["True"]["run_id"], "traceback.txt")
    assert "RuntimeError" in Path(tb).read_text()
    # a FAILED run carries the same config artifact as a FINISHED one
    for row in by_fail.values():
        cfg = Path(client.download_artifacts(row["run_id"], "config.yaml")).read_text()
        assert "seqlen: 40" in cfg and f"fail_point: {'true' if row['status'] == 'FAILED' else 'false'}" in cfg
    # the job directories hold the status files the summary was built from
    statuses = [json.loads(p.read_text())["status"] for p in outputs.glob("hydra/demo/multirun-*/*/colq_status.json")]
    assert statuses.count("FAILED") == 1
    # resume: the failed point runs again, the finished one is skipped
    again = sweep(outputs, fixture_paths.root, "seqlen=40", "fail_point=true,false")
    assert again.returncode == 1 and "SKIPPED" in again.stderr
    df = runs(outputs)
    mine = df[(df["tags.colq.role"] == "quantized") & (df["params.seqlen"] == "40")]
    assert sorted(mine["status"]) == ["FAILED", "FAILED", "FINISHED"]


def test_a_corrupted_artifact_is_rebuilt_not_reused(first_sweep, fixture_paths):
    """Bytes flipped in a finished artifact (same size): the next point with that artifact key (another load-back
    backend, so another run) verifies the content, removes the artifact, rebuilds it, and gets the intact numbers
    (ark and dequant agree exactly, so they must equal the first sweep's)."""
    outputs, first = first_sweep
    assert first.returncode == 0
    df = runs(outputs)
    ark = df[(df["tags.colq.role"] == "quantized") & (df["params.seqlen"] == "32") & (df["params.quant.backend"] == "auto")]
    key = ark.iloc[0]["tags.colq.artifact_key"]
    weights = outputs / "models" / key / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
    weights.write_bytes(bytes(data))
    proc = sweep(outputs, fixture_paths.root, "seqlen=32", "quant.backend=dequant")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{key} failed verification (model.safetensors sha256 differs from the manifest)" in proc.stdout + proc.stderr
    df = runs(outputs)
    deq = df[(df["tags.colq.role"] == "quantized") & (df["params.quant.backend"] == "dequant")]
    assert len(deq) == 1 and deq.iloc[0]["status"] == "FINISHED"
    assert deq.iloc[0]["tags.colq.artifact_key"] == key and deq.iloc[0]["tags.colq.artifact_reused"] == "false"
    assert deq.iloc[0]["metrics.ndcg5/avg_all"] == ark.iloc[0]["metrics.ndcg5/avg_all"]
