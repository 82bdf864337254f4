"""What the MLflow UI's Models, Datasets and evaluation panels show of a point: its checkpoint as a logged model,
the tasks it was evaluated on and its calibration set as dataset inputs, its per-entry scores as a table.

- **Logged model** (MLflow 3's `create_logged_model`, type `colqwen3`): one per finished point, named
  `<model>-<label>` (`tiny-w4g128-seqlen64-bs4-n8-iters40-seed42`, `tiny-original`), source run = the point's run. It
  references the checkpoint where it lies (tag `colq.checkpoint_uri`: the cached artifact's directory as a file URI,
  or `hf://<id>@<revision>` for a Hub original): nothing is copied. Its params are the settings that made the weights,
  and the headline metrics are logged with its model id, so the Models tab compares checkpoints. Registering one in
  the model registry is a command (`python -m colq_sweep.track.ui --register-best NAME`), never automatic.
- **Dataset inputs**: each evaluated task (name = the task, digest = the revision evaluated, source = its Hub
  dataset and revision, profile = its subsets, languages and query count; context `evaluation`) and, for a
  calibrated point, the calibration set (context `calibration`: source, dataset or path, pin, samples, seqlen).
- **Table**: `eval/entries.json`, the per-entry scores (`mlflow.log_table`), for the evaluation view.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep.tasks import DATASETS

MODEL_TYPE = "colqwen3"
LINKED = (R.AVG5_ALL, R.AVG5_EN, R.DELTA5_ALL, R.DELTA5_PCT_ALL, R.TOTAL_BYTES, R.INDEX_TOTAL_BYTES)
WEIGHT_PARAMS = ("quant.", "calib.", "seqlen", "batch_size", "nsamples", "iters", "seed", "model.")


def model_name(model: str, label: str) -> str:
    """`tiny-w4g128-seqlen64-bs4-n8-iters40-seed42`, `tiny-original`: the whole label, so the Models tab tells the
    checkpoints of one sweep apart (a logged model's name cannot change once the sweep knows what it varied)."""
    name = "-".join([model, *(w.replace("=", "") for w in label.split())])
    return re.sub(r"[^A-Za-z0-9_()-]", "_", name)  # MLflow refuses / : . % " ' in a logged model's name


def log_model(tracker, run_id: str, plan, checkpoint_uri: str, metrics: dict[str, float]) -> str:
    """The point's checkpoint as a logged model (READY), its headline metrics linked to it; returns its id."""
    from mlflow.entities import LoggedModelOutput, Metric

    params = {k: str(v) for k, v in plan.point.params().items() if k.startswith(WEIGHT_PARAMS) and v not in (None, "")}
    tags = {R.CHECKPOINT_URI: checkpoint_uri, R.ROLE: plan.role, R.MODEL: plan.model, R.LABEL: plan.label}
    now = int(time.time() * 1000)
    with tracker.locked():
        c = tracker.client
        m = c.create_logged_model(tracker.experiment_id, name=model_name(plan.model, plan.label), source_run_id=run_id,
                                  params=params, tags=tags, model_type=MODEL_TYPE)  # fmt: skip
        linked = [Metric(k, float(metrics[k]), now, 0, model_id=m.model_id) for k in LINKED if k in metrics]
        if linked:
            c.log_batch(run_id, metrics=linked)
        c.log_outputs(run_id, [LoggedModelOutput(m.model_id, 0)])
        c.finalize_logged_model(m.model_id, "READY")
    return m.model_id


def checkpoint_uri(path_or_id: str, revision: str | None = None) -> str:
    p = Path(path_or_id)
    return p.resolve().as_uri() if p.is_dir() else f"hf://{path_or_id}@{revision or 'main'}"


def log_inputs(tracker, run_id: str, entries: list[dict], revisions: dict[str, str], plan=None) -> None:
    """The evaluated tasks (and, for a calibrated point, its calibration set) as the run's dataset inputs."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    by_task: dict[str, list[dict]] = {}
    for e in entries:
        by_task.setdefault(e["task"], []).append(e)
    inputs = []
    for task, rows in sorted(by_task.items()):
        repo, pinned = DATASETS.get(task, ("local fixture", None))
        rev = revisions.get(task) or pinned or "local"
        profile = {"subsets": sorted({str(r["subset"]) for r in rows}), "languages": sorted({str(r["language"]) for r in rows}),
                   "queries": int(sum(int(r.get("n_queries") or 0) for r in rows))}  # fmt: skip
        ds = Dataset(name=task, digest=str(rev)[:36], source_type="hub" if task in DATASETS else "local",
                     source=json.dumps({"dataset": repo, "revision": rev}), profile=json.dumps(profile))  # fmt: skip
        inputs.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", "evaluation")]))
    quant = plan.quant if plan is not None else None
    if quant is not None and plan.point.quant.needs_calibration:
        calib = plan.point.calib
        where = calib.dataset or calib.path or "?"
        profile = {"kind": calib.kind, "nsamples": getattr(quant.spec, "nsamples", None), "seqlen": getattr(quant.spec, "seqlen", None)}
        ds = Dataset(name=Path(str(where)).name if calib.path else str(where), digest=str(quant.calib_revision or "?")[:36],
                     source_type=str(calib.source), source=json.dumps({"dataset": calib.dataset, "path": calib.path,
                                                                        "split": calib.split, "revision": quant.calib_revision}),
                     profile=json.dumps(profile))  # fmt: skip
        inputs.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", "calibration")]))
    if inputs:
        with tracker.locked():
            tracker.client.log_inputs(run_id, datasets=inputs)


def log_entries_table(tracker, run_id: str, entries: list[dict]) -> None:
    """The per-entry scores as an MLflow table (`eval/entries.json`)."""
    import pandas as pd

    cols = [c for c in R.ENTRY_COLUMNS if any(c in e for e in entries)]
    with tracker.locked():
        tracker.client.log_table(run_id, pd.DataFrame([{c: e.get(c) for c in cols} for e in entries]), R.ENTRIES_TABLE)
