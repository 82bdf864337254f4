"""The contract between the sweep and whoever reads its runs (the report, a user in the MLflow UI): run roles,
tag names, result artifacts and their columns, and the metrics a point logs. Written once, imported by both
sides: change a name here and every writer and reader follows."""

from __future__ import annotations

import csv
import os
from typing import Any

# ------------------------------------------------------------------------------------------------ runs
ROLE_SWEEP = "sweep"  # the parent run of one multirun
ROLE_BASELINE = "baseline"  # the unquantized original of a model
ROLE_QUANTIZED = "quantized"  # one quantized sweep point
FINISHED = "FINISHED"

# ------------------------------------------------------------------------------------------------ tags
ROLE = "colq.role"
MODEL = "colq.model"
METHOD, SCHEME = "colq.method", "colq.scheme"  # signround | rtn | signround+awq | none; W4A16G128 | bf16 (to group by)
LABEL = "colq.label"
RUN_KEY = "colq.config_hash"  # keys.point_key: a FINISHED run with this key is not run again
EVAL_HASH = "colq.eval_hash"  # keys.eval_hash: which entries were asked for
ARTIFACT_KEY = "colq.artifact_key"
ARTIFACT_REUSED = "colq.artifact_reused"
KERNEL_BACKEND = "colq.kernel_backend"
KERNEL_COMPUTE = "colq.kernel_compute_dtype"
EVAL_FROM_CACHE = "colq.eval_from_cache"
DATASET_REVISIONS = "colq.dataset_revisions"  # JSON {task: dataset revision really evaluated}
EVAL_SHARDS = "colq.eval_shards"  # JSON {task: owner | helper-<slot>-<pid>}: who evaluated each task (gpu-pool share_idle)
BASELINE_REF = "colq.baseline_run_id"  # the original a quantized run was compared with
ERROR = "colq.error"
VERSION = "colq.version"
GIT_DIRTY = "colq.git_dirty"
DEVICE, DEVICE_NAME, CUDA_VISIBLE = "colq.device", "colq.device_name", "colq.cuda_visible_devices"
GPU_UUID = "colq.gpu_uuid"  # the physical GPU a job ran on (what the dispatch benchmark checks for overlaps)
HOST, PID, PID_START = "colq.host", "colq.pid", "colq.pid_start"  # the process that owns a RUNNING run
# the Slurm job that owns a run made inside one (raw job id, its array form 12_3, the cluster): colq_sweep/launch/slurm.py
SLURM_JOB_ID, SLURM_ARRAY_JOB, SLURM_CLUSTER = "colq.slurm_job_id", "colq.slurm_array_job", "colq.slurm_cluster"
SWEEP_ID, SWEEP_DIR, OVERRIDES = "colq.sweep_id", "colq.sweep_dir", "colq.overrides"
# a search's parent run (hydra/sweeper=colq-tolerance | colq-optuna) and its candidates' runs: search/
SEARCH_KIND, SEARCH_ANSWER = "colq.search.kind", "colq.search.answer"  # tolerance | optuna; the answer in words
SEARCH_CHOSEN, SEARCH_VERDICT = "colq.search.chosen", "colq.search.verdict"  # tolerance: true on the chosen run
SEARCH_BEST, SEARCH_TRIALS = "colq.search.best", "colq.search.trials"  # optuna: best / Pareto member; its trial numbers
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI
CHECKPOINT_URI = "colq.checkpoint_uri"  # a logged model's checkpoint where it lies (track/catalog.py): nothing copied
# written by the report onto the runs it compares (report/annotate.py): the interval of the change, its meaning
SIGNIFICANCE, BEST = "colq.significance", "colq.best"  # degraded | improved | not significant | n/a; true | false
DELTA_CI, DELTA_PCT_CI = "delta_ndcg_at_5_all_ci", "delta_pct_ndcg_at_5_all_ci"  # + _low / _high (95 %)
PARENT = "mlflow.parentRunId"
GIT_COMMIT = "mlflow.source.git.commit"

# ------------------------------------------------------------------------------------------------ artifacts
RESULTS_DIR = "results"
ENTRIES_CSV, PER_QUERY_CSV = "entries.csv", "per_query.csv"
ENTRIES_ARTIFACT = f"{RESULTS_DIR}/{ENTRIES_CSV}"
PER_QUERY_ARTIFACT = f"{RESULTS_DIR}/{PER_QUERY_CSV}"
ENTRIES_TABLE = "eval/entries.json"  # the per-entry scores as an MLflow table (the evaluation view)
SEARCH_ARTIFACT = "search/search.json"  # a search's candidates or trials, their costs, losses, values, verdicts
MTEB_ARTIFACTS = f"{RESULTS_DIR}/mteb"  # mteb's own result file of each task (<Task>.json, TaskResult as mteb wrote it)

