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
SIGNIFICANCE, IS_BEST = "colq.significance", "colq.best"  # degraded | improved | not significant | n/a; true | false
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
# Every quantity a run logs has one name, whatever the run's role, grouped by the part before "/" (the sections of
# the MLflow UI's metric charts): ndcg5/ ndcg10/ (scores and changes), mteb/ (mteb's main score), entries/ (entry
# counts), size/ (the point's checkpoint; size/original_* its original's), params/ (parameter counts), index/,
# quant/, calib/, eval/ (timing and memory), knob/ (numeric settings), entry/<task>/<subset>/<metric>; on a sweep's
# run sweep/ and best/<model>/.
AVG5_ALL, AVG5_EN, AVG10_ALL, AVG10_EN = "ndcg5/avg_all", "ndcg5/avg_en", "ndcg10/avg_all", "ndcg10/avg_en"
DELTA5_ALL, DELTA5_EN = "ndcg5/delta_all", "ndcg5/delta_en"  # quantized - original, over the entries both have
DELTA5_PCT_ALL, DELTA5_PCT_EN = "ndcg5/delta_pct_all", "ndcg5/delta_pct_en"  # in percent of the original
DELTA_CI, DELTA_PCT_CI = "ndcg5/delta_all_ci", "ndcg5/delta_pct_all_ci"  # + _low / _high (95 %: report/annotate.py)
TOTAL_BYTES, WEIGHTS_BYTES = "size/total_bytes", "size/weights_bytes"  # the point's checkpoint on disk
ORIGINAL_TOTAL_BYTES, ORIGINAL_WEIGHTS_BYTES = "size/original_total_bytes", "size/original_weights_bytes"
PARAMS_TOTAL = "params/total"
INDEX_TOTAL_BYTES, INDEX_BYTES_PER_PAGE = "index/total_bytes", "index/bytes_per_page"
QUANT_SECONDS, QUANT_STAGE_SECONDS = "quant/seconds", "quant/stage_seconds"  # building it; the stage (with reuse)
EVAL_SECONDS, PAGES_PER_S = "eval/seconds", "eval/pages_per_s"
SWEEP_POINTS, SWEEP_FAILED = "sweep/points", "sweep/points_failed"
BEST = "best/"  # best/<model>/<metric>: the best configuration's numbers on a sweep's run (report/annotate.py)

# What the producers call them (quantize/sizes.py, evaluate/run.py, evaluate/index.py, the manifest) and what a
# store written before these names holds -> the tracked name; None: a duplicate of another quantity, not logged.
# `tracked` is applied where a point's metrics are logged (pipeline/point.py) and where runs are read (the report,
# the searches, a skipped point), so an old store reads as a new one.
RENAMED: dict[str, str | None] = {
    "avg_ndcg_at_5_all": "ndcg5/avg_all", "avg_ndcg_at_5_en": "ndcg5/avg_en",
    "delta_ndcg_at_5_all": "ndcg5/delta_all", "delta_ndcg_at_5_en": "ndcg5/delta_en",
    "delta_pct_ndcg_at_5_all": "ndcg5/delta_pct_all", "delta_pct_ndcg_at_5_en": "ndcg5/delta_pct_en",
    "delta_ndcg_at_5_all_ci_low": "ndcg5/delta_all_ci_low", "delta_ndcg_at_5_all_ci_high": "ndcg5/delta_all_ci_high",
    "delta_pct_ndcg_at_5_all_ci_low": "ndcg5/delta_pct_all_ci_low",
    "delta_pct_ndcg_at_5_all_ci_high": "ndcg5/delta_pct_all_ci_high",
    "avg_ndcg_at_10_all": "ndcg10/avg_all", "avg_ndcg_at_10_en": "ndcg10/avg_en",
    # mteb's main score averaged: NDCG@5 on ViDoRe v1/v2, NDCG@10 on v3 (equal to ndcg5/avg_all on v1/v2 only)
    "avg_main_score_all": "mteb/avg_main_score",
    "base_params_total": None, "base_params_16bit": None, "base_params_32bit": None,
    "base_params_other": None, "quant_wall_time_s": None, "calib_samples_used": None,
    "n_entries": "entries/n_all", "n_entries_en": "entries/n_en", "n_entries_compared": "entries/compared",
    "n_entries_missing_vs_baseline": "entries/missing_vs_original", "entries_improved": "entries/improved",
    "entries_degraded": "entries/degraded", "entries_unchanged": "entries/unchanged",
    "total_bytes": "size/total_bytes", "weights_bytes": "size/weights_bytes", "quant_total_bytes": "size/total_bytes",
    "quant_weights_bytes": "size/weights_bytes", "quant_meta_bytes": "size/quant_meta_bytes",
    "base_total_bytes": "size/original_total_bytes", "base_weights_bytes": "size/original_weights_bytes",
    "base_text_tensor_bytes": "size/original_text_bytes", "base_vision_tensor_bytes": "size/original_vision_bytes",
    "text_tensor_bytes": "size/text_bytes", "vision_tensor_bytes": "size/vision_bytes",
    "size_reduction_pct": "size/weights_reduction_pct", "total_size_reduction_pct": "size/total_reduction_pct",
    "compression_ratio": "size/compression_ratio", "weight_bits_per_param": "size/bits_per_param",
    "params_total": "params/total", "params_16bit": "params/16bit", "params_32bit": "params/32bit",
    "params_other": "params/other", "params_quantized_pct": "params/quantized_pct",
    "vision_params_quantized_pct": "params/vision_quantized_pct",
    "quant_seconds": "quant/seconds", "quant_build_time_s": "quant/build_seconds",
    "quant_stage_seconds": "quant/stage_seconds", "quant_peak_rss_mb": "quant/peak_rss_mb",
    "quant_peak_cuda_mb": "quant/peak_cuda_mb",
    "samples_used": "calib/samples_used", "calib_samples_requested": "calib/samples_requested",
    "index_bytes_per_page": "index/bytes_per_page", "index_pages": "index/pages",
    "index_total_bytes": "index/total_bytes", "index_transform_seconds": "index/transform_seconds",
    "index_vectors_per_page": "index/vectors_per_page",
    "eval_seconds": "eval/seconds", "eval_peak_rss_mb": "eval/peak_rss_mb", "eval_peak_cuda_mb": "eval/peak_cuda_mb",
    "load_seconds": "eval/load_seconds", "page_seconds": "eval/page_seconds", "query_seconds": "eval/query_seconds",
    "pages_encoded": "eval/pages_encoded", "queries_encoded": "eval/queries_encoded",
    "pages_from_cache": "eval/pages_from_cache", "pages_from_disk": "eval/pages_from_disk",
    "pages_per_s": "eval/pages_per_s", "queries_per_s": "eval/queries_per_s",
    "weights_device_mb": "eval/weights_device_mb",
    "points": "sweep/points", "points_failed": "sweep/points_failed",
}  # fmt: skip


