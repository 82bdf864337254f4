"""AutoRound W4A16 quantization of ColQwen3 checkpoints: build-or-reuse cached artifacts, load them back, size them.

Only the Qwen3-VL language-model decoder blocks (`vlm.model.language_model.layers`) are quantized; the vision tower,
`embedding_proj_layer`, the token embeddings and `vlm.lm_head` keep their 16-bit weights, byte-identical to the
base checkpoint (auto-round upcasts the whole model to float32 on a CPU without bf16 support and exports those
float32 copies; the export gets the base tensors back after checking that every one is a plain cast of the base's).
Calibration text is selected and counted by `colq_sweep.calibration` and handed to auto-round as a .jsonl; the rows
that really reach the model during calibration are recorded and must equal that selection.

Artifacts live in `<models_dir>/<key>/`, where `key` hashes everything that decides the weights (model identity,
`point.quant_knobs()`, the resolved calibration revision, the quantization device type and the auto-round /
transformers / torch versions). An artifact is built in a hidden temporary sibling directory, gets a
`manifest.json` (inputs, calibration samples used, versions, timing, peak memory, every file with size and
sha256) and is then renamed into place, so a directory named `<key>` with a valid manifest is complete. A
complete artifact is reused without importing auto-round; anything else (leftover temp dirs, a `<key>` dir
without a valid manifest or with a file of the wrong size) is never used and is removed. Builds of one key are
serialised by an advisory lock (`<models_dir>/.locks/<key>.lock`), so concurrent sweep jobs neither build the same
artifact twice nor delete each other's work in progress.

Loading back (`load_quantized`) is strict whatever the backend:
- `ark`: auto-round-lib's CPU W4A16 kernels (transformers + `AutoRoundConfig(backend="ark")`);
- `gptqmodel`: gptqmodel's CUDA kernels (AWQ: exllamav2 AWQ kernels, auto_round format: Marlin), needs the
  `gpu` extra (`pip install 'colq_sweep[gpu]'`);
- `dequant`: our own unpacking of qweight/qzeros/scales into plain 16-bit `nn.Linear` weights; accuracy
  studies only (no speed or memory benefit), any device;
- `auto`: gptqmodel on CUDA if importable, ark on CPU.
A backend that cannot serve raises `BackendUnavailableError`; a load that leaves any tensor missing/unexpected,
any decoder Linear unquantized, or lands on auto-round's `auto_round:fake` fallback raises: auto-round would
otherwise happily run random weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from colq_sweep import calibration
from colq_sweep.config import SweepPoint
from colq_sweep.memory import PeakMemory

log = logging.getLogger(__name__)

ARTIFACT_SCHEMA = 2  # bump when the export post-processing changes what an artifact holds
QUANT_BLOCKS = "vlm.model.language_model.layers"
KEPT_MODULES = ["vlm.model.visual", "vlm.lm_head", "embedding_proj_layer"]  # Tomoro names, stay 16-bit
LAYER_CONFIG = {"embedding_proj_layer": {"bits": 16}}
MANIFEST = "manifest.json"
CALIB_FILE = "calibration.jsonl"
PROVENANCE_FILES = (MANIFEST, CALIB_FILE)  # artifact files that are not part of the HF checkpoint
# Copied from the base checkpoint so the export is self-contained (tokenizer + image processor).
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
QUANT_TENSOR_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")
KEY_LEN = 20
KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LEN}}}$")
TMP_RE = re.compile(rf"^\.(?P<key>[0-9a-f]{{{KEY_LEN}}})\.tmp-")
AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # logical column j of a group of 8 sits in nibble AWQ_ORDER[j]


class QuantizationError(RuntimeError):
    """Quantization produced something other than what the config asked for."""


class BackendUnavailableError(RuntimeError):
    """The requested inference backend cannot serve this checkpoint on this machine."""


@dataclass
class QuantArtifact:
    key: str
    path: Path  # the checkpoint directory, loadable with load_quantized / ColQwen3Processor.from_checkpoint
    manifest: dict
    reused: bool


# ----------------------------------------------------------------------------------------------- keys


def resolve_device(device: str) -> str:
    """`auto` -> `cuda:0` if available else `cpu`; `cuda` -> `cuda:0`."""
    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


def _torch_minor() -> str:
    import torch

    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def key_versions() -> dict[str, str | None]:
    """Code versions that decide the weights (read from package metadata: importing auto-round patches
    transformers globally, and the reuse path must not import it)."""
    import transformers

    return {
        "auto_round": _dist_version("auto-round"),
        "transformers": transformers.__version__,
        "torch": _torch_minor(),
    }


def artifact_key(point: SweepPoint, calib_revision: str | None = None) -> str:
    """Hash of everything that decides the quantized weights. `calib_revision=None` resolves it (a Hub branch
    needs the Hub or the local HF cache; a local .jsonl is hashed); a local checkpoint counts by its content."""
    from colq_sweep.model import checkpoint_fingerprint

    if not point.quant.enabled:
        raise ValueError("artifact_key: quant.method=none has no quantized artifact")
    rev = calib_revision if calib_revision is not None else calibration.resolve_revision(point.calib)
    payload = {
        "schema": ARTIFACT_SCHEMA,
        "model": checkpoint_fingerprint(point.model.id, point.model.revision, point.model.path),
        "knobs": point.quant_knobs(),
        "calib_revision": rev,
        "device_type": resolve_device(point.device).split(":")[0],
        "versions": key_versions(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_LEN]


# ---------------------------------------------------------------------------------------------- cache


@contextlib.contextmanager
def _key_lock(models_dir: Path, key: str, blocking: bool = True):
    """Advisory exclusive lock per key; yields False when non-blocking and someone else holds it."""
    lock_dir = models_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{key}.lock", "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process guard
            yield True
            return
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh.fileno(), flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify_artifact(path: str | os.PathLike, check_hashes: bool = False) -> tuple[bool, str]:
    """(complete?, why not): a valid manifest whose every file exists with the recorded size (and hash)."""
    path = Path(path)
    if not path.is_dir():
        return False, "not a directory"
    manifest = _read_manifest(path)
    if manifest is None:
        return False, "no readable manifest.json"
    if manifest.get("schema") != ARTIFACT_SCHEMA:
        return False, f"manifest schema {manifest.get('schema')!r} != {ARTIFACT_SCHEMA}"
    if manifest.get("key") != path.name:
        return False, f"manifest key {manifest.get('key')!r} != directory name"
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return False, "manifest lists no files"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return False, f"{name} missing"
        if f.stat().st_size != meta.get("size"):
            return False, f"{name} has {f.stat().st_size} bytes, manifest says {meta.get('size')}"
        if check_hashes and calibration.file_sha256(f) != meta.get("sha256"):
            return False, f"{name} sha256 differs from the manifest"
    return True, ""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_incomplete(models_dir: str | os.PathLike) -> list[Path]:
    """Remove leftover temp dirs and `<key>` dirs without a valid manifest; return what was removed.

    Entries whose key is locked by a live build (another process) are left alone; names that are not ours
    (not a 20-hex key or a `.<key>.tmp-*` dir) are never touched."""
    models_dir = Path(models_dir)
    removed: list[Path] = []
    if not models_dir.is_dir():
        return removed
    for entry in sorted(models_dir.iterdir()):
        m = TMP_RE.match(entry.name)
        if m:
            key = m["key"]
        elif KEY_RE.match(entry.name) and entry.is_dir():
            key = entry.name
        else:
            continue
        with _key_lock(models_dir, key, blocking=False) as got:
            if not got:
                log.info("leaving %s alone: its key is being built by another process", entry)
                continue
            if not m:
                ok, why = verify_artifact(entry)
                if ok:
                    continue
                log.warning("removing incomplete artifact %s (%s)", entry, why)
            else:
                log.warning("removing leftover temporary artifact %s", entry)
            _remove(entry)
            removed.append(entry)
    return removed


def _clean_key(models_dir: Path, key: str) -> None:
    """With the key's lock held: drop its leftover temp dirs."""
    for entry in models_dir.glob(f".{key}.tmp-*"):
        log.warning("removing leftover temporary artifact %s", entry)
        _remove(entry)


