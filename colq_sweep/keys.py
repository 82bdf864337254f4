"""Every identity in one place: why a point runs again, why an artifact or a cached result is reused.

- `config_hash`: the settings of a point as written in the config (no bookkeeping, no paths).
- `point_key` (the run key, MLflow tag `colq.config_hash`): config hash + the content of what its paths point to
  (checkpoint, calibration file, fixture task) + the device type (+ the CPU's int8 ISA for ark's auto compute).
  A FINISHED run with the same key is skipped.
- `artifact_key`: everything that decides the quantized weights (model content, `quant_knobs`, the calibration
  pin, device type, code versions): the folder name under outputs/models/.
- `eval_revision`: the mteb revision of an evaluation: checkpoint + dtype + page cap + kernels and the dtype
  they compute in. Cached results and page embeddings are keyed by it.
- `eval_hash`: which entries were asked for (tasks x languages), so the report compares like with like.
- Input pins: `checkpoint_fingerprint` (Hub id@revision or local bytes), `calib_revision` (Hub commit sha or a
  local file's sha256), `fixture_revision` (the fixture task's bytes), `key_versions` (code that decides weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from colq_sweep.config import CalibSpec, SweepPoint
from colq_sweep.fsio import file_sha256
from colq_sweep.runtime import cpu_int8_isa, dist_version, resolve_device
from colq_sweep.tasks import FIXTURE_TASK

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
ARTIFACT_SCHEMA = 2  # bump when the export post-processing changes what an artifact holds
KEY_LEN = 20
KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LEN}}}$")


# which auto-round loader's row selection a calibration source replays (quantize/calibration.py SEMANTICS): a
# change of semantics changes the rows, so it is part of the artifact key
CALIB_SELECTION = {
    "hub": "auto-round hub loader: datasets Dataset.shuffle(seed), text unstripped",
    "jsonl": "auto-round local-file loader: random.Random(seed).shuffle, text right-stripped",
}


class CalibrationError(RuntimeError):
    """Calibration data cannot give what the config asks for (too few usable samples, missing field, ...)."""


def _digest(payload: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ------------------------------------------------------------------------------------------------ config


# AutoRound settings that change its speed and memory but not the weights: in no key, so toggling one reuses what
# was built. low_gpu_mem_usage only moves cached block inputs between host and GPU: on an H200 the 4B exports with
# it on and off had the same sha256 (docs/PERFORMANCE.md). enable_torch_compile is not one: it changed a third of
# the int4 codes.
SAME_WEIGHTS = ("low_gpu_mem_usage",)


def quant_knobs(point: SweepPoint) -> dict[str, Any]:
    """Everything in the config that decides the quantized weights (the artifact key's inputs, less code versions)."""
    if not point.quant.enabled:
        return {}
    q = asdict(point.quant)
    for k in ("backend", "compute", "allow_fewer_samples", *SAME_WEIGHTS):  # load-time / policy / speed only
        q.pop(k)
    return {
        "quant": q,
        "seqlen": point.seqlen,
        "batch_size": point.batch_size,
        "nsamples": point.nsamples,
        "iters": point.iters,
        "seed": point.seed,
        "calib": point.calib.identity,
    }


def config_hash(point: SweepPoint) -> str:
    """Hash of the settings that decide a point's results, as written in the config: not bookkeeping (name,
    force, device, batch sizes of inference) and not paths. What paths point to (checkpoint, calibration
    file, fixture task) and the device type enter the run key through their content (point_key)."""
    d = point.to_dict()
    for k in ("name", "outputs_dir", "force", "tracking_uri", "device", "system_metrics"):
        d.pop(k)
    for k in ("notices", "query_batch_size", "page_batch_size", "corpus_cache", "preprocess_workers", "preprocess_mode",
              "fixture_dir"):
        d["eval"].pop(k)
    for k in ("allow_revision_mismatch", "compile"):
        if not d["eval"][k]:
            d["eval"].pop(k)  # the default leaves the hash as it was before the option
    d["eval"]["tasks"] = sorted(d["eval"]["tasks"])
    d["eval"]["languages"] = sorted(d["eval"]["languages"]) if d["eval"]["languages"] else None
    if d["eval"]["only"] is None:
        d["eval"].pop("only")  # configs without an entry list keep the hash they had before it existed
    else:
        d["eval"]["only"] = sorted(map(list, d["eval"]["only"]))
    d["model"].pop("path")
    d["calib"].pop("path")
    for k in SAME_WEIGHTS:
        d["quant"].pop(k)
    if not point.quant.enabled:  # knobs do not touch the baseline
        for k in ("seqlen", "batch_size", "nsamples", "iters", "seed", "calib"):
            d.pop(k)
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


def _cached_hub_ref(repo_id: str, revision: str, repo_type: str = "dataset") -> str | None:
    """The commit sha a branch/tag pointed to when it was last downloaded (HF cache `refs/`), if any."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:  # pragma: no cover - very old huggingface_hub
        return None
    ref = Path(HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        sha = ref.read_text().strip()
        return sha if SHA_RE.match(sha) else None
    return None


def calib_revision(calib: CalibSpec) -> str:
    """What pins the calibration text: a Hub commit sha, or `sha256:<hex>` of a local file's bytes.

    A Hub branch/tag (e.g. `main`) is resolved through the Hub API; offline (HF_HUB_OFFLINE=1) it falls back to
    the sha the local HF cache recorded for that ref, else it fails: an unpinned calibration set would make the
    artifact key meaningless.
    """
    if calib.source == "jsonl":
        return "sha256:" + file_sha256(str(calib.path))
    rev = str(calib.revision or "main")
    if SHA_RE.match(rev):
        return rev
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(str(calib.dataset), revision=rev).sha
        if sha and SHA_RE.match(sha):
            log.info("calibration %s@%s resolved to commit %s", calib.dataset, rev, sha)
            return sha
        raise CalibrationError(f"the Hub returned no commit sha for {calib.dataset}@{rev}")
    except CalibrationError:
        raise
    except Exception as err:
        cached = _cached_hub_ref(str(calib.dataset), rev)
        if cached:
            log.warning(
                "could not reach the Hub (%s); using the locally cached ref %s@%s -> %s",
                type(err).__name__, calib.dataset, rev, cached,
            )  # fmt: skip
            return cached
        raise CalibrationError(
            f"cannot resolve calibration revision {calib.dataset}@{rev} to a commit sha ({type(err).__name__}: "
            f"{err}); go online once, or set calib.revision to a 40-hex commit sha"
        ) from err


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


def artifact_key(point: SweepPoint, calib_rev: str | None = None) -> str:
    """Hash of everything that decides the quantized weights. `calib_rev=None` resolves it (a Hub branch
    needs the Hub or the local HF cache; a local .jsonl is hashed); a local checkpoint counts by its content."""
    if not point.quant.enabled:
        raise ValueError("artifact_key: quant.method=none has no quantized artifact")
    payload = {
        "schema": ARTIFACT_SCHEMA,
        "model": checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path),
        "knobs": quant_knobs(point),
        "calib_revision": calib_rev if calib_rev is not None else calib_revision(point.calib),
        "calib_selection": CALIB_SELECTION[point.calib.source],
        "device_type": resolve_device(point.device).split(":")[0],
        "versions": key_versions(),
    }
    return _digest(payload, KEY_LEN)


def point_key(point: SweepPoint, device: str) -> str:
    """The run key a finished point is found (and skipped) by: the config hash plus the content of what its
    paths point to (checkpoint, calibration file, fixture task) and the device type the work runs on. Editing a
    local file changes it; re-spelling or moving a path does not."""
    ids: dict[str, str] = {
        "config": config_hash(point),
        "checkpoint": checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path),
        "device_type": device.split(":")[0],
    }
    if point.quant.enabled:
        if point.quant.compute == "auto":  # ark's own choice depends on the CPU: key it on the CPU's int8 ISA
            ids["kernel_compute"] = f"ark-auto-{cpu_int8_isa()}"
        try:
            ids["calib"] = calib_revision(point.calib)
        except CalibrationError as err:  # offline with an unpinned Hub ref: the spec stands in
            log.warning("calibration revision not resolvable (%s); keying the run on %s", err, point.calib.identity)
            ids["calib"] = point.calib.identity
    if point.eval.fixture_dir and FIXTURE_TASK in point.eval.tasks:
        ids["fixture"] = fixture_revision(Path(point.eval.fixture_dir))
    return _digest(ids, 16)


def kernel_compute(point: SweepPoint, device: str) -> tuple[str, str]:
    """(kernel backend, effective compute dtype) that a quantized point's evaluation runs with on `device`."""
    from colq_sweep.quantize.load import kernel_compute_dtype, resolve_backend

    backend = resolve_backend(point.quant.backend, device)
    return backend, kernel_compute_dtype(backend, point.model.dtype, point.quant.compute)


def eval_revision(checkpoint_rev: str, point: SweepPoint, device: str = "cpu") -> str:
    """The mteb revision of an evaluation: the checkpoint plus every setting that changes its embeddings
    (model dtype, page resolution cap, load-back kernels and the dtype they compute in, compiled blocks), so two
    set-ups never share cached results."""
    parts = [checkpoint_rev[:16], point.model.dtype, f"v{point.model.max_num_visual_tokens}"]
    if point.quant.enabled:
        _, compute = kernel_compute(point, device)
        parts.append(point.quant.backend)
        if compute != point.model.dtype:  # ark's CPU-dependent auto mode
            parts.append(compute)
    if point.eval.compile:  # fused kernels change embeddings by float round-off
        parts.append("compiled")
    return "-".join(parts)
