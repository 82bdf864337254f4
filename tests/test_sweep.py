"""End to end on the fixtures: Hydra multirun -> quantize -> evaluate -> MLflow, resumable, failure-isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sweep(outputs: Path, fixtures: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "colq_sweep", "-m", "experiment=demo", f"outputs_dir={outputs}",
        f"model.path={fixtures / 'tiny-colqwen3'}", f"calib.path={fixtures / 'calib.jsonl'}",
        f"eval.fixture_dir={fixtures / 'vidore-fixture'}", "iters=2", "nsamples=4", "batch_size=2", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


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
        "avg_ndcg_at_5_all", "avg_ndcg_at_5_en", "delta_ndcg_at_5_all", "delta_ndcg_at_5_en",
        "entry/VidoreFixtureRetrieval/en/ndcg_at_5", "entry/VidoreFixtureRetrieval/fr/ndcg_at_10",
        "quant_total_bytes", "base_total_bytes", "quant_seconds", "eval_seconds", "pages_per_s", "queries_per_s",
    ):  # fmt: skip
        assert points[f"metrics.{metric}"].notna().all(), metric
    # the delta is the point's average minus the baseline's, over the same two entries
    b = baseline.iloc[0]["metrics.avg_ndcg_at_5_all"]
    for _, row in points.iterrows():
        assert row["metrics.delta_ndcg_at_5_all"] == pytest.approx(row["metrics.avg_ndcg_at_5_all"] - b, abs=1e-9)
    client = mlflow.tracking.MlflowClient(store(outputs))
    run_id = points.iloc[0]["run_id"]
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "results")}
    assert {"config.yaml", "quantization_manifest.json", "results/entries.csv", "results/per_query.csv"} <= names
    assert any(n.endswith(".log") for n in names)
    assert "colq_sweep summary" in proc.stderr
    assert points["metrics.eval_peak_rss_mb"].notna().all() and baseline["metrics.total_bytes"].notna().all()
    assert set(points["tags.colq.eval_hash"]) == set(baseline["tags.colq.eval_hash"])


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
        assert f"{row['metrics.avg_ndcg_at_5_all']:.5f}" in text
    base = df[df["tags.colq.role"] == "baseline"].iloc[0]
    assert f"{base['metrics.avg_ndcg_at_5_all']:.5f}" in text
    parent = df[df["tags.colq.role"] == "sweep"].iloc[0]["run_id"]
    logged = {a.path for a in mlflow.tracking.MlflowClient(store(outputs)).list_artifacts(parent, "report")}
    assert "report/report.md" in logged


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


def test_a_failing_point_is_failed_and_the_others_finish(first_sweep, fixture_paths):
    outputs, first = first_sweep
    assert first.returncode == 0
    proc = sweep(outputs, fixture_paths.root, "seqlen=40", "fail_point=true,false")
    assert proc.returncode == 1
    assert "1 of 2 sweep points failed" in proc.stderr
    df = runs(outputs)
    mine = df[(df["tags.colq.role"] == "quantized") & (df["params.seqlen"] == "40")]
    by_fail = {r["params.fail_point"]: r for _, r in mine.iterrows()}
    assert by_fail["True"]["status"] == "FAILED" and by_fail["False"]["status"] == "FINISHED"
    assert "made to fail" in by_fail["True"]["tags.colq.error"]
    client = mlflow.tracking.MlflowClient(store(outputs))
    tb = client.download_artifacts(by_fail["True"]["run_id"], "traceback.txt")
    assert "RuntimeError" in Path(tb).read_text()
    # a FAILED run carries the same config artifact as a FINISHED one
    for row in by_fail.values():
        cfg = Path(client.download_artifacts(row["run_id"], "config.yaml")).read_text()
        assert "seqlen: 40" in cfg and f"fail_point: {row['params.fail_point'].lower()}" in cfg
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
    assert deq.iloc[0]["metrics.avg_ndcg_at_5_all"] == ark.iloc[0]["metrics.avg_ndcg_at_5_all"]
