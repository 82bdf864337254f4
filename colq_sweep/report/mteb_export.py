"""`python -m colq_sweep.report --name X --mteb-export`: every finished run's results in mteb's own results layout,
from MLflow (no rerun), so mteb's `ResultCache(<out>/mteb).load_results()` reads them back with the same scores.

    <out>/mteb/results/<org>__<name>/<revision>/<Task>.json     mteb's TaskResult, as mteb wrote it (results/mteb/)
    <out>/mteb/results/<org>__<name>/<revision>/model_meta.json  mteb's ModelMeta of the variant
    <out>/mteb/EXPORT.md                                         what was exported, and what was not and why

A variant's name says what it is: the original's name + its label (method, scheme, the swept settings), e.g.
`colq_sweep/tiny-w4a16-signround-seqlen32`; its revision is the revision its results were evaluated under (the
artifact key, + the index setting); `adapted_from` is the original's id, and the original's revision and the
quantization and index settings are in `loader_kwargs["colq_sweep"]` (the free-form field of ModelMeta: mteb
serializes it and ignores what it does not load with). n_parameters is the logical parameter count (packed
weights count as the weights they hold), memory_usage_mb the weights on disk.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep.contract import MTEB_ARTIFACTS
from colq_sweep.report.points import PointResults

MODEL_META = "model_meta.json"


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-") or "variant"


ROOT_KNOBS = ("seqlen", "batch_size", "nsamples", "iters", "seed")  # the quantization knobs spelled at the top level


def _settings(p: PointResults, prefix: str, root: tuple[str, ...] = ()) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(p.params.items()) if k.startswith(prefix) or k in root}


def variant_meta(p: PointResults, logged: dict, original: PointResults | None, original_meta: dict | None) -> dict:
    """The model_meta.json of one finished run: mteb's own record of the checkpoint it evaluated (`logged`), named
    and described as the variant it is."""
    from mteb.models import ModelMeta

    meta = dict(logged)
    base_name = (original_meta or logged).get("name") or p.model
    weights = p.metric(R.WEIGHTS_BYTES)
    n_params = p.metric(R.PARAMS_TOTAL) or (original.metric(R.PARAMS_TOTAL) if original is not None else None)
    extra = {"run_id": p.run_id, "label": p.label, "role": p.role, "index": _settings(p, "index.")}
    if p.is_baseline:
        meta["name"] = base_name
    else:
        org, _, name = base_name.rpartition("/")
        meta["name"] = f"{org or 'colq_sweep'}/{name}-{_slug(p.label)}"
        orig_id = (original.params.get("model.id") if original is not None else None) or base_name
        meta["adapted_from"] = base_name if orig_id in (None, "None", "") else str(orig_id)
        extra["adapted_from_revision"] = (original_meta or {}).get("revision") or p.params.get("model.revision")
        extra["quantization"] = _settings(p, "quant.", ROOT_KNOBS) | {"kernels": p.kernel}
    meta["n_parameters"] = int(n_params) if n_params else None
    meta["memory_usage_mb"] = round(weights / 2**20, 3) if weights else None
    if meta.get("embed_dim") is None and original_meta is not None:
        meta["embed_dim"] = original_meta.get("embed_dim")
    meta["loader_kwargs"] = {**(meta.get("loader_kwargs") or {}), "colq_sweep": extra}
    meta.pop("loader", None)
    meta.pop("is_cross_encoder", None)
    checked = ModelMeta(loader=None, **{k: v for k, v in meta.items() if k in ModelMeta.model_fields})  # validates
    return json.loads(json.dumps(checked.to_dict(), default=str))


def _download(client, run_id: str, tmp: Path) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, MTEB_ARTIFACTS, str(tmp)))
    except Exception:  # noqa: BLE001 - runs logged before mteb's files were tracked have none
        return None


def export(points: list[PointResults], tracking_uri: str, out: Path) -> list[tuple[PointResults, str]]:
    """Lay out the finished runs' mteb results under `out` (replacing a previous export); returns (point, where it
    went or why it was not exported) per finished point, also written to out/EXPORT.md."""
    from mlflow import MlflowClient

    from colq_sweep.report.load import quiet_downloads

    client = MlflowClient(tracking_uri=tracking_uri)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "results").mkdir(parents=True)
    done: list[tuple[PointResults, str]] = []
    finished = [p for p in points if p.finished]
    originals = {p.model: p for p in finished if p.is_baseline}
    with tempfile.TemporaryDirectory(prefix="colq-mteb-") as tmp, quiet_downloads():
        got = {p.run_id: _download(client, p.run_id, Path(tmp) / p.run_id) for p in finished}
        metas = {rid: json.loads((d / MODEL_META).read_text()) for rid, d in got.items()
                 if d is not None and (d / MODEL_META).is_file()}  # fmt: skip
        for p in finished:
            d = got[p.run_id]
            tasks = sorted(d.glob("*.json")) if d is not None else []
            tasks = [t for t in tasks if t.name != MODEL_META]
            if not tasks or p.run_id not in metas:
                done.append((p, "not exported: the run holds no mteb result files (logged before they were tracked; "
                                "a rerun with the same settings reuses its caches and logs them)"))
                continue
            orig = originals.get(p.model)
            meta = variant_meta(p, metas[p.run_id], orig, metas.get(orig.run_id) if orig is not None else None)
            folder = out / "results" / meta["name"].replace("/", "__").replace(" ", "_") / meta["revision"]
            if folder.exists():
                done.append((p, f"not exported: {folder.relative_to(out)} already holds another run's results"))
                continue
            folder.mkdir(parents=True)
            for t in tasks:
                shutil.copyfile(t, folder / t.name)
            (folder / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            done.append((p, str(folder.relative_to(out))))
    lines = ["# mteb export", "", "Read back with `mteb.ResultCache(<this folder>).load_results(include_remote=False)`.", "",
             "| Model | Label | Run | Exported to |", "|---|---|---|---|"]
    lines += [f"| {p.model} | {p.label} | `{p.run_id}` | {where} |" for p, where in done]
    (out / "EXPORT.md").write_text("\n".join(lines) + "\n")
    return done
