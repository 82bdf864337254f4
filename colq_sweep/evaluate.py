"""Evaluation stage: ColQwen3 checkpoints on ViDoRe through mteb, with result, per-query and page caches.

`evaluate_model` runs one checkpoint on the (task, subset) entries of an `EvalSpec`:

* tasks come from mteb at its pinned dataset revisions (`build_tasks`), or the offline fixture task;
* the model is wrapped in `ColQwen3Encoder` (mteb encoder, MaxSim scoring, Tomoro's prompts) and loaded only if
  something must be encoded;
* each task's corpus is encoded once for all its language subsets, and page embeddings persist in `cache_dir`
  (resumable, keyed by checkpoint, task, dataset revision and image bytes);
* results land in mteb's result-cache layout under `results_dir`
  (`results/<org>__<name>/<revision>/<Task>.json`), next to `<Task>.per_query.jsonl` holding each query's
  nDCG@5/@10 and recall@5 as mteb computed them (captured from the task's `task_specific_scores` hook, which
  mteb hands its per-query pytrec_eval scores but whose output mteb only averages);
* re-evaluating the same checkpoint (same name and revision) is served from these files without a forward pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colq_sweep.config import EvalSpec
from colq_sweep.memory import PeakMemory
from colq_sweep.tasks import CATALOGUE, FIXTURE_TASK, subset_language

if TYPE_CHECKING:
    from mteb.abstasks import AbsTaskRetrieval
    from mteb.cache import ResultCache
    from mteb.models import ModelMeta

    from colq_sweep.model import ColQwen3, ColQwen3Processor

log = logging.getLogger(__name__)

# pytrec_eval measure names (as mteb requests them) -> our per-query keys
PER_QUERY_MEASURES = {"ndcg_cut_5": "ndcg_at_5", "ndcg_cut_10": "ndcg_at_10", "recall_5": "recall_at_5"}
# mteb rounds averaged scores to 5 decimals; our entries are exact means of the per-query scores
MTEB_ROUNDING_TOLERANCE = 1e-5
ENTRY_KEYS = (
    "task", "subset", "language", "benchmark", "ndcg_at_5", "ndcg_at_10", "main_metric", "main_score",
    "recall_at_5", "n_queries",
)  # fmt: skip
PER_QUERY_KEYS = ("task", "subset", "language", "query_id", "ndcg_at_5", "ndcg_at_10")


@dataclass
class EvalResult:
    """One checkpoint's scores on the selected (task, subset) entries."""

    entries: list[dict]
    per_query: list[dict]
    timing: dict[str, float]
    from_cache: bool
    results_dir: str | None = field(default=None, compare=False)


# -------------------------------------------------------------------------------------------- fixture task


