"""One AutoRound run: W4A16 of the Qwen3-VL language-model decoder blocks of a ColQwen3 checkpoint, on the
calibration file the stage prepared, exported in the Tomoro layout, with the manifest that describes it.

Only `vlm.model.language_model.layers` is quantized; the vision tower, `embedding_proj_layer`, the token
embeddings and `vlm.lm_head` keep their 16-bit weights, byte-identical to the base checkpoint (auto-round upcasts
the whole model to float32 on a CPU and exports those float32 copies; the export gets the base tensors back after
checking that every one is a plain cast of the base's). The rows that really reach the model during calibration
are recorded and must equal the stage's selection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from colq_sweep.config import SweepPoint
from colq_sweep.keys import ARTIFACT_SCHEMA, key_versions, quant_knobs
from colq_sweep.quantize.artifacts import CALIB_FILE, file_table, write_manifest
from colq_sweep.quantize.calibration import CalibrationData
from colq_sweep.quantize.errors import QuantizationError
from colq_sweep.quantize.export import find_export_dir, postprocess_export
from colq_sweep.runtime import PeakMemory, dist_version, env, gc_frozen, resolve_device

log = logging.getLogger(__name__)

QUANT_BLOCKS = "vlm.model.language_model.layers"
LAYER_CONFIG = {"embedding_proj_layer": {"bits": 16}}


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


def autoround_entry():
    """auto-round's entry point, imported only when a build really happens."""
    from auto_round import AutoRound

    from colq_sweep.console import adopt_library_loggers

    adopt_library_loggers()  # auto-round installs its own stderr handler at import: its lines go to the job's log
    return AutoRound


class RowRecorder:
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


class AutoRoundLogWatch(logging.Handler):
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


def build(
    point: SweepPoint, base_dir: Path, processor, calib: CalibrationData, key: str, tmp: Path,
    started: float | None = None,
) -> dict:  # fmt: skip
    """Quantize `base_dir` into `tmp` on the prepared calibration `calib`; return the manifest written there
    (`started`: when the stage began preparing, for the manifest's build_seconds)."""
    t_build = started if started is not None else time.perf_counter()
    AutoRound = autoround_entry()  # import before freezing: its module objects are long-lived too
    with gc_frozen():
        return _build_frozen(AutoRound, point, base_dir, processor, calib, key, tmp, t_build)


def _build_frozen(
    AutoRound, point: SweepPoint, base_dir: Path, processor, calib: CalibrationData, key: str, tmp: Path,
    t_build: float,
) -> dict:  # fmt: skip
    import torch
    from torch import nn

    from colq_sweep.model import load_colqwen3

    device = resolve_device(point.device)
    load_dtype = checkpoint_dtype(base_dir)
    model = load_colqwen3(base_dir, dtype=load_dtype, device="cpu")
    expected = sorted(
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(QUANT_BLOCKS + ".")
    )
    kwargs = autoround_kwargs(point, device, str(calib.path))
    raw_dir = tmp / "_autoround_out"
    recorder = RowRecorder(model.get_input_embeddings())
    log.info("quantizing %s (%s) on %s: %d decoder Linear layers", point.model.name, point.label, device, len(expected))
    with PeakMemory(device) as mem, AutoRoundLogWatch() as watch:
        t0 = time.perf_counter()
        with env(AR_DISABLE_DATASET_SUBPROCESS="1", AR_WORK_SPACE=str(tmp / "_ar_work")):
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
    export_src = find_export_dir(raw_dir, result)
    for f in export_src.iterdir():
        shutil.move(str(f), tmp / f.name)
    subfolder = export_src.name
    shutil.rmtree(raw_dir, ignore_errors=True)
    shutil.rmtree(tmp / "_ar_work", ignore_errors=True)
    export_info = postprocess_export(tmp, base_dir, expected)
    export_info["autoround_subfolder"] = subfolder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    files = file_table(tmp)
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
            "quant_knobs": quant_knobs(point),
            "calib_identity": point.calib.identity,
            "calib_revision": calib.revision,
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
            "auto_round_lib": dist_version("auto-round-lib"),
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
    write_manifest(tmp, manifest)
    return manifest