# ----------------------------------------------------------------------------------------------- build


def quantize_point(point: SweepPoint, models_dir: str | os.PathLike) -> QuantArtifact:
    """Build the point's W4A16 artifact, or reuse the complete one with the same key."""
    from colq_sweep.model import resolve_checkpoint_dir

    if not point.quant.enabled:
        raise ValueError("quantize_point: quant.method=none has nothing to quantize")
    if point.nsamples % point.batch_size and not point.quant.allow_fewer_samples:
        # auto-round 0.16.1 fails on a partial last calibration batch (see calibration.trim_to_full_batches)
        full = point.nsamples - point.nsamples % point.batch_size
        raise QuantizationError(
            f"nsamples={point.nsamples} is not a multiple of batch_size={point.batch_size}: auto-round 0.16.1 "
            "cannot calibrate a partial last batch on Qwen3-VL (its rotary embeddings are cached per batch); "
            f"use nsamples={full} or {full + point.batch_size}, or set quant.allow_fewer_samples=true to calibrate "
            f"on {full} samples"
        )
    models_dir = Path(models_dir).resolve()
    models_dir.mkdir(parents=True, exist_ok=True)
    clean_incomplete(models_dir)  # leftovers of killed builds (live builds of other processes are locked)
    base_dir = resolve_checkpoint_dir(point.model.source, point.model.revision)
    calib_rev = calibration.resolve_revision(point.calib)
    key = artifact_key(point, calib_rev)
    final = models_dir / key
    with _key_lock(models_dir, key):
        _clean_key(models_dir, key)
        if final.exists() and point.force:
            log.info("force=true: rebuilding artifact %s", final)
            _remove(final)
        if final.exists():
            ok, why = verify_artifact(final)
            if ok:
                manifest = _read_manifest(final) or {}
                log.info("reusing quantized artifact %s (%s)", final, point.label)
                return QuantArtifact(key=key, path=final, manifest=manifest, reused=True)
            log.warning("artifact %s is incomplete (%s): removing and rebuilding", final, why)
            _remove(final)
        tmp = models_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = _build(point, base_dir, calib_rev, key, tmp)
            os.rename(tmp, final)
            _fsync_dir(models_dir)
        except BaseException:
            _remove(tmp)
            raise
    log.info("quantized artifact ready: %s (%.1f s)", final, manifest["quant_seconds"])
    return QuantArtifact(key=key, path=final, manifest=manifest, reused=False)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_dtype(ckpt_dir: str | os.PathLike) -> str:
    """The float dtype the checkpoint was saved in (config `dtype`/`torch_dtype`), default bfloat16."""
    try:
        cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "bfloat16"
    for d in (cfg, cfg.get("text_config") or {}):
        for k in ("dtype", "torch_dtype"):
            if d.get(k) in ("bfloat16", "float16", "float32"):
                return d[k]
    return "bfloat16"