# one row per (task, subset) entry, and one row per query (the paired unit of the report's bootstrap)
ENTRY_COLUMNS = (
    "task", "subset", "language", "benchmark", "ndcg_at_5", "ndcg_at_10", "main_metric", "main_score",
    "recall_at_5", "n_queries",
)  # fmt: skip
PER_QUERY_COLUMNS = ("task", "subset", "language", "query_id", "ndcg_at_5", "ndcg_at_10")
NUMERIC_ENTRY = ("ndcg_at_5", "ndcg_at_10", "main_score", "recall_at_5", "n_queries")
NUMERIC_PER_QUERY = ("ndcg_at_5", "ndcg_at_10")


def write_csv(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of an entries or per-query file, the contract's numeric columns as floats."""
    numeric = set(NUMERIC_ENTRY) | set(NUMERIC_PER_QUERY)
    with open(path, newline="") as fh:
        return [{k: (float(v) if k in numeric and v != "" else v) for k, v in row.items()} for row in csv.DictReader(fh)]


# ------------------------------------------------------------------------------------------------ metrics


KNOB = "knob/"  # numeric settings again as metrics (`knob/seqlen`): the MLflow UI sorts params as text, metrics as numbers


def knob_metrics(params: dict[str, Any]) -> dict[str, float]:
    """A point's numeric settings (not the encoder's speed-only batch sizes) as `knob/<param>` metrics."""
    return {f"{KNOB}{k}": float(v) for k, v in params.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("eval.")}  # fmt: skip


def summarise(entries: list[dict]) -> dict[str, float]:
    """A point's averages over its entries (all, English), and each entry's scores as `entry/<task>/<subset>/...`."""

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    en = [e for e in entries if e["language"] == "en"]
    out = {
        "avg_ndcg_at_5_all": mean([e["ndcg_at_5"] for e in entries]),
        "avg_ndcg_at_5_en": mean([e["ndcg_at_5"] for e in en]),
        "avg_ndcg_at_10_all": mean([e["ndcg_at_10"] for e in entries]),
        "avg_ndcg_at_10_en": mean([e["ndcg_at_10"] for e in en]),
        "avg_main_score_all": mean([e["main_score"] for e in entries]),
        "n_entries": float(len(entries)),
        "n_entries_en": float(len(en)),
    }
    for e in entries:
        for metric in ("ndcg_at_5", "ndcg_at_10"):
            out[f"entry/{e['task']}/{e['subset']}/{metric}"] = float(e[metric])
    return out


def compare(entries: list[dict], baseline: list[dict]) -> dict[str, float]:
    """Deltas vs the baseline over the entries both have (the same entries on both sides, always)."""
    base = {(e["task"], e["subset"]): e for e in baseline}
    common = [e for e in entries if (e["task"], e["subset"]) in base]
    out: dict[str, float] = {"n_entries_compared": float(len(common)), "n_entries_missing_vs_baseline": float(len(base) - len(common))}
    for scope, sel in (("all", common), ("en", [e for e in common if e["language"] == "en"])):
        if not sel:
            continue
        q = sum(e["ndcg_at_5"] for e in sel) / len(sel)
        b = sum(base[(e["task"], e["subset"])]["ndcg_at_5"] for e in sel) / len(sel)
        out[f"delta_ndcg_at_5_{scope}"] = q - b
        out[f"delta_pct_ndcg_at_5_{scope}"] = 100.0 * (q - b) / b if b else float("nan")
    diffs = [e["ndcg_at_5"] - base[(e["task"], e["subset"])]["ndcg_at_5"] for e in common]
    out["entries_improved"] = float(sum(d > 0 for d in diffs))
    out["entries_degraded"] = float(sum(d < 0 for d in diffs))
    out["entries_unchanged"] = float(sum(d == 0 for d in diffs))
    return out


def eval_metrics(timing: dict[str, float]) -> dict[str, float]:
    """The evaluation stage's timing under tracked names (peak memory as eval_peak_*)."""
    return {(f"eval_{k}" if k.startswith("peak_") else k): float(v) for k, v in timing.items() if v == v}  # no NaN


def eval_tags(from_cache: bool, dataset_revisions: dict[str, str], shards: dict[str, str] | None = None) -> dict[str, str]:
    """Tags of an evaluation: whether it was served from the result cache, the dataset revisions evaluated, and who
    evaluated each task when helpers on idle slots shared it."""
    import json

    tags = {EVAL_FROM_CACHE: str(from_cache).lower(), DATASET_REVISIONS: json.dumps(dataset_revisions, sort_keys=True)}
    if shards:
        tags[EVAL_SHARDS] = json.dumps(shards, sort_keys=True)
    return tags


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as MLflow params: `quant.bits`, lists joined with commas."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out