def fixture_revision(root: Path) -> str:
    """Content revision of the fixture task: every file's relative path and bytes (images included)."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return "fixture-" + h.hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fixture_task(fixture_dir: str | os.PathLike, hf_subsets: Iterable[str] | None = None) -> AbsTaskRetrieval:
    """The offline ViDoRe-format fixture task (colq_sweep.fixtures) as an mteb retrieval task.

    Its dataset revision is a hash of the fixture's files, so result and page caches never outlive a change.
    The metadata is a class attribute on purpose: mteb's `unload_data` drops instance-level metadata.
    """
    from datasets import Dataset, Features, Image, Value
    from mteb.abstasks import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    root = Path(fixture_dir).resolve()
    spec = json.loads((root / "task.json").read_text())
    if spec.get("name") != FIXTURE_TASK:
        raise ValueError(f"{root}/task.json names {spec.get('name')!r}, expected {FIXTURE_TASK}")
    metadata = TaskMetadata(
        name=FIXTURE_TASK,
        description="Offline ViDoRe-format fixture: rendered pages, English and French queries, one shared corpus.",
        dataset={"path": f"local/{root.name}", "revision": fixture_revision(root)},
        type="DocumentUnderstanding",
        category="t2i",
        modalities=["text", "image"],
        eval_splits=["test"],
        eval_langs={subset: [lang] for subset, lang in spec["languages"].items()},
        main_score=CATALOGUE[FIXTURE_TASK].main_score,
        domains=["Non-fiction"],
        task_subtypes=["Image Text Retrieval"],
        license="not specified",
        annotations_creators="derived",
        dialect=[],
        sample_creation="created",
        bibtex_citation="",
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        rows = _read_jsonl(root / "corpus.jsonl")
        corpus = Dataset.from_dict(
            {"id": [r["id"] for r in rows], "image": [str(root / r["image"]) for r in rows]},
            features=Features({"id": Value("string"), "image": Image()}),
        )
        self.dataset = {}
        for subset in self.hf_subsets:
            queries = Dataset.from_list(
                [{"id": q["id"], "text": q["text"]} for q in _read_jsonl(root / f"queries-{subset}.jsonl")]
            )
            qrels = json.loads((root / f"qrels-{subset}.json").read_text())
            self.dataset[subset] = {
                "test": RetrievalSplitData(
                    corpus=corpus, queries=queries, relevant_docs=qrels, top_ranked=None
                )
            }
        self.data_loaded = True

    cls = type("VidoreFixtureRetrieval", (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})
    task = cls()
    if hf_subsets is not None:
        task.filter_languages(None, hf_subsets=list(hf_subsets))
    return task


# ------------------------------------------------------------------------------------------ task selection


def _entries_by_task(eval_spec: EvalSpec) -> dict[str, list[str]]:
    by_task: dict[str, list[str]] = {}
    for task, subset in eval_spec.entries():
        by_task.setdefault(task, []).append(subset)
    return by_task


def build_tasks(eval_spec: EvalSpec) -> list:
    """mteb task objects for the spec's entries (language filter applied), without loading any data.

    Real ViDoRe tasks come from mteb at its pinned dataset revisions, restricted to the selected hf_subsets;
    the fixture task reads `eval_spec.fixture_dir`.
    """
    import mteb

    tasks = []
    for name, subsets in _entries_by_task(eval_spec).items():
        if name == FIXTURE_TASK:
            if not eval_spec.fixture_dir:
                raise ValueError(f"{FIXTURE_TASK} needs eval.fixture_dir")
            task = fixture_task(eval_spec.fixture_dir, subsets)
        else:
            task = mteb.get_task(name, hf_subsets=subsets)
        if list(task.eval_splits) != ["test"]:
            raise ValueError(
                f"{name}: expected the single eval split 'test', mteb has {list(task.eval_splits)}"
            )
        if sorted(task.hf_subsets) != sorted(subsets):
            raise ValueError(f"{name}: mteb subsets {task.hf_subsets} differ from the catalogue's {subsets}")
        tasks.append(task)
    return tasks


def task_entries(tasks: Iterable) -> list[tuple[str, str]]:
    """(task, hf_subset) pairs the given mteb tasks will evaluate (metadata only, nothing is loaded)."""
    return [(t.metadata.name, s) for t in tasks for s in t.hf_subsets]


# ---------------------------------------------------------------------------------- per-query score files


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def per_query_path(cache: ResultCache, task_name: str, meta: ModelMeta) -> Path:
    """`<results>/<org>__<name>/<revision>/<Task>.per_query.jsonl`, beside mteb's `<Task>.json`."""
    return cache.get_task_result_path(task_name, meta).with_name(f"{task_name}.per_query.jsonl")


def read_per_query(path: Path, dataset_revision: str) -> dict[tuple[str, str], list[dict]]:
    """(split, subset) -> records of this dataset revision."""
    out: dict[tuple[str, str], list[dict]] = {}
    if not path.is_file():
        return out
    for rec in _read_jsonl(path):
        if rec.get("dataset_revision") == dataset_revision:
            out.setdefault((rec["split"], rec["subset"]), []).append(rec)
    return out


