"""The real path, offline: Hub ids at pinned revisions, `datasets`, mteb's own ViDoRe task classes and loaders,
against a Hugging Face cache in the real layout built from the project's own tiny data (colq_sweep.fixtures.hub)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from colq_sweep.fixtures.hub import HUB_TASKS, PILE_REVISION, build_hub_cache
from colq_sweep.tasks import DATASETS

ROOT = Path(__file__).resolve().parents[1]
REAL = ["model=colqwen3-4b", "calib=pile10k", f"calib.revision={PILE_REVISION}", "eval=vidore",
        f"eval.tasks=[{','.join(HUB_TASKS)}]", "eval.languages=[en,fr]", "model.dtype=float32",
        "iters=2", "nsamples=4", "batch_size=2", "seqlen=32", "device=cpu", "name=real"]  # fmt: skip
EXPECTED = {("VidoreArxivQARetrieval", "default"), ("Vidore2ESGReportsRetrieval", "english"),
            ("Vidore2ESGReportsRetrieval", "french"), ("Vidore3ComputerScienceRetrieval", "english"),
            ("Vidore3ComputerScienceRetrieval", "french")}  # fmt: skip


def env_for(hf_home: Path, offline: bool = True, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE", "MLFLOW_TRACKING"))}
    env.update(HF_HOME=str(hf_home), MLFLOW_ENABLE_ASYNC_LOGGING="false", **(extra or {}))
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def run(args: list[str], hf_home: Path, offline: bool = True, module: str = "colq_sweep", env: dict | None = None):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env_for(hf_home, offline, env),
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory, fixture_paths) -> Path:
    return build_hub_cache(tmp_path_factory.mktemp("hf-home"), fixture_paths, ROOT / "conf")


def test_prefetch_check_lists_every_missing_item_and_passes_on_the_cache(hub_home, tmp_path):
    empty = run(["--check", *REAL], tmp_path / "empty-hf-home", module="colq_sweep.prefetch")
    assert empty.returncode == 2, empty.stderr[-2000:]
    lines = empty.stderr.strip().splitlines()
    assert len(lines) == 5 and all(ln.startswith("colq_sweep: missing: ") for ln in lines)
    assert all("fetch it with: python -m colq_sweep.prefetch model=colqwen3-4b" in ln for ln in lines)
    for item in ("model TomoroAI/tomoro-colqwen3-embed-4b@6a32fb685987", "calibration NeelNanda/pile-10k",
                 *(f"dataset {DATASETS[t][0]}@{DATASETS[t][1][:12]}" for t in HUB_TASKS)):  # fmt: skip
        assert sum(item in ln for ln in lines) == 1, item
    ok = run(["--check", *REAL], hub_home, module="colq_sweep.prefetch")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.count(" cached ") == 5


def test_online_sweep_without_the_hub_stops_in_seconds(tmp_path):
    """Not offline, but the Hub cannot be reached (no network here): one line per item, exit 2, nothing launched."""
    t0 = time.time()
    proc = run(["-m", *REAL, f"outputs_dir={tmp_path / 'out'}", "seqlen=32,64"], tmp_path / "hf", offline=False)
    assert proc.returncode == 2 and time.time() - t0 < 60, proc.stderr[-2000:]
    assert "the Hub did not answer" in proc.stderr and "[nothing was launched]" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_cached_dataset_revision_is_refused_in_one_line(hub_home, tmp_path, monkeypatch):
    import datasets
    import mteb

    from colq_sweep.hub.cache import publish_dataset
    from colq_sweep.hub.inputs import DatasetRevisionError, loaded_revision

    other = tmp_path / "datasets"
    repo, pinned = DATASETS["VidoreArxivQARetrieval"]
    for config in ("corpus", "queries", "qrels"):  # the same data, cached under another revision
        src = datasets.load_dataset(repo, config, split="test", cache_dir=str(hub_home / "datasets"))
        publish_dataset(repo, {"test": lambda src=src: iter(src)}, "e" * 40, config, features=src.features, cache_dir=other)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", other)
    task = mteb.get_task("VidoreArxivQARetrieval")
    with pytest.raises(DatasetRevisionError, match=rf"the cached {repo} is revision eeeeeeeeeeee, mteb pins {pinned[:12]}"):
        loaded_revision(task)
    assert loaded_revision(task, allow_other=True) == "e" * 40 and task.metadata.dataset["revision"] == "e" * 40
    task.metadata.dataset["revision"] = pinned  # (class-level metadata: restore it for other tests)
    # the same before launch, through the CLI: one line, exit 2
    hf = tmp_path / "hf-home"
    hf.mkdir()
    (hf / "datasets").symlink_to(other)
    (hf / "hub").symlink_to(hub_home / "hub")
    proc = run([*REAL, "quant=none", "eval.tasks=[VidoreArxivQARetrieval]", f"outputs_dir={tmp_path / 'out'}"], hf)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert "config corpus is cached at revision eeeeeeeeeeee, not the pinned 179762404662" in line


def _ndcg_at_5(scores: dict[str, float], qrels: dict[str, int]) -> float:
    """trec_eval's ndcg_cut_5 (linear gains), written out independently of pytrec_eval and mteb."""
    ranked = sorted(scores, key=lambda d: -scores[d])[:5]
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
    ideal = sorted(qrels.values(), reverse=True)[:5]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def _recompute(model, processor, hub_home: Path) -> dict[tuple[str, str, str], float]:
    """(task, subset, query id) -> NDCG@5 from the model's own embeddings and a plain MaxSim, on the cached data."""
    import datasets

    def load(repo, config):
        return datasets.load_dataset(repo, config, split="test", cache_dir=str(hub_home / "datasets"))

    def embed(batch):
        with torch.no_grad():
            out = model(**batch).float()
        mask = batch["attention_mask"].bool()
        return [o[m] for o, m in zip(out, mask, strict=True)]

    out = {}
    for task in HUB_TASKS:
        repo, _ = DATASETS[task]
        v3 = task.startswith("Vidore3")
        for lang, subset in (("en", "english"), ("fr", "french")):
            if task.startswith("VidoreArxiv") and lang != "en":
                continue
            prefix = f"{subset}-" if v3 else ""
            corpus, queries, qrels_ds = (load(repo, prefix + c) for c in ("corpus", "queries", "qrels"))
            if not v3 and "language" in queries.column_names:
                queries = queries.filter(lambda q, s=subset: q["language"] == s)
            pid = "id" if v3 else "corpus-id"
            page_embs = embed(processor.process_images([p["image"].convert("RGB") for p in corpus]))
            pages = {str(p[pid]): e for p, e in zip(corpus, page_embs, strict=True)}
            qrels: dict[str, dict[str, int]] = {}
            for r in qrels_ds:
                qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
            query_embs = embed(processor.process_queries([q["text"] if v3 else q["query"] for q in queries]))
            for q, qe in zip(queries, query_embs, strict=True):
                qid = str(q["id"] if v3 else q["query-id"])
                scores = {d: float((qe @ pe.T).max(dim=1).values.sum()) for d, pe in pages.items()}
                key = (task, "default" if task.startswith("VidoreArxiv") else subset, qid)
                out[key] = _ndcg_at_5(scores, qrels.get(qid, {}))
    return out


