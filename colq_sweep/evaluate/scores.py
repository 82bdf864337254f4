"""Scores: mteb's per-query scores kept beside its result cache, the two caches kept in agreement, and each
(task, subset) entry computed as the exact mean of its queries' scores.

mteb hands its per-query pytrec_eval scores to a retrieval task's `task_specific_scores` hook but writes only
their averages; `install_per_query_hook` saves them in `<Task>.per_query.jsonl` next to mteb's `<Task>.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from colq_sweep.contract import PER_QUERY_COLUMNS
from colq_sweep.fsio import atomic_write_text, file_sha256
from colq_sweep.tasks import CATALOGUE, subset_language

if TYPE_CHECKING:
    from mteb.abstasks import AbsTaskRetrieval
    from mteb.cache import ResultCache
    from mteb.models import ModelMeta

log = logging.getLogger(__name__)

# pytrec_eval measure names (as mteb requests them) -> our per-query keys
PER_QUERY_MEASURES = {"ndcg_cut_5": "ndcg_at_5", "ndcg_cut_10": "ndcg_at_10", "recall_5": "recall_at_5"}
# mteb rounds averaged scores to 5 decimals; our entries are exact means of the per-query scores
MTEB_ROUNDING_TOLERANCE = 1e-5


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def per_query_path(cache: ResultCache, task_name: str, meta: ModelMeta) -> Path:
    """`<results>/<org>__<name>/<revision>/<Task>.per_query.jsonl`, beside mteb's `<Task>.json`."""
    return cache.get_task_result_path(task_name, meta).with_name(f"{task_name}.per_query.jsonl")


def read_per_query(path: Path, dataset_revision: str) -> dict[tuple[str, str], list[dict]]:
    """(split, subset) -> records of this dataset revision."""
    out: dict[tuple[str, str], list[dict]] = {}
    if not path.is_file():
        return out
    for rec in read_jsonl(path):
        if rec.get("dataset_revision") == dataset_revision:
            out.setdefault((rec["split"], rec["subset"]), []).append(rec)
    return out


def write_per_query(
    path: Path, task_name: str, revision: str, split: str, subset: str, scores: dict
) -> None:
    """Replace the (split, subset) records of `path` with mteb's per-query pytrec_eval `scores`."""
    kept = [
        r
        for recs in read_per_query(path, revision).values()
        for r in recs
        if (r["split"], r["subset"]) != (split, subset)
    ]
    language = subset_language(task_name, subset)
    for qid in sorted(scores):
        rec = {"task": task_name, "subset": subset, "language": language, "split": split, "query_id": qid}
        rec.update({ours: float(scores[qid][m]) for m, ours in PER_QUERY_MEASURES.items()})
        rec["dataset_revision"] = revision
        kept.append(rec)
    kept.sort(key=lambda r: (r["split"], r["subset"], r["query_id"]))
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def install_per_query_hook(task: AbsTaskRetrieval, path: Path) -> None:
    """Persist the per-query scores mteb hands to `task_specific_scores` (it only writes their averages)."""
    original = task.task_specific_scores
    name, revision = task.metadata.name, task.metadata.revision

    def task_specific_scores(scores, qrels, results, hf_split, hf_subset):
        write_per_query(path, name, revision, hf_split, hf_subset, scores)
        return original(scores, qrels, results, hf_split=hf_split, hf_subset=hf_subset)

    task.task_specific_scores = task_specific_scores