def autoround_kwargs(point: SweepPoint, device: str, dataset: str) -> dict[str, Any]:
    """Every AutoRound argument the config decides (plus the fixed ColQwen3 scoping)."""
    q = point.quant
    kw: dict[str, Any] = dict(
        scheme=q.scheme,
        bits=q.bits,
        group_size=q.group_size,
        sym=q.sym,
        iters=point.iters,
        nsamples=point.nsamples,
        seqlen=point.seqlen,
        batch_size=point.batch_size,
        seed=point.seed,
        low_gpu_mem_usage=q.low_gpu_mem_usage,
        enable_torch_compile=q.enable_torch_compile,
        # auto-round's default amp tunes in bf16 on a CPU with AVX512-BF16/AMX and in float32 on one without, so
        # the same config gave different weights on different CPUs: on a CPU it always tunes in float32.
        amp=not device.startswith("cpu"),
        # "cuda:N" as a string is parsed by auto-round as a per-layer map ("<regex>:<device>") and warns;
        # an int index is its own default form for one accelerator
        device_map=int(device.split(":")[1]) if device.startswith("cuda:") else device,
        dataset=dataset,
        quant_nontext_module=False,
        to_quant_block_names=QUANT_BLOCKS,
        layer_config={k: dict(v) for k, v in LAYER_CONFIG.items()},
    )
    if q.lr is not None:
        kw["lr"] = q.lr
    if q.minmax_lr is not None:
        kw["minmax_lr"] = q.minmax_lr
    return kw


def _autoround_entry():
    """auto-round's entry point, imported only when a build really happens."""
    from auto_round import AutoRound

    return AutoRound


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _gc_frozen():
    """Move every object alive now out of the garbage collector's reach for the duration.

    auto-round calls `gc.collect()` after every block and layer; with torch + transformers + datasets imported
    each call walks ~10^6 long-lived objects (0.7 s each on 2 CPU cores: 85% of a tiny quantization). Objects
    created inside the block (the model, auto-round's state) are still collected normally. Skipped if the caller
    froze objects itself (unfreezing would undo that)."""
    import gc

    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _RowRecorder:
    """Every distinct token row that reaches the language model's input embedding while installed."""

    def __init__(self, embedding):
        self.rows: set[tuple[int, ...]] = set()
        self.calls = 0
        self.handle = embedding.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        ids = args[0] if args else None
        if ids is not None and hasattr(ids, "dim") and ids.dim() == 2:
            self.calls += 1
            self.rows.update(tuple(r) for r in ids.tolist())

    def remove(self) -> None:
        self.handle.remove()


class _AutoRoundLogWatch(logging.Handler):
    """Collect auto-round's warnings during a build; some of them mean calibration data was silently skipped."""

    FATAL = ("Calibration forward pass failed",)

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self.logger = logging.getLogger("autoround")  # auto_round.logger: propagate=False

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            msg = record.getMessage()
            if msg not in self.messages and len(self.messages) < 50:
                self.messages.append(msg)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        return False

    def fatal(self) -> list[str]:
        return [m for m in self.messages if any(f in m for f in self.FATAL)]


def _build(point: SweepPoint, base_dir: Path, calib_rev: str, key: str, tmp: Path) -> dict:
    t_build = time.perf_counter()
    AutoRound = _autoround_entry()  # import before freezing: its module objects are long-lived too
    with _gc_frozen():
        return _build_frozen(AutoRound, point, base_dir, calib_rev, key, tmp, t_build)