def _write_per_query(
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
    _atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def _install_per_query_hook(task: AbsTaskRetrieval, path: Path) -> None:
    """Persist the per-query scores mteb hands to `task_specific_scores` (it only writes their averages)."""
    original = task.task_specific_scores
    name, revision = task.metadata.name, task.metadata.revision

    def task_specific_scores(scores, qrels, results, hf_split, hf_subset):
        _write_per_query(path, name, revision, hf_split, hf_subset, scores)
        return original(scores, qrels, results, hf_split=hf_split, hf_subset=hf_subset)

    task.task_specific_scores = task_specific_scores


def _reconcile_caches(task, cache: ResultCache, meta: ModelMeta) -> str:
    """Make mteb's cached result and our per-query file agree; return the overwrite strategy for this task.

    * a cached result of another dataset revision is stale: mteb's "only-missing" would still return it when
      no subset is missing, so the task runs with "always";
    * a cached subset without per-query scores (e.g. an interrupted run) is dropped from mteb's file so that
      "only-missing" evaluates it again.
    """
    path = cache.get_task_result_path(task.metadata.name, meta)
    if not path.is_file():
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


# ------------------------------------------------------------------------------------------------ entries


def _entries_for_task(task, task_result, per_query: dict[tuple[str, str], list[dict]]):
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
        records.extend({k: r[k] for k in PER_QUERY_KEYS} for r in recs)
    return entries, records


# ----------------------------------------------------------------------------------------------- evaluate


def page_cache_dir(cache_dir: str | os.PathLike, model_name: str, model_revision: str) -> Path:
    """`<cache_dir>/pages/<org>__<name>/<revision>/`: one folder per checkpoint, easy to inspect or delete.

    (The folder is for housekeeping only: the page keys themselves include the model key.)
    """
    from colq_sweep.encoder import mteb_model_name

    return Path(cache_dir) / "pages" / mteb_model_name(model_name).replace("/", "__") / model_revision


def evaluate_model(
    load_model: Callable[[], tuple[ColQwen3, ColQwen3Processor]],
    eval_spec: EvalSpec,
    model_name: str,
    model_revision: str,
    results_dir: Path,
    cache_dir: Path,
    device: str = "cpu",
    force: bool = False,
) -> EvalResult:
    """Evaluate one checkpoint on `eval_spec` through mteb; see the module docstring.

    `model_name`/`model_revision` identify the checkpoint in every cache (mteb's result folder and the page
    keys), so they must be unique per checkpoint: pass the artifact key of a quantized model as its revision.
    `load_model` is called at most once, and only if some page or query must be encoded.
    `force=True` recomputes everything: this checkpoint's page embeddings and results are not read from disk.
    """
    import mteb
    import torch
    from mteb.cache import ResultCache

    from colq_sweep.encoder import ColQwen3Encoder, PageStore

    t0 = time.perf_counter()
    if force:
        import shutil

        shutil.rmtree(page_cache_dir(cache_dir, model_name, model_revision), ignore_errors=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    mem = PeakMemory(str(device) if use_cuda else "cpu")
    cache = ResultCache(Path(results_dir))
    encoder = ColQwen3Encoder(
        model_name=model_name,
        model_revision=model_revision,
        loader=load_model,
        device=device,
        query_batch_size=eval_spec.query_batch_size,
        page_batch_size=eval_spec.page_batch_size,
        page_store=PageStore(page_cache_dir(cache_dir, model_name, model_revision))
        if eval_spec.corpus_cache
        else None,
        corpus_cache=eval_spec.corpus_cache,
    )
    meta = encoder.mteb_model_meta
    entries: list[dict] = []
    per_query: list[dict] = []
    with mem:  # this stage's peak memory, not the process's (which includes quantization)
        try:
            for task in build_tasks(eval_spec):
                name = task.metadata.name
                pq_path = per_query_path(cache, name, meta)
                strategy = "always" if force else _reconcile_caches(task, cache, meta)
                _install_per_query_hook(task, pq_path)
                calls_before = encoder.stats["encode_calls"]
                result = mteb.evaluate(
                    encoder,
                    task,
                    cache=cache,
                    overwrite_strategy=strategy,
                    encode_kwargs={"batch_size": eval_spec.page_batch_size, "show_progress_bar": False},
                    co2_tracker=False,
                    show_progress_bar=False,
                    raise_error=True,
                )
                if result.exceptions:
                    raise RuntimeError(f"{name}: {result.exceptions[0].exception}")
                ran = encoder.stats["encode_calls"] > calls_before
                log.info("%s: %s", name, "evaluated" if ran else "served from the result cache")
                task_entries_, records = _entries_for_task(
                    task, result.task_results[0], read_per_query(pq_path, task.metadata.revision)
                )
                entries.extend(task_entries_)
                per_query.extend(records)
        finally:
            encoder.release()  # it loaded the model, so it is the only holder: free the memory for what runs next
            if use_cuda:
                torch.cuda.empty_cache()

    s = encoder.stats
    timing = {
        "eval_seconds": time.perf_counter() - t0,
        "load_seconds": float(s["load_seconds"]),
        "pages_encoded": float(s["pages_encoded"]),
        "queries_encoded": float(s["queries_encoded"]),
        "pages_from_cache": float(s["pages_from_memory"] + s["pages_from_disk"]),
        "pages_from_disk": float(s["pages_from_disk"]),
        "page_seconds": float(s["page_seconds"]),
        "query_seconds": float(s["query_seconds"]),
        # NaN, not 0, when nothing was encoded (all from cache) or no GPU was used: there is no rate to report
        "pages_per_s": s["pages_encoded"] / s["page_seconds"] if s["page_seconds"] else float("nan"),
        "queries_per_s": s["queries_encoded"] / s["query_seconds"] if s["query_seconds"] else float("nan"),
        "peak_rss_mb": mem.peak_rss / 2**20 if mem.peak_rss is not None else float("nan"),
        "peak_cuda_mb": mem.peak_cuda / 2**20 if mem.peak_cuda is not None else float("nan"),
    }
    from_cache = s["encode_calls"] == 0
    log.info(
        "evaluated %s@%s on %d entries in %.1fs (%s; %d pages, %d queries encoded)",
        model_name, model_revision, len(entries), timing["eval_seconds"],
        "all from cache" if from_cache else "encoded", s["pages_encoded"], s["queries_encoded"],
    )  # fmt: skip
    return EvalResult(
        entries=entries,
        per_query=per_query,
        timing=timing,
        from_cache=from_cache,
        results_dir=str(Path(cache.cache_path) / "results"),
    )
