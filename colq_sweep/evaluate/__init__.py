"""The evaluate stage: a ColQwen3 checkpoint on ViDoRe entries through mteb, every result cached once.

    run.py        evaluate_model (tasks -> mteb -> entries), build_tasks, the offline fixture task
    encoder.py    ColQwen3 as an mteb MaxSim encoder: model lifecycle, forward, queries, each corpus encoded once
    pagepipe.py   the page pipeline: workers decode and preprocess batches ahead of the forward, in size order
    pagecache.py  page embeddings on disk, keyed by content (image bytes, checkpoint, task, dataset revision)
    scores.py     per-query score files, agreement between the caches, entries as exact query means
    shards.py     task-level sharding: claims on disk that an evaluating point shares with helpers on idle slots
"""

from colq_sweep.evaluate.run import EvalResult, build_tasks, evaluate_model, fixture_task, task_entries

__all__ = ["EvalResult", "build_tasks", "evaluate_model", "fixture_task", "task_entries"]