def _build_frozen(
    AutoRound, point: SweepPoint, base_dir: Path, calib_rev: str, key: str, tmp: Path, t_build: float
) -> dict:
    import torch
    from torch import nn

    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    device = resolve_device(point.device)
    processor = ColQwen3Processor.from_checkpoint(base_dir, point.model.max_num_visual_tokens)

    # Calibration first: a shortfall fails in seconds, before any model is loaded.
    scratch = None
    calib_path = tmp / CALIB_FILE
    if not calibration.safe_for_autoround(calib_path):
        scratch = Path(tempfile.mkdtemp(prefix="colq_calib_"))
        calib_path = scratch / CALIB_FILE
    try:
        calib = calibration.prepare(
            point.calib,
            processor.tokenizer,
            seqlen=point.seqlen,
            nsamples=point.nsamples,
            seed=point.seed,
            out_path=calib_path,
            allow_fewer=point.quant.allow_fewer_samples,
            revision=calib_rev,
            batch_size=point.batch_size,
        )
        load_dtype = checkpoint_dtype(base_dir)
        model = load_colqwen3(base_dir, dtype=load_dtype, device="cpu")
        expected = sorted(
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.startswith(QUANT_BLOCKS + ".")
        )
        kwargs = autoround_kwargs(point, device, str(calib.path))
        raw_dir = tmp / "_autoround_out"
        recorder = _RowRecorder(model.get_input_embeddings())
        log.info(
            "quantizing %s (%s) on %s: %d decoder Linear layers",
            point.model.name,
            point.label,
            device,
            len(expected),
        )
        with PeakMemory(device) as mem, _AutoRoundLogWatch() as watch:
            t0 = time.perf_counter()
            with _env(AR_DISABLE_DATASET_SUBPROCESS="1", AR_WORK_SPACE=str(tmp / "_ar_work")):
                ar = AutoRound(
                    model,
                    tokenizer=processor.tokenizer,
                    processor=processor,
                    image_processor=processor.image_processor,
                    **kwargs,
                )
                try:
                    result = ar.quantize_and_save(str(raw_dir), format=point.quant.format)
                except SystemExit as exc:  # auto-round calls sys.exit() on some failures
                    raise QuantizationError(f"auto-round exited (code {exc.code}) while quantizing") from exc
            quant_seconds = time.perf_counter() - t0
        recorder.remove()
        if scratch is not None:
            shutil.copyfile(calib.path, tmp / CALIB_FILE)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    # The samples auto-round really calibrated on must be exactly our selection.
    if watch.fatal():
        raise QuantizationError(f"auto-round skipped calibration data: {watch.fatal()[:3]}")
    selected = {tuple(ids) for ids in calib.selection.token_ids}
    if recorder.rows != selected:
        raise QuantizationError(
            f"auto-round calibrated on {len(recorder.rows)} distinct samples, {len(recorder.rows - selected)} of them "
            f"not in our selection of {len(selected)}: the recorded sample count would be wrong"
        )
    del model, ar
    export_src = _find_export_dir(raw_dir, result)
    for f in export_src.iterdir():
        shutil.move(str(f), tmp / f.name)
    subfolder = export_src.name
    shutil.rmtree(raw_dir, ignore_errors=True)
    shutil.rmtree(tmp / "_ar_work", ignore_errors=True)
    export_info = _postprocess_export(tmp, base_dir, expected)
    export_info["autoround_subfolder"] = subfolder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    files = {
        f.name: {"size": f.stat().st_size, "sha256": calibration.file_sha256(f)}
        for f in sorted(tmp.iterdir())
        if f.is_file() and f.name != MANIFEST
    }
    calib_summary = calib.summary()
    manifest = {
        "schema": ARTIFACT_SCHEMA,
        "key": key,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # flat numbers, for trackers
        "samples_used": calib.selection.used,
        "samples_requested": point.nsamples,
        "quant_seconds": quant_seconds,
        "build_seconds": time.perf_counter() - t_build,
        "quant_peak_rss_mb": mem.peak_rss / 2**20 if mem.peak_rss is not None else None,
        "quant_peak_cuda_mb": mem.peak_cuda / 2**20 if mem.peak_cuda is not None else None,
        "inputs": {
            "model_identity": point.model.identity,
            "model_name": point.model.name,
            "base_checkpoint": str(base_dir),
            "quant_knobs": point.quant_knobs(),
            "calib_identity": point.calib.identity,
            "calib_revision": calib_rev,
            "device": device,
            # the SIMD level torch dispatched to: float32 tuning can round single weights differently across levels
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "quant_load_dtype": load_dtype,
            "format": point.quant.format,
            "autoround_kwargs": {
                **{k: v for k, v in kwargs.items() if k != "dataset"},
                "dataset": CALIB_FILE,
            },
        },
        "calibration": {
            **calib_summary,
            "rows_seen_by_model": len(recorder.rows),
            "calibration_forward_calls": recorder.calls,
        },
        "autoround_warnings": watch.messages,
        "versions": {
            **key_versions(),
            "torch_full": torch.__version__,
            "auto_round_lib": _dist_version("auto-round-lib"),
            "python": sys.version.split()[0],
        },
        "memory": {
            "peak_rss_bytes": mem.peak_rss,
            "peak_rss_method": mem.method,
            "peak_cuda_allocated_bytes": mem.peak_cuda,
        },
        "export": export_info,
        "files": files,
    }
    part = tmp / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    part.replace(tmp / MANIFEST)
    return manifest


def _find_export_dir(raw_dir: Path, result: Any) -> Path:
    """`quantize_and_save` writes into a subfolder (`<model>-w4g128/`); find it (exactly one checkpoint)."""
    found = sorted({p.parent.resolve() for p in raw_dir.rglob("config.json")})
    if len(found) != 1:
        raise QuantizationError(
            f"expected one checkpoint under {raw_dir}, auto-round wrote {len(found)}: {found}"
        )
    named = [
        Path(x).resolve()
        for x in (result if isinstance(result, (tuple, list)) else ())
        if isinstance(x, (str, os.PathLike))
    ]
    if named and named[0] != found[0]:
        log.warning("auto-round reported %s but wrote %s", named[0], found[0])
    return found[0]


# ---------------------------------------------------------------------------------------------- export


def _safetensors_files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.iterdir() if p.suffix == ".safetensors")


def _quant_prefixes(names) -> set[str]:
    return {n[: -len(".qweight")] for n in names if n.endswith(".qweight")}


def _is_quant_tensor(name: str, prefixes: set[str]) -> bool:
    head, _, leaf = name.rpartition(".")
    return head in prefixes