def tracked(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` under their tracked names (`RENAMED`; `params_int4` -> `params/int4`), duplicates dropped."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k.startswith("params_int") and k[len("params_int"):].isdigit():
            k = f"params/int{k[len('params_int'):]}"
        new = RENAMED.get(k, k)
        if new is not None and not (new in out and new != k):
            out[new] = v
    return out


KNOB = "knob/"  # numeric settings again as metrics (`knob/seqlen`): the MLflow UI sorts params as text, metrics as numbers


def knob_metrics(params: dict[str, Any]) -> dict[str, float]:
    """A point's numeric settings as `knob/<param>` metrics."""
    return {f"{KNOB}{k}": float(v) for k, v in params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarise(entries: list[dict]) -> dict[str, float]:
    """A point's averages over its entries (all, English), and each entry's scores as `entry/<task>/<subset>/...`."""

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    en = [e for e in entries if e["language"] == "en"]
    out = {
        AVG5_ALL: mean([e["ndcg_at_5"] for e in entries]),
        AVG5_EN: mean([e["ndcg_at_5"] for e in en]),
        AVG10_ALL: mean([e["ndcg_at_10"] for e in entries]),
        AVG10_EN: mean([e["ndcg_at_10"] for e in en]),
        "mteb/avg_main_score": mean([e["main_score"] for e in entries]),
        "entries/n_all": float(len(entries)),
        "entries/n_en": float(len(en)),
    }
    for e in entries:
        for metric in ("ndcg_at_5", "ndcg_at_10"):
            out[f"entry/{e['task']}/{e['subset']}/{metric}"] = float(e[metric])
    return out


def compare(entries: list[dict], baseline: list[dict]) -> dict[str, float]:
    """Changes vs the original over the entries both have (the same entries on both sides, always)."""
    base = {(e["task"], e["subset"]): e for e in baseline}
    common = [e for e in entries if (e["task"], e["subset"]) in base]
    out: dict[str, float] = {"entries/compared": float(len(common)), "entries/missing_vs_original": float(len(base) - len(common))}
    for (delta, pct), sel in (((DELTA5_ALL, DELTA5_PCT_ALL), common),
                              ((DELTA5_EN, DELTA5_PCT_EN), [e for e in common if e["language"] == "en"])):  # fmt: skip
        if not sel:
            continue
        q = sum(e["ndcg_at_5"] for e in sel) / len(sel)
        b = sum(base[(e["task"], e["subset"])]["ndcg_at_5"] for e in sel) / len(sel)
        out[delta] = q - b
        out[pct] = 100.0 * (q - b) / b if b else float("nan")
    diffs = [e["ndcg_at_5"] - base[(e["task"], e["subset"])]["ndcg_at_5"] for e in common]
    out["entries/improved"] = float(sum(d > 0 for d in diffs))
    out["entries/degraded"] = float(sum(d < 0 for d in diffs))
    out["entries/unchanged"] = float(sum(d == 0 for d in diffs))
    return out


def eval_metrics(timing: dict[str, float]) -> dict[str, float]:
    """The evaluation stage's timing under its tracked names (eval/..., index/...), NaN left out."""
    return tracked({(f"eval_{k}" if k.startswith("peak_") else k): float(v) for k, v in timing.items() if v == v})


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

