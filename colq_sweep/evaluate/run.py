"""The evaluation stage: ColQwen3 checkpoints on ViDoRe through mteb, with result, per-query and page caches.

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

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colq_sweep.config import EvalSpec
from colq_sweep.evaluate.scores import (
    entries_for_task,
    install_per_query_hook,
    per_query_path,
    read_jsonl,
    read_per_query,
    reconcile_caches,
    write_checksums,
)
from colq_sweep.evaluate.shards import OWNER, WAIT_ENV, Board, Offer
from colq_sweep.hub.inputs import loaded_revision
from colq_sweep.keys import fixture_revision
from colq_sweep.runtime import PeakMemory, resolve_device
from colq_sweep.tasks import CATALOGUE, DATASETS, FIXTURE_TASK

if TYPE_CHECKING:
    from mteb.abstasks import AbsTaskRetrieval

    from colq_sweep.model import ColQwen3, ColQwen3Processor

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """One checkpoint's scores on the selected (task, subset) entries."""

    entries: list[dict]
    per_query: list[dict]
    timing: dict[str, float]
    from_cache: bool
    results_dir: str | None = field(default=None, compare=False)
    dataset_revisions: dict[str, str] = field(default_factory=dict)  # task -> revision of the data evaluated
    task_results: dict[str, str] = field(default_factory=dict)  # task -> mteb's own result file (TaskResult JSON)
    model_meta: dict = field(default_factory=dict)  # mteb's ModelMeta of the checkpoint (embed_dim once it loaded)
    shards: dict[str, str] = field(default_factory=dict)  # task -> who evaluated it, when the evaluation was sharded


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
        rows = read_jsonl(root / "corpus.jsonl")
        corpus = Dataset.from_dict(
            {"id": [r["id"] for r in rows], "image": [str(root / r["image"]) for r in rows]},
            features=Features({"id": Value("string"), "image": Image()}),
        )
        self.dataset = {}
        for subset in self.hf_subsets:
            queries = Dataset.from_list(
                [{"id": q["id"], "text": q["text"]} for q in read_jsonl(root / f"queries-{subset}.jsonl")]
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


def task_size(task) -> int:
    """How many items (pages + queries, per selected subset, as mteb hands them to the encoder) evaluating `task`
    takes: from mteb's descriptive statistics of the task, else by loading its data and counting."""
    stats = task.metadata.descriptive_stats or {}
    per_subset = (stats.get("test") or {}).get("hf_subset_descriptive_stats") or {}
    if all(s in per_subset for s in task.hf_subsets):
        return sum(int(per_subset[s]["num_samples"]) for s in task.hf_subsets)
    if not per_subset and len(task.hf_subsets) == 1 and "num_samples" in (stats.get("test") or {}):
        return int(stats["test"]["num_samples"])
    task.load_data()
    return sum(len(task.dataset[s]["test"]["corpus"]) + len(task.dataset[s]["test"]["queries"]) for s in task.hf_subsets)


def page_cache_dir(cache_dir: str | os.PathLike, model_name: str, model_revision: str) -> Path:
    """`<cache_dir>/pages/<org>__<name>/<revision>/`: one folder per checkpoint, easy to inspect or delete.

    (The folder is for housekeeping only: the page keys themselves include the model key.)
    """
    from colq_sweep.evaluate.encoder import mteb_model_name

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
    progress: str | None = "evaluate",
    page_revision: str | None = None,
    pixels: str = "pil",
    share: Offer | Board | None = None,
) -> EvalResult:
    """Evaluate one checkpoint on `eval_spec` through mteb; see the module docstring.

    `model_name`/`model_revision` identify the checkpoint in every cache (mteb's result folder and the page
    keys), so they must be unique per checkpoint: pass the artifact key of a quantized model as its revision.
    `load_model` is called at most once, and only if some page or query must be encoded.
    `force=True` recomputes everything: this checkpoint's page embeddings and results are not read from disk.
    `progress` is the label of the progress bar over every page and query of the selected entries (None: no bar).
    `page_revision` keys the page cache (default `model_revision`): every index setting (`eval_spec.index`) of one
    checkpoint has its own results revision and reads the same cached pages.
    `pixels`: where page pixels are computed (the resolved `eval.preprocess_device`: pil, cpu or cuda; the caller
    keys it into `model_revision` / `page_revision`, keys.page_revision).
    `share`: an Offer (the owner: with more than one task, a shard board is opened for helpers on idle slots) or a
    helper's Board (evaluate/shards.py).
    """
    import torch
    from mteb.cache import ResultCache

    from colq_sweep.console import EvalProgress

    t0 = time.perf_counter()
    board = share if isinstance(share, Board) else None
    if force and board is None:  # a helper never clears what its owner is writing
        import shutil

        shutil.rmtree(page_cache_dir(cache_dir, model_name, page_revision or model_revision), ignore_errors=True)
    device = resolve_device(device)
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    mem = PeakMemory(str(device) if use_cuda else "cpu")
    cache = ResultCache(Path(results_dir))
    encoder = _encoder(load_model, eval_spec, model_name, model_revision, page_revision or model_revision, cache_dir,
                       device, pixels)
    tasks = build_tasks(eval_spec)
    sizes = [task_size(t) for t in tasks]
    bar = EvalProgress(progress or "", sum(sizes), enabled=progress is not None)
    encoder.progress = bar
    out = EvalResult(entries=[], per_query=[], timing={}, from_cache=False, results_dir=str(Path(cache.cache_path) / "results"))
    if isinstance(share, Offer) and len(tasks) > 1:
        board = share.open(model_name, model_revision, {t.metadata.name: n for t, n in zip(tasks, sizes, strict=True)})
    with mem:  # this stage's peak memory, not the process's (which includes quantization)
        try:
            parts = _run_tasks(tasks, sizes, encoder, cache, eval_spec, force, bar, board)
        except BaseException:
            if board is not None and board.who == OWNER:  # nobody is left to read the helpers' work back
                board.close()
            raise
        finally:
            bar.close()
            encoder.progress = None
            encoder.release()  # it loaded the model, so it is the only holder: free the memory for what runs next
            if use_cuda:
                torch.cuda.empty_cache()
    for part in parts:  # the spec's task order, whoever evaluated each task
        _merge(out, part)
    stats = dict(encoder.stats)
    if board is not None and board.who != OWNER:  # a helper: its counters went to the owner (_run_tasks)
        return out
    if board is not None:
        helpers = board.helper_stats()
        for h in helpers:
            for k in _HELPER_COUNTERS:
                stats[k] += h[k]
        out.shards = {t: c["who"] for t, c in sorted(board.claims().items())}
        board.close()
    out.timing = {**_timing(stats, time.perf_counter() - t0, mem), **encoder.index.metrics()}
    out.from_cache = stats["encode_calls"] == 0
    out.model_meta = json.loads(json.dumps(encoder.mteb_model_meta.to_dict(), default=str))
    log.info(
        "evaluated %s@%s on %d entries in %.1fs (%s; %d pages, %d queries encoded)",
        model_name, model_revision, len(out.entries), out.timing["eval_seconds"],
        "all from cache" if out.from_cache else "encoded", encoder.stats["pages_encoded"], encoder.stats["queries_encoded"],
    )  # fmt: skip
    return out