def _postprocess_export(out: Path, base_dir: Path, expected: list[str]) -> dict:
    """Tomoro-layout config, kept modules restored to the base dtype, processor files, layout check."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    info: dict[str, Any] = {}
    # 1. config: model_type/embed_dim must survive; name the kept modules with Tomoro names.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "colqwen3" or "embed_dim" not in cfg:
        raise QuantizationError(f"exported config lost model_type/embed_dim: {cfg.get('model_type')!r}")
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise QuantizationError("exported config has no quantization_config")
    info["modules_to_not_convert_autoround"] = qc.get("modules_to_not_convert")
    for path in (cfg_path, out / "quantization_config.json"):
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        target = d["quantization_config"] if path == cfg_path else d
        target["modules_to_not_convert"] = list(KEPT_MODULES)
        path.write_text(json.dumps(d, indent=2) + "\n")
    info["quant_method"] = qc.get("quant_method")
    info["packing_format"] = qc.get(
        "packing_format", "auto_round:auto_awq" if qc.get("quant_method") == "awq" else None
    )

    # 2. tensors: every non-quantized tensor must equal the base's; store it in the base's dtype.
    base_tensors: dict[str, Any] = {}
    for f in _safetensors_files(base_dir):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                base_tensors[k] = (f, None)
    restored, changed, new = 0, [], []
    all_names: list[str] = []
    for f in _safetensors_files(out):
        with safe_open(str(f), "pt") as sf:
            metadata = sf.metadata() or {"format": "pt"}
        tensors = load_file(str(f))
        all_names += list(tensors)
        prefixes = _quant_prefixes(tensors)
        dirty = False
        for name, t in tensors.items():
            if _is_quant_tensor(name, prefixes) or not t.is_floating_point():
                continue
            if name not in base_tensors:
                new.append(name)
                continue
            with safe_open(str(base_tensors[name][0]), "pt") as sf:
                b = sf.get_tensor(name)
            # the exported tensor is the base tensor passed through a dtype cast (float32 on CPU; a float16
            # export would be a lossy cast): store the base tensor itself
            if b.shape != t.shape or not torch.equal(t, b.to(t.dtype)):
                changed.append(name)
                continue
            if t.dtype != b.dtype or not torch.equal(t, b):
                tensors[name] = b
                restored += 1
                dirty = True
        if dirty:
            part = f.with_name(f.name + ".part")
            save_file(tensors, str(part), metadata=metadata)
            part.replace(f)
    if changed:
        log.warning(
            "%d non-quantized tensors differ from the base checkpoint (kept as exported): %s",
            len(changed),
            changed[:5],
        )
    _fix_index_total_size(out)
    info.update(restored_to_base_dtype=restored, float_tensors_changed=changed, tensors_not_in_base=new)

    # 3. layout: packed tensors for exactly the decoder Linear layers, no dense weight left for them.
    prefixes = _quant_prefixes(all_names)
    missing, extra = sorted(set(expected) - prefixes), sorted(prefixes - set(expected))
    dense_left = sorted(p for p in expected if f"{p}.weight" in all_names)
    if missing or extra or dense_left:
        raise QuantizationError(
            f"export layout wrong: {len(missing)} decoder Linear layers not quantized {missing[:3]}, "
            f"{len(extra)} unexpected quantized layers {extra[:3]}, {len(dense_left)} with a dense weight left"
        )
    info["quantized_layers"] = len(prefixes)

    # 4. self-contained: the base's tokenizer + image processor files.
    copied = []
    for name in PROCESSOR_FILES:
        src = base_dir / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    info["processor_files_from_base"] = copied
    return info


def _fix_index_total_size(ckpt: Path) -> None:
    idx = ckpt / "model.safetensors.index.json"
    if not idx.is_file():
        return
    d = json.loads(idx.read_text())
    total = 0
    for f in _safetensors_files(ckpt):
        for meta in read_safetensors_header(f).values():
            total += meta["data_offsets"][1] - meta["data_offsets"][0]
    d.setdefault("metadata", {})["total_size"] = total
    idx.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets} from a .safetensors header (no tensor data read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


# ------------------------------------------------------------------------------------------ dequantize


def quant_config(path: str | os.PathLike) -> dict:
    cfg = json.loads((Path(path) / "config.json").read_text())
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise ValueError(f"{path} is not a quantized checkpoint (no quantization_config in config.json)")
    return qc


def packing_of(qc: dict) -> str:
    """`awq` (AWQ GEMM: packed along out-features, interleaved) or `gptq` (packed along in-features, zero-1)
    or `auto_round` (packed along in-features, plain zero)."""
    method = str(qc.get("quant_method", ""))
    fmt = str(qc.get("packing_format", ""))
    if "awq" in method or "awq" in fmt:
        return "awq"
    if "gptq" in method or "gptq" in fmt:
        return "gptq"
    if method in ("auto-round", "intel/auto-round") and fmt in ("", "auto_round"):
        return "auto_round"
    raise ValueError(f"unsupported packing: quant_method={method!r} packing_format={fmt!r}")


def unpack_int32(packed, bits: int, dim: int):
    """Split each int32 into 32/bits unsigned values, lowest bits first, along `dim` (2/4/8-bit only)."""
    import torch

    if bits not in (2, 4, 8):
        raise NotImplementedError(f"dequantizing {bits}-bit weights is not supported (2, 4 or 8 bits only)")
    per = 32 // bits
    p = packed.to(torch.int32).movedim(dim, -1)
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=p.device)
    vals = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    vals = vals.reshape(*p.shape[:-1], p.shape[-1] * per)
    return vals.movedim(-1, dim)


def unpack_awq(packed):
    """AWQ GEMM 4-bit: nibble AWQ_ORDER[j] of each int32 holds logical column j of its group of 8."""
    import torch

    vals = unpack_int32(packed, 4, dim=-1)
    lead = vals.shape[:-1]
    vals = vals.reshape(*lead, -1, 8)[..., list(AWQ_ORDER)]
    return vals.reshape(*lead, -1).to(torch.int32)


def dequantize_linear(tensors: dict, packing: str, bits: int, group_size: int, out_dtype=None):
    """(out_features, in_features) float weight from one layer's {qweight, qzeros, scales[, g_idx]}."""
    import torch

    qweight, qzeros, scales = tensors["qweight"], tensors["qzeros"], tensors["scales"].float()
    if packing == "awq":
        if bits != 4:
            raise NotImplementedError("AWQ packing is 4-bit only")
        iw = unpack_awq(qweight)  # (in, out)
        zeros = unpack_awq(qzeros)  # (groups, out)
    else:
        iw = unpack_int32(qweight, bits, dim=0)  # (in, out)
        zeros = unpack_int32(qzeros, bits, dim=1)  # (groups, out)
        if packing == "gptq":
            zeros = zeros + 1  # GPTQ v1 stores zero-1
    in_features, out_features = iw.shape
    zeros = zeros[:, :out_features].float()
    if tensors.get("g_idx") is not None:
        group = tensors["g_idx"].long()
    else:
        gs = in_features if group_size in (-1, None) else group_size
        group = torch.arange(in_features, device=iw.device) // gs
    w_t = (iw.float() - zeros[group]) * scales[group]
    w = w_t.t().contiguous()
    return w.to(out_dtype) if out_dtype is not None else w


