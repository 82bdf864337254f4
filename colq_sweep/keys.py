"""Every identity in one place: why a point runs again, why an artifact or a cached result is reused.

Pure functions of plain values: what needs the Hub or the machine (a calibration set's commit, the kernels that
can load a checkpoint here) is resolved once by the plan (pipeline/plan.py) and handed in.

- `config_hash`: the settings of a point as written in the config (no bookkeeping, no paths, no speed-only knobs).
- `point_key` (the run key, MLflow tag `colq.config_hash`): config hash + the content of what its paths point to
  (checkpoint, calibration file, fixture task) + the device type (+ the CPU's int8 ISA for ark's auto compute).
  A FINISHED run with the same key is skipped.
- `artifact_key`: everything that decides the quantized weights (model content, `quant_knobs`, the calibration
  pin and selection semantics, device type, code versions): the folder name under outputs/models/.
- `eval_revision`: the mteb revision of an evaluation: checkpoint + dtype + page cap + kernels and the dtype
  they compute in + compiled blocks. Cached results and page embeddings are keyed by it.
- `eval_hash`: which entries were asked for (tasks x languages), so the report compares like with like.
- Input pins: `checkpoint_fingerprint` (Hub id@revision or local bytes), `fixture_revision` (the fixture task's
  bytes), `key_versions` (code that decides weights). A calibration set's pin: quantize/calibration.py `pin`.

Which spec field enters which key is marked on the field itself (config/specs.py `knob`): a new field is in every
key unless it is marked otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from colq_sweep.config.specs import RESULTS, WEIGHTS, EvalSpec, SweepPoint
from colq_sweep.runtime import cpu_int8_isa, dist_version
from colq_sweep.tasks import FIXTURE_TASK

ARTIFACT_SCHEMA = 2  # bump when the export post-processing changes what an artifact holds
KEY_LEN = 20
KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LEN}}}$")


def _digest(payload: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------------ config


def quant_knobs(point: SweepPoint) -> dict[str, Any]:
    """Everything in the config that decides the quantized weights (the artifact key's inputs, less code versions)."""
    q = point.quant
    if not q.enabled:
        return {}
    out = {"quant": q.values(WEIGHTS, root=False), **q.values(WEIGHTS, root=True)}
    if q.uses_seed:
        out["seed"] = point.seed
    if q.needs_calibration:
        out["calib"] = point.calib.identity
    return out


def _eval_fields(spec: EvalSpec) -> dict[str, Any]:
    """The evaluation settings that decide results; options at their default are left out, so adding an option
    left the hashes of configs without it as they were."""
    d: dict[str, Any] = {
        "tasks": sorted(spec.tasks),
        "languages": sorted(spec.languages) if spec.languages else None,
    }
    if spec.only is not None:
        d["only"] = sorted(map(list, spec.only))
    if spec.encoder.compile:
        d["compile"] = True
    if spec.encoder.preprocess_device != "auto":  # auto's choice follows the device type, which the run key has
        d["preprocess_device"] = spec.encoder.preprocess_device
    if spec.allow_revision_mismatch:
        d["allow_revision_mismatch"] = True
    if not spec.index.is_default:  # what the index stores changes the scores, not the page embeddings
        d["index"] = {"pool_factor": spec.index.pool_factor, "dtype": spec.index.dtype}
    return d


def config_hash(point: SweepPoint) -> str:
    """Hash of the settings that decide a point's results, as written in the config: not bookkeeping (name,
    force, device, outputs), not paths, not speed-only knobs. What paths point to (checkpoint, calibration file,
    fixture task) and the device type enter the run key through their content (point_key)."""
    d: dict[str, Any] = {
        "model": {k: v for k, v in asdict(point.model).items() if k != "path"},
        "eval": _eval_fields(point.eval),
        "fail_point": point.fail_point,
    }
    q = point.quant
    if q.enabled:
        d["quant"] = q.values(WEIGHTS, RESULTS, root=False)
        d.update(q.values(WEIGHTS, RESULTS, root=True))
        if q.uses_seed:
            d["seed"] = point.seed
        if q.needs_calibration:
            d["calib"] = point.calib.key_dict()
    else:  # knobs do not touch the baseline
        d["quant"] = {"method": "none"}
    return _digest(d, 16)


def eval_hash(point: SweepPoint) -> str:
    """Same value <=> the same entries were asked for (tasks x languages)."""
    spec = {"tasks": list(point.eval.tasks), "languages": list(point.eval.languages or [])}
    if point.eval.only is not None:
        spec["entries"] = sorted(f"{t}/{s}" for t, s in point.eval.only)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ inputs

_FINGERPRINTS: dict[tuple, str] = {}


def checkpoint_fingerprint(model_id: str | None, revision: str | None, path: str | None) -> str:
    """What identifies a checkpoint's weights in every cache key: `id@revision` for a Hub model, else the
    sha256 of the local directory's files (names and bytes). Memoised per process on (path, file names, sizes,
    mtimes), so a sweep hashes a local checkpoint once per job, and an edited file is never mistaken for the old one."""
    if not path:
        return f"{model_id}@{revision}"
    root = Path(path).resolve()
    files = sorted(f for f in root.rglob("*") if f.is_file())
    stat_key = (str(root), tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stat_key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _FINGERPRINTS[stat_key] = "local-sha256:" + h.hexdigest()[:32]
    return _FINGERPRINTS[stat_key]


def checkpoint_identity(point: SweepPoint) -> tuple[str, str]:
    """(mteb model name, revision) of the 16-bit checkpoint: Hub revision, or the content hash of a local dir."""
    fp = checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path)
    return f"colq_sweep/{point.model.name}", point.model.revision or fp.split(":", 1)[1][:16]


def fixture_revision(root: str | os.PathLike) -> str:
    """Content revision of the fixture task: every file's relative path and bytes (images included)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return "fixture-" + h.hexdigest()[:16]


def key_versions() -> dict[str, str | None]:
    """Code versions that decide the weights (read from package metadata: importing auto-round patches
    transformers globally, and the reuse path must not import it)."""
    import torch
    import transformers

    return {
        "auto_round": dist_version("auto-round"),
        "transformers": transformers.__version__,
        "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2]),
    }


# ------------------------------------------------------------------------------------------------ keys


def artifact_key(point: SweepPoint, calib_revision: str | None, calib_selection: str | None, device_type: str) -> str:
    """Hash of everything that decides the quantized weights; a local checkpoint counts by its content, the
    calibration set (when the method reads one) by its pin (`calib_revision`: a Hub commit or a local file's sha256)
    and by the loader semantics its rows are selected with (`calib_selection`)."""
    if not point.quant.enabled:
        raise ValueError("artifact_key: quant.method=none has no quantized artifact")
    payload = {
        "schema": ARTIFACT_SCHEMA,
        "model": checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path),
        "knobs": quant_knobs(point),
        "device_type": device_type,
        "versions": key_versions(),
    }
    if point.quant.needs_calibration:
        payload.update(calib_revision=calib_revision, calib_selection=calib_selection)
    return _digest(payload, KEY_LEN)


def point_key(point: SweepPoint, device: str, calib_pin: str | None = None) -> str:
    """The run key a finished point is found (and skipped) by: the config hash plus the content of what its
    paths point to (checkpoint, calibration file, fixture task) and the device type the work runs on. Editing a
    local file changes it; re-spelling or moving a path does not. `calib_pin`: the calibration set's pin (or, when
    it cannot be resolved, its identity) for a point that calibrates."""
    ids: dict[str, str] = {
        "config": config_hash(point),
        "checkpoint": checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path),
        "device_type": device.split(":")[0],
    }
    if point.quant.enabled:
        if getattr(point.quant, "compute", None) == "auto":  # ark's own choice depends on the CPU: its int8 ISA
            ids["kernel_compute"] = f"ark-auto-{cpu_int8_isa()}"
        if point.quant.needs_calibration:
            ids["calib"] = calib_pin or point.calib.identity
    if point.eval.fixture_dir and FIXTURE_TASK in point.eval.tasks:
        ids["fixture"] = fixture_revision(Path(point.eval.fixture_dir))
    return _digest(ids, 16)


def eval_revision(checkpoint_rev: str, point: SweepPoint, compute_dtype: str | None = None, pixels: str = "pil") -> str:
    """The mteb revision of an evaluation: its page revision plus the index setting (`...-pool3-int8`), so two
    set-ups never share cached results."""
    tag = point.eval.index.tag
    return page_revision(checkpoint_rev, point, compute_dtype, pixels) + (f"-{tag}" if tag else "")


def page_revision(checkpoint_rev: str, point: SweepPoint, compute_dtype: str | None = None, pixels: str = "pil") -> str:
    """What keys the page embeddings: the checkpoint plus every setting that changes them (model dtype, page
    resolution cap, load-back kernels and the dtype they compute in, compiled blocks), not the index setting (every
    index setting of one checkpoint reads the same cached pages). `compute_dtype`: what a quantized checkpoint's
    kernels compute in here (quantize/kernels.py)."""
    parts = [checkpoint_rev[:16], point.model.dtype, f"v{point.model.max_num_visual_tokens}"]
    if point.quant.enabled:
        parts.append(point.quant.backend)
        if compute_dtype and compute_dtype != point.model.dtype:  # ark's CPU-dependent auto mode
            parts.append(compute_dtype)
    if point.eval.encoder.compile:  # fused kernels change embeddings by float round-off
        parts.append("compiled")
    if pixels != "pil":  # the resolved eval.preprocess_device: tensor-op pixels (evaluate/pixels.py)
        parts.append(f"px{pixels}")
    return "-".join(parts)