_HELPER_COUNTERS = ("encode_calls", "pages_encoded", "queries_encoded", "page_seconds", "query_seconds")


def _run_tasks(tasks, sizes, encoder, cache, eval_spec: EvalSpec, force: bool, bar, board: Board | None) -> list[EvalResult]:
    """Each task's EvalResult in the spec's order. Without a board: one after the other. With one (shards.py): the
    largest unclaimed task first; an owner then waits for the helpers' tasks and reads them back from the result
    cache; a helper returns what it evaluated."""
    names = [t.metadata.name for t in tasks]
    parts: dict[int, EvalResult] = {}
    order = range(len(tasks)) if board is None else sorted(range(len(tasks)), key=lambda i: (-sizes[i], names[i]))
    if board is not None and board.who == OWNER and os.environ.get(WAIT_ENV):
        board.wait_for_helper(float(os.environ[WAIT_ENV]))
    for i in order:
        if board is not None and not board.claim(names[i]):
            continue
        parts[i] = _one_task(tasks[i], sizes[i], encoder, cache, eval_spec, force, bar)
        if board is not None:
            if board.who != OWNER:  # counters first: the owner reads them once every task is done
                board.save_stats({k: encoder.stats[k] for k in _HELPER_COUNTERS})
            board.finish(names[i])
    if board is not None and board.who != OWNER:
        return [parts[i] for i in sorted(parts)]
    for i in range(len(tasks)):
        if i not in parts:  # a helper's: done (read back from the result cache) or taken over from a dead helper
            by_helper = board.wait_done(names[i])
            parts[i] = _one_task(tasks[i], sizes[i], encoder, cache, eval_spec, force and not by_helper, bar)
            if not by_helper:
                board.finish(names[i])
    return [parts[i] for i in range(len(tasks))]