def dequantized_state_dict(path: str | os.PathLike, dtype=None, only: str | None = None) -> dict:
    """The checkpoint's state dict with every packed layer replaced by its dequantized `.weight`
    (`only`: just that layer's tensors)."""
    from safetensors import safe_open

    path = Path(path)
    qc = quant_config(path)
    packing, bits, group_size = packing_of(qc), int(qc.get("bits", 4)), int(qc.get("group_size", 128))
    sd: dict = {}
    for f in _safetensors_files(path):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if only is None or k.rsplit(".", 1)[0] == only:
                    sd[k] = st.get_tensor(k)
    prefixes = _quant_prefixes(sd)
    for p in sorted(prefixes):
        parts = {leaf: sd.pop(f"{p}.{leaf}", None) for leaf in QUANT_TENSOR_SUFFIXES}
        sd[f"{p}.weight"] = dequantize_linear(parts, packing, bits, group_size, out_dtype=dtype)
    return sd


# ---------------------------------------------------------------------------------------------- loading


def _module_available(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str, device: str) -> str:
    """`auto` -> gptqmodel on CUDA if importable, else ark on CPU; checks the named backend can serve here."""
    dev = str(device)
    if backend == "auto":
        if dev.startswith("cuda"):
            if _module_available("gptqmodel"):
                return "gptqmodel"
            raise BackendUnavailableError(
                "backend=auto on CUDA needs gptqmodel for real W4A16 kernels and it is not installed "
                "(pip install 'colq_sweep[gpu]'); or use quant.backend=dequant (16-bit weights, accuracy only)"
            )
        backend = "ark"
    if backend == "ark":
        if not dev.startswith("cpu"):
            raise BackendUnavailableError(
                f"backend=ark runs on CPU only (device={dev}); use gptqmodel or dequant"
            )
        if not _module_available("auto_round_kernel"):
            raise BackendUnavailableError(
                "backend=ark needs auto-round-lib (module auto_round_kernel), which is not installed: "
                "pip install auto-round-lib; or use quant.backend=dequant"
            )
    elif backend == "gptqmodel":
        if not dev.startswith("cuda"):
            raise BackendUnavailableError(
                f"backend=gptqmodel needs a CUDA device (device={dev}); use ark on CPU"
            )
        if not _module_available("gptqmodel"):
            raise BackendUnavailableError(
                "backend=gptqmodel needs gptqmodel, which is not installed: pip install 'colq_sweep[gpu]' "
                "(gptqmodel>=7.6,<7.7 for torch 2.13); or use quant.backend=dequant"
            )
    elif backend != "dequant":
        raise ValueError(f"unknown backend {backend!r}; allowed: auto, ark, gptqmodel, dequant")
    return backend


# auto-round-lib's names for the dtypes its CPU kernels can compute in
_ARK_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# CPU features that make ark's `auto` compute mode quantize activations to int8 (the most capable first)
_INT8_ISA_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


