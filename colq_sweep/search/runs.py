"""What a search reads back from the MLflow store between its jobs: a finished point's interval against its
original, and the original's index size (the vectors the index-cost prediction scales)."""

from __future__ import annotations

import logging
import tempfile

from colq_sweep import contract as R

log = logging.getLogger("colq_sweep")


def interval_of(tracker, run_id: str | None) -> dict | None:
    """The point's change vs the original it was compared with (its `colq.baseline_run_id`), with 95 % intervals
    (report/stats.py point_interval: 2000 replicates, seed 0, as the report's defaults); None if not computable."""
    from colq_sweep.report.load import quiet_downloads
    from colq_sweep.report.stats import point_interval

    if not run_id:
        return None
    try:
        run = tracker.client.get_run(run_id)
        base_id = run.data.tags.get(R.BASELINE_REF)
        if not base_id:
            return None
        with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
            rows = [R.read_csv(tracker.download(rid, art, f"{tmp}/{i}"))
                    for i, (rid, art) in enumerate([(run_id, R.ENTRIES_ARTIFACT), (run_id, R.PER_QUERY_ARTIFACT),
                                                    (base_id, R.ENTRIES_ARTIFACT), (base_id, R.PER_QUERY_ARTIFACT)])]  # fmt: skip
        return point_interval(*rows)
    except Exception as exc:  # noqa: BLE001 - a missing artifact leaves the point estimate, said in the verdict
        log.warning("no interval for run %s: %s", run_id, exc)
        return None


def original_vectors(tracker, point) -> float | None:
    """The stored vectors over the evaluation of the point's original (pages x vectors per page of its newest
    finished evaluation in the store: the same model name, entries and page-token cap; the device does not change
    them), None when it has not been evaluated yet."""
    from colq_sweep import keys
    from colq_sweep.config.specs import baseline_of

    base = baseline_of(point)
    done = tracker.find(f"tags.`{R.ROLE}` = '{R.ROLE_BASELINE}' and tags.`{R.MODEL}` = '{point.model.name}' and "
                        f"tags.`{R.EVAL_HASH}` = '{keys.eval_hash(base)}' and "
                        f"params.`model.max_num_visual_tokens` = '{point.model.max_num_visual_tokens}'")  # fmt: skip
    for run in sorted(done, key=lambda r: -(r.info.start_time or 0)):
        m = R.tracked(run.data.metrics)
        if "index/pages" in m and "index/vectors_per_page" in m:
            return float(m["index/pages"]) * float(m["index/vectors_per_page"])
    return None