@pytest.mark.slow
def test_real_presets_offline_end_to_end(hub_home, tmp_path, fixture_paths):
    """`model=colqwen3-4b calib=pile10k eval=vidore` through the CLI, MLflow and mteb's own loaders: the quantized
    point and its baseline FINISH with exactly the expected entries, each corpus encoded once, and every
    per-query NDCG@5 equal to an independent recomputation from the models' embeddings.

    It runs on the gpu-pool launcher with two CPU slots and one point, so the idle slot helps evaluate (task-level
    sharding, `share_idle`): each evaluation's three tasks are split between the point and a helper, every task
    evaluated once, and the scores are still the recomputation's. (The owner waits for the helper's first claim,
    a testing aid, so that the split does not depend on how fast a process starts here.)"""
    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.quantize.load import load_quantized

    outputs = tmp_path / "out"
    pool = ["hydra/launcher=gpu-pool", "hydra.launcher.devices=cpu", "hydra.launcher.max_parallel=2"]
    proc = run(["-m", *REAL, *pool, f"outputs_dir={outputs}"], hub_home, env={"COLQ_SWEEP_TEST_SHARD_WAIT_S": "120"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    exp = client.get_experiment_by_name("real")
    runs = {r.data.tags["colq.role"]: r for r in client.search_runs([exp.experiment_id])}
    assert {k: r.info.status for k, r in runs.items()} == {"sweep": "FINISHED", "quantized": "FINISHED", "baseline": "FINISHED"}
    base_dir = hub_home / "hub/models--TomoroAI--tomoro-colqwen3-embed-4b/snapshots/6a32fb68598730bf5620fbf18d832c784235c59c"
    artifact = outputs / "models" / runs["quantized"].data.tags["colq.artifact_key"]
    assert json.loads(runs["baseline"].data.tags["colq.dataset_revisions"]) == {t: DATASETS[t][1] for t in HUB_TASKS}
    n_pages = sum(1 for line in (fixture_paths.task / "corpus.jsonl").read_text().splitlines() if line.strip())
    n_queries = {lang: sum(1 for line in (fixture_paths.task / f"queries-{lang}.jsonl").read_text().splitlines() if line.strip())
                 for lang in ("en", "fr")}  # fmt: skip
    for role in ("baseline", "quantized"):
        assert runs[role].data.metrics["eval/pages_encoded"] == 3 * n_pages, role  # 3 corpora, each encoded once
        shards = json.loads(runs[role].data.tags["colq.eval_shards"])  # who evaluated each task
        assert sorted(shards) == sorted(HUB_TASKS), role
        assert "owner" in shards.values() and any(w.startswith("helper-1-") for w in shards.values()), (role, shards)
    assert not list((outputs / "shards").iterdir())  # every board read back and closed
    helper_logs = list(outputs.glob("hydra/real/multirun-*/helpers/helper-*-slot1.log"))
    assert len(helper_logs) == 2 and all("helps evaluate" in f.read_text() for f in helper_logs)
    processor = ColQwen3Processor.from_checkpoint(base_dir, 1280)
    models = {"baseline": load_colqwen3(base_dir, dtype="float32"),
              "quantized": load_quantized(artifact, backend="dequant", dtype="float32")}  # fmt: skip
    for role, model in models.items():
        with tempfile.TemporaryDirectory() as d:
            pq = pd.read_csv(client.download_artifacts(runs[role].info.run_id, "results/per_query.csv", d))
            ent = pd.read_csv(client.download_artifacts(runs[role].info.run_id, "results/entries.csv", d))
        assert set(zip(ent["task"], ent["subset"], strict=True)) == EXPECTED
        logged = {(r.task, r.subset, str(r.query_id)): r.ndcg_at_5 for r in pq.itertuples()}
        # mteb prefixes v1/v2 ids itself (`query-test-<id>`); v3 ids are the dataset's own
        mine = {(t, s, q if t.startswith("Vidore3") else f"query-test-{q}"): v
                for (t, s, q), v in _recompute(model, processor, hub_home).items()}  # fmt: skip
        assert len(mine) == n_queries["en"] * 3 + n_queries["fr"] * 2 and set(logged) == set(mine)
        for key, value in mine.items():
            assert logged[key] == pytest.approx(value, abs=1e-6), (role, key)
        for r in ent.itertuples():  # each entry is the mean of its queries
            scores = [v for (t, s, _), v in mine.items() if (t, s) == (r.task, r.subset)]
            assert r.ndcg_at_5 == pytest.approx(sum(scores) / len(scores), abs=1e-6) and r.n_queries == len(scores)