def cpu_int8_isa() -> str:
    """The CPU's strongest int8 matmul feature (`amx_int8`, `avx512_vnni`, `avx_vnni`) or `none`."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return next((f for f in _INT8_ISA_FLAGS if f in flags), "none")


def kernel_compute_dtype(backend: str, dtype: str, compute: str = "activation") -> str:
    """What the quantized matmuls effectively compute in, recorded with every run and part of the eval revision.

    `activation`: the model dtype, whatever the backend (ark is pinned to it; dequant and the CUDA kernels run
    in it), so the result does not depend on the CPU. ark's `auto` mode lets auto-round-lib choose per CPU (int8
    activations where AMX/VNNI exist): recorded with the CPU feature that decides it, so runs on different CPUs
    never count as the same evaluation."""
    if compute == "auto":
        if backend != "ark":
            raise ValueError(f"compute=auto exists only for the ark CPU kernels, not backend={backend}")
        return f"ark-auto-{cpu_int8_isa()}"
    return dtype


def load_quantized(
    path: str | os.PathLike,
    backend: str = "auto",
    device: str = "cpu",
    dtype: str = "bfloat16",
    compute: str = "activation",
):
    """Load a quantized export strictly with real kernels (ark / gptqmodel) or dequantized (dequant).

    `compute="activation"` (the default) makes the ark CPU kernels compute in `dtype`, like dequant does, and
    checks it on one layer; `compute="auto"` keeps auto-round-lib's per-CPU choice (see kernel_compute_dtype).
    """
    path = Path(path)
    device = str(device)
    which = resolve_backend(backend, device)
    effective = kernel_compute_dtype(which, dtype, compute)
    qc = quant_config(path)
    packing = packing_of(qc)
    if which == "dequant":
        model = _load_dequantized(path, device, dtype)
    elif which == "ark":
        pin = contextlib.nullcontext() if compute == "auto" else _ark_compute_dtype(_ARK_DTYPES[dtype])
        with pin:
            model = _load_with_autoround_backend(path, "ark", device, dtype, "auto_round_kernel")
        if compute != "auto":
            check_ark_compute(model, path, dtype)
    else:
        ar_backend = "gptqmodel:awq" if packing == "awq" else "gptqmodel"
        model = _load_with_autoround_backend(path, ar_backend, device, dtype, "gptqmodel")
    model.colq_backend = which
    model.colq_compute_dtype = effective
    log.info("loaded %s with backend=%s on %s (%s, computing in %s)", path, which, device, dtype, effective)
    return model


class _RepackWithComputeDtype:
    """Stands in for auto-round-lib's `ark` extension module during a layer's `post_init`: the same functions,
    but `repack_quantized_weight` packs for `compute_dtype` instead of the `"auto"` that post_init passes."""

    def __init__(self, ark, compute_dtype: str):
        self._ark, self._cdt = ark, compute_dtype

    def __getattr__(self, name: str):
        return getattr(self._ark, name)

    def repack_quantized_weight(self, intweight, scales, zeros, group_size, _compute_dtype, *rest):
        return self._ark.repack_quantized_weight(intweight, scales, zeros, group_size, self._cdt, *rest)


@contextlib.contextmanager
def _ark_compute_dtype(cdt: str):
    """Loads inside this context get ark layers that compute in `cdt` ("fp32", "bf16", "fp16").

    auto-round-lib 0.16's `QuantLinear.post_init` hard-codes compute dtype "auto" (int8 activations on AMX/VNNI
    CPUs) and takes no argument for it; its forward passes `self.cdt` to the GEMM. So post_init is wrapped to repack
    for `cdt` and to leave `cdt` on the layer. check_ark_compute verifies the result numerically."""
    import auto_round_kernel.qlinear as qlinear

    original = qlinear.QuantLinear.post_init

    def post_init(layer):
        real = qlinear.ark
        qlinear.ark = _RepackWithComputeDtype(real, cdt)
        try:
            original(layer)
        finally:
            qlinear.ark = real
        layer.cdt = cdt

    qlinear.QuantLinear.post_init = post_init
    try:
        yield
    finally:
        qlinear.QuantLinear.post_init = original


def check_ark_compute(model, path: str | os.PathLike, dtype: str) -> None:
    """The ark layers compute in `dtype`: every layer is packed for it, and the first one's output equals a
    plain `dtype` matmul with the dequantized weights (to float round-off) on a random input."""
    import torch

    cdt = _ARK_DTYPES[dtype]
    names = sorted(_quant_prefixes(set().union(*(read_safetensors_header(f) for f in _safetensors_files(Path(path))))))
    wrong = [n for n in names if getattr(model.get_submodule(n), "cdt", None) != cdt]
    if wrong:
        raise BackendUnavailableError(
            f"{len(wrong)} ark layers do not compute in {dtype} (e.g. {wrong[0]}); use quant.backend=dequant"
        )
    torch_dtype = getattr(torch, dtype)
    weight = dequantized_state_dict(path, dtype=torch_dtype, only=names[0])[f"{names[0]}.weight"]
    x = torch.randn(8, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(torch_dtype)
    with torch.no_grad():
        got = model.get_submodule(names[0])(x).float()
    want = (x @ weight.t()).float()
    rel = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
    tol = 1e-5 if dtype == "float32" else 2e-3  # int8 activations are off by ~7e-3 on AMX CPUs
    if not rel <= tol:
        raise BackendUnavailableError(
            f"the ark CPU kernels do not compute in {dtype} on this CPU ({names[0]}: relative error {rel:.1e} against "
            f"the dequantized weights); use quant.backend=dequant"
        )


def _load_with_autoround_backend(path: Path, ar_backend: str, device: str, dtype: str, module_prefix: str):
    from transformers import AutoRoundConfig

    from colq_sweep.model import load_colqwen3

    kwargs: dict[str, Any] = {"quantization_config": AutoRoundConfig(backend=ar_backend)}
    if device.startswith("cuda"):
        kwargs["device_map"] = {"": device}
    try:
        model = load_colqwen3(path, dtype=dtype, device=device, **kwargs)
    except SystemExit as exc:  # auto-round sys.exit()s when a backend's requirements are missing
        raise BackendUnavailableError(
            f"auto-round could not set up backend {ar_backend!r} for {path} (it exited with code {exc.code}); "
            "see its log above for the missing requirement"
        ) from exc
    check_kernel_modules(model, path, module_prefix)
    return model


def check_kernel_modules(model, path: str | os.PathLike, module_prefix: str) -> None:
    """Every packed layer of the checkpoint is served by a real kernel module from `module_prefix`."""
    from torch import nn

    names = set()
    for f in _safetensors_files(Path(path)):
        names |= set(read_safetensors_header(f))
    prefixes = sorted(_quant_prefixes(names))
    if not prefixes:
        raise QuantizationError(f"{path} holds no packed (qweight) tensors")
    bad = []
    for p in prefixes:
        mod = model.get_submodule(p)
        cls = type(mod)
        if (
            isinstance(mod, nn.Linear)
            or "fake" in cls.__name__.lower()
            or not cls.__module__.startswith(module_prefix)
        ):
            bad.append(f"{p}: {cls.__module__}.{cls.__name__}")
    fakes = [n for n, m in model.named_modules() if "fake" in type(m).__name__.lower()]
    if bad or fakes:
        raise BackendUnavailableError(
            f"{len(bad)} of {len(prefixes)} quantized layers are not served by {module_prefix} kernels "
            f"({bad[:3]}); fake/fallback modules: {fakes[:3]}. Refusing to run (auto-round's fallback runs random "
            "or fake-quantized weights)"
        )


def _load_dequantized(path: Path, device: str, dtype: str):
    from colq_sweep.model import ColQwen3, ColQwen3Config, _check_load_info, resolve_dtype

    cfg_dict = json.loads((path / "config.json").read_text())
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("dtype", None)
    cfg_dict.pop("torch_dtype", None)
    config = ColQwen3Config.from_dict(cfg_dict)
    torch_dtype = resolve_dtype(dtype)
    sd = dequantized_state_dict(path, dtype=torch_dtype)
    model, info = ColQwen3.from_pretrained(
        None,
        config=config,
        state_dict=sd,
        dtype=torch_dtype,
        output_loading_info=True,
        trust_remote_code=False,
    )
    _check_load_info(info, str(path))
    model.eval()
    return model.to(device)


# ------------------------------------------------------------------------------------------------ sizes


def checkpoint_bytes(d: Path, exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """(weight-file bytes, total bytes) of the files in a checkpoint directory."""
    weights = total = 0
    for f in d.iterdir():
        if not f.is_file() or f.name in exclude:
            continue
        size = f.stat().st_size
        total += size
        if f.name.endswith(WEIGHT_SUFFIXES):
            weights += size
    return weights, total


_WIDTH = {"BF16": 16, "F16": 16, "F32": 32, "F64": 64, "F8_E4M3": 8, "F8_E5M2": 8}


def param_counts(ckpt: str | os.PathLike) -> dict[str, float]:
    """Parameters by precision from the safetensors headers; packed ints count as their logical weights."""
    ckpt = Path(ckpt)
    headers: dict[str, dict] = {}
    for f in _safetensors_files(ckpt):
        headers.update(read_safetensors_header(f))
    bits = None
    with contextlib.suppress(ValueError, OSError):
        bits = int(quant_config(ckpt).get("bits", 4))
    prefixes = _quant_prefixes(headers)
    out: dict[str, float] = {
        "params_16bit": 0.0,
        "params_32bit": 0.0,
        "params_other": 0.0,
        "quant_meta_bytes": 0.0,
    }
    qkey = f"params_int{bits}" if bits else None
    if qkey:
        out[qkey] = 0.0
    for name, meta in headers.items():
        n = 1
        for s in meta["shape"]:
            n *= s
        nbytes = meta["data_offsets"][1] - meta["data_offsets"][0]
        head, _, leaf = name.rpartition(".")
        if head in prefixes and leaf in QUANT_TENSOR_SUFFIXES:
            if leaf == "qweight":
                out[qkey] += n * 32 / bits
            else:
                out["quant_meta_bytes"] += nbytes
            continue
        width = _WIDTH.get(meta["dtype"])
        if width == 16:
            out["params_16bit"] += n
        elif width == 32:
            out["params_32bit"] += n
        else:
            out["params_other"] += n
    out["params_total"] = sum(v for k, v in out.items() if k.startswith("params_"))
    if qkey:
        out["params_quantized_pct"] = 100.0 * out[qkey] / out["params_total"] if out["params_total"] else 0.0
    return out


def size_report(base_dir: str | os.PathLike, quant_dir: str | os.PathLike) -> dict[str, float]:
    """Flat numbers for MLflow: bytes on disk, parameters by precision, quantization time and peak memory."""
    base_dir, quant_dir = Path(base_dir), Path(quant_dir)
    bw, bt = checkpoint_bytes(base_dir)
    qw, qt = checkpoint_bytes(quant_dir, exclude=PROVENANCE_FILES)
    r: dict[str, float] = {
        "base_weights_bytes": float(bw),
        "base_total_bytes": float(bt),
        "quant_weights_bytes": float(qw),
        "quant_total_bytes": float(qt),
        "size_reduction_pct": 100.0 * (1 - qw / bw) if bw else 0.0,
        "total_size_reduction_pct": 100.0 * (1 - qt / bt) if bt else 0.0,
        "compression_ratio": bw / qw if qw else 0.0,
    }
    base = param_counts(base_dir)
    for k in ("params_16bit", "params_32bit", "params_other", "params_total"):
        r[f"base_{k}"] = base[k]
    r.update(param_counts(quant_dir))
    if r.get("params_total"):
        r["weight_bits_per_param"] = 8.0 * qw / r["params_total"]
    manifest = _read_manifest(quant_dir) or {}
    for src, dst in (
        ("quant_seconds", "quant_wall_time_s"),
        ("build_seconds", "quant_build_time_s"),
        ("quant_peak_rss_mb", "quant_peak_rss_mb"),
        ("quant_peak_cuda_mb", "quant_peak_cuda_mb"),
        ("samples_used", "calib_samples_used"),
        ("samples_requested", "calib_samples_requested"),
    ):
        v = manifest.get(src)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            r[dst] = float(v)
    return r