def _one_task(task, size: int, encoder, cache, eval_spec: EvalSpec, force: bool, bar) -> EvalResult:
    part = EvalResult(entries=[], per_query=[], timing={}, from_cache=False)
    bar.begin_task(size)
    _evaluate_task(task, encoder, cache, eval_spec, force, part)
    bar.end_task()  # subsets served from the result cache, pages from the page cache: done too
    return part


def _merge(out: EvalResult, part: EvalResult) -> None:
    out.entries.extend(part.entries)
    out.per_query.extend(part.per_query)
    out.dataset_revisions.update(part.dataset_revisions)
    out.task_results.update(part.task_results)


def _encoder(load_model, eval_spec: EvalSpec, model_name: str, model_revision: str, page_revision: str, cache_dir: Path,
             device: str, pixels: str = "pil"):  # fmt: skip
    from colq_sweep.evaluate.encoder import ColQwen3Encoder, PageStore

    enc = eval_spec.encoder
    return ColQwen3Encoder(
        model_name=model_name,
        model_revision=model_revision,
        loader=load_model,
        device=device,
        query_batch_size=enc.query_batch_size,
        page_batch_size=enc.page_batch_size,
        page_store=PageStore(page_cache_dir(cache_dir, model_name, page_revision)) if enc.corpus_cache else None,
        corpus_cache=enc.corpus_cache,
        preprocess_workers=enc.preprocess_workers,
        preprocess_mode=enc.preprocess_mode,
        pixels=pixels,
        compile=enc.compile,
        index=eval_spec.index,
        page_revision=page_revision,
    )


def _evaluate_task(task, encoder, cache, eval_spec: EvalSpec, force: bool, out: EvalResult) -> None:
    """One task through mteb (or its result cache); its entries and per-query scores appended to `out`."""
    import mteb

    meta = encoder.mteb_model_meta
    name = task.metadata.name
    pq_path = per_query_path(cache, name, meta)
    out.dataset_revisions[name] = loaded_revision(task, eval_spec.allow_revision_mismatch)
    if out.dataset_revisions[name] != DATASETS.get(name, (None, out.dataset_revisions[name]))[1]:
        log.warning("%s: evaluating cached dataset revision %s, not mteb's pin (allowed)", name, out.dataset_revisions[name])
    strategy = "always" if force else reconcile_caches(task, cache, meta)
    install_per_query_hook(task, pq_path)
    calls_before = encoder.stats["encode_calls"]
    result = mteb.evaluate(
        encoder,
        task,
        cache=cache,
        overwrite_strategy=strategy,
        encode_kwargs={"batch_size": eval_spec.encoder.page_batch_size, "show_progress_bar": False},
        co2_tracker=False,
        show_progress_bar=False,
        raise_error=True,
    )
    if task.data_loaded:  # loaded here to count it, so mteb left it loaded
        task.unload_data()
    if result.exceptions:
        raise RuntimeError(f"{name}: {result.exceptions[0].exception}")
    result_path = cache.get_task_result_path(name, meta)
    out.task_results[name] = str(result_path)
    write_checksums(result_path, pq_path)
    evaluated = encoder.stats["encode_calls"] > calls_before
    log.info("%s: %s", name, "evaluated" if evaluated else "served from the result cache")
    _index_record(pq_path.with_name(f"{name}.index.json"), name, encoder.index, evaluated)
    entries, records = entries_for_task(task, result.task_results[0], read_per_query(pq_path, task.metadata.revision))
    out.entries.extend(entries)
    out.per_query.extend(records)


def _index_record(path: Path, task: str, index, evaluated: bool) -> None:
    """What the task's index holds, kept beside its results: written when the task is evaluated, read back when it is
    served from the result cache (so its run still has its index metrics)."""
    import json

    from colq_sweep.fsio import atomic_write_text

    if evaluated and task in index.tasks:
        atomic_write_text(path, json.dumps(index.tasks[task], sort_keys=True))
    elif not evaluated and path.is_file():
        index.adopt(task, json.loads(path.read_text()))


def _timing(s: dict[str, float], seconds: float, mem: PeakMemory) -> dict[str, float]:
    return {
        "eval_seconds": seconds,
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
        # the loaded model's tensors where it ran (NaN when nothing was loaded: all from caches)
        "weights_device_mb": s["weights_device_bytes"] / 2**20 if s["weights_device_bytes"] else float("nan"),
    }