def reconcile_caches(task, cache: ResultCache, meta: ModelMeta) -> str:
    """Make mteb's cached result and our per-query file agree; return the overwrite strategy for this task.

    * a cached result of another dataset revision is stale: mteb's "only-missing" would still return it when
      no subset is missing, so the task runs with "always";
    * a cached subset without per-query scores (e.g. an interrupted run) is dropped from mteb's file so that
      "only-missing" evaluates it again;
    * a result whose files do not match the checksums written after its evaluation (edited, damaged, or left by
      a run killed between the two writes) is deleted and evaluated again: never reused unverified.
    """
    path = cache.get_task_result_path(task.metadata.name, meta)
    if not path.is_file():
        return "only-missing"
    pq_path = per_query_path(cache, task.metadata.name, meta)
    ok, why = verify_checksums(path, pq_path)
    if not ok:
        log.warning("%s: cached result not reused (%s); re-evaluating", task.metadata.name, why)
        for f in (path, pq_path, checksum_path(path)):
            f.unlink(missing_ok=True)
        return "only-missing"
    from mteb.results import TaskResult

    try:
        existing = TaskResult.from_disk(path)
    except Exception as e:  # mteb writes its JSON in place, so a killed run can leave it truncated
        log.warning("%s: unreadable cached result %s (%s); re-evaluating", task.metadata.name, path, e)
        path.unlink()
        return "only-missing"
    if existing.dataset_revision != task.metadata.revision:
        log.warning(
            "%s: cached result is for dataset revision %s, not %s; re-evaluating",
            task.metadata.name, existing.dataset_revision, task.metadata.revision,
        )  # fmt: skip
        return "always"
    per_query = read_per_query(per_query_path(cache, task.metadata.name, meta), task.metadata.revision)
    changed = False
    for split, subset_scores in existing.scores.items():
        keep = [s for s in subset_scores if (split, s["hf_subset"]) in per_query]
        if len(keep) != len(subset_scores):
            dropped = sorted({s["hf_subset"] for s in subset_scores} - {s["hf_subset"] for s in keep})
            log.warning(
                "%s/%s: cached without per-query scores; re-evaluating %s", task.metadata.name, split, dropped
            )
            existing.scores[split] = keep
            changed = True
    if changed:
        existing.scores = {k: v for k, v in existing.scores.items() if v}
        if existing.scores:
            existing.to_disk(path)
        else:
            path.unlink()
    return "only-missing"


def entries_for_task(task, task_result, per_query: dict[tuple[str, str], list[dict]]):
    name = task.metadata.name
    main_metric = task.metadata.main_score
    split = task.eval_splits[0]
    mteb_scores = {s["hf_subset"]: s for s in task_result.scores.get(split, [])}
    entries, records = [], []
    for subset in task.hf_subsets:
        recs = per_query.get((split, subset))
        if subset not in mteb_scores or not recs:
            raise RuntimeError(f"{name}/{subset}: no result after evaluation (mteb: {subset in mteb_scores})")
        n = len(recs)
        means = {ours: sum(r[ours] for r in recs) / n for ours in PER_QUERY_MEASURES.values()}
        mteb = mteb_scores[subset]
        for key, value in means.items():
            if abs(value - float(mteb[key])) > MTEB_ROUNDING_TOLERANCE:
                raise RuntimeError(
                    f"{name}/{subset}: per-query {key} mean {value:.6f} disagrees with mteb's {mteb[key]}; "
                    "the per-query file is stale (delete the model's results folder to re-evaluate)"
                )
        main = means[main_metric] if main_metric in means else float(mteb[main_metric])
        language = subset_language(name, subset)
        entries.append(
            {
                "task": name,
                "subset": subset,
                "language": language,
                "benchmark": CATALOGUE[name].benchmark,
                "ndcg_at_5": means["ndcg_at_5"],
                "ndcg_at_10": means["ndcg_at_10"],
                "main_metric": main_metric,
                "main_score": main,
                "recall_at_5": means["recall_at_5"],
                "n_queries": n,
            }
        )
        records.extend({k: r[k] for k in PER_QUERY_COLUMNS} for r in recs)
    return entries, records


def checksum_path(result_path: Path) -> Path:
    """`<Task>.checksums.json` beside mteb's `<Task>.json`."""
    return result_path.with_name(result_path.name.removesuffix(".json") + ".checksums.json")


def write_checksums(result_path: Path, per_query: Path) -> None:
    """Record the sha256 of a task's result files once its evaluation has completed."""
    sums = {f.name: file_sha256(f) for f in (result_path, per_query) if f.is_file()}
    atomic_write_text(checksum_path(result_path), json.dumps(sums, indent=1, sort_keys=True))


def verify_checksums(result_path: Path, per_query: Path) -> tuple[bool, str]:
    try:
        sums = json.loads(checksum_path(result_path).read_text())
    except (OSError, ValueError):
        return False, "no checksum record"
    for f in (result_path, per_query):
        if f.name not in sums or not f.is_file():
            return False, f"{f.name} missing"
        if file_sha256(f) != sums[f.name]:
            return False, f"{f.name} differs from its checksum"
    return True, ""
