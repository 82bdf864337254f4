"""One AutoRound run: the Qwen3-VL language-model decoder blocks of a ColQwen3 checkpoint, tuned on the calibration
file the stage prepared and exported by auto-round into a folder of the build (quantize/build.py turns that export
into the artifact and writes its manifest).

Only `vlm.model.language_model.layers` is quantized; the vision tower, `embedding_proj_layer`, the token
embeddings and `vlm.lm_head` keep their 16-bit weights. The rows that really reach the model during calibration
are recorded and must equal the stage's selection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colq_sweep.quantize.artifacts import CALIB_FILE, PAGES_FILE
from colq_sweep.quantize.calibration import CalibrationData
from colq_sweep.quantize.errors import QuantizationError
from colq_sweep.quantize.export import QUANT_BLOCKS, find_export_dir
from colq_sweep.quantize.methods import MethodRun
from colq_sweep.quantize.methods.autoround.multimodal import (
    VISION_BLOCKS,
    PixelRecorder,
    carry_deepstack,
    vision_groups,
)
from colq_sweep.quantize.methods.autoround.spec import AutoRoundSpec
from colq_sweep.quantize.pages import PageCalibration
from colq_sweep.runtime import PeakMemory, env, gc_frozen

if TYPE_CHECKING:
    from colq_sweep.pipeline.plan import QuantJob

log = logging.getLogger(__name__)

LAYER_CONFIG = {"embedding_proj_layer": {"bits": 16}}  # the 320-d projection stays 16-bit


def autoround_kwargs(q: AutoRoundSpec, seed: int, device: str, dataset: str | list | None,
                     vision: dict[str, int | None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every AutoRound argument the config decides (plus the fixed ColQwen3 scoping). The default algorithm
    (signround) is passed as before (no `alg_configs`); others as auto-round's names, RTN's opt-RTN choice explicit.
    A knob the algorithms do not read is not passed (`dataset=None`: no calibration). `dataset` a list: page
    calibration's samples (quantize/pages.py), one forward each, `batch_size` as gradient accumulation steps.
    `vision`: each vision-block Linear's group size (None: kept 16-bit) when quant.vision=true."""
    kw: dict[str, Any] = dict(scheme=f"W{q.bits}A16", bits=q.bits, group_size=q.group_size, sym=q.sym)
    if q.algorithms != ("signround",):
        kw["alg_configs"] = [{"opt_rtn": "rtn"}.get(a, a) for a in q.algorithms]
        if q.block in ("rtn", "opt_rtn"):
            kw["disable_opt_rtn"] = q.block == "rtn"  # auto-round's `rtn` alone means optimised RTN
    if q.relevant("iters"):
        kw["iters"] = q.iters
    if isinstance(dataset, list):
        kw.update(nsamples=len(dataset), seqlen=q.seqlen, batch_size=1, gradient_accumulate_steps=q.batch_size)
    elif dataset is not None:
        kw.update(nsamples=q.nsamples, seqlen=q.seqlen, batch_size=q.batch_size)
    layer_config = {k: dict(v) for k, v in LAYER_CONFIG.items()}
    for name, group in (vision or {}).items():
        if group != q.group_size:
            layer_config[name] = {"bits": 16} if group is None else {"group_size": group}
    kw.update(
        seed=seed,
        low_gpu_mem_usage=q.low_gpu_mem_usage,
        enable_torch_compile=q.enable_torch_compile,
        # auto-round's default amp tunes in bf16 on a CPU with AVX512-BF16/AMX and in float32 on one without, so
        # the same config gave different weights on different CPUs: on a CPU it always tunes in float32.
        amp=not device.startswith("cpu"),
        # "cuda:N" as a string is parsed by auto-round as a per-layer map ("<regex>:<device>") and warns;
        # an int index is its own default form for one accelerator
        device_map=int(device.split(":")[1]) if device.startswith("cuda:") else device,
        quant_nontext_module=q.vision,
        to_quant_block_names=QUANT_BLOCKS + (f",{VISION_BLOCKS}" if q.vision else ""),
        layer_config=layer_config,
    )
    if dataset is not None:
        kw["dataset"] = dataset
    if q.relevant("lr") and q.lr is not None:
        kw["lr"] = q.lr
    if q.relevant("minmax_lr") and q.minmax_lr is not None:
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


def build(job: QuantJob, base_dir: Path, processor, calib: CalibrationData | PageCalibration | None, out: Path) -> MethodRun:
    """Quantize `base_dir` on the prepared calibration `calib` (None: the algorithms read none; a PageCalibration:
    pages); auto-round's export lands in `out`."""
    AutoRound = autoround_entry()  # import before freezing: its module objects are long-lived too
    with gc_frozen():
        return _run(AutoRound, job, base_dir, processor, calib, out)


def _run(AutoRound, job: QuantJob, base_dir: Path, processor, calib, out: Path) -> MethodRun:
    from colq_sweep.model import load_colqwen3
    from colq_sweep.quantize.export import checkpoint_dtype, decoder_linears, kept_modules

    q = job.spec
    load_dtype = checkpoint_dtype(base_dir)
    model = load_colqwen3(base_dir, dtype=load_dtype, device="cpu")
    groups = vision_groups(model, q.vision_group_size, q.vision_scheme is not None) if q.vision else {}
    fits, kept = [n for n, g in groups.items() if g is not None], [n for n, g in groups.items() if g is None]
    if q.vision and not fits:
        raise QuantizationError(f"quant.vision=true: no vision Linear layer of {job.checkpoint.name} is a multiple of "
                                f"{q.vision_group_size} wide; set quant.vision_scheme to a group that divides them")  # fmt: skip
    expected = sorted(decoder_linears(model) + fits)
    pages = isinstance(calib, PageCalibration)
    dataset = [s.inputs for s in calib.samples] if pages else (str(calib.path) if calib else None)
    kwargs = autoround_kwargs(q, job.seed, job.device, dataset, groups)
    raw_dir = out / "_autoround_out"
    recorder, pixels = RowRecorder(model.get_input_embeddings()), PixelRecorder(model)
    if kept:
        log.warning("%d vision Linear layers stay 16-bit: no allowed group divides their width (%s)", len(kept), kept[0])
    if {g for g in groups.values() if g is not None} - {q.vision_group_size}:
        log.info("vision blocks at groups %s (quant.vision_scheme=null: the text group where it divides a layer's width)",
                 sorted({g for g in groups.values() if g is not None}))  # fmt: skip
    log.info("quantizing %s (%s) on %s: %d Linear layers (%d of them in the vision tower)", job.checkpoint.name,
             job.label, job.device, len(expected), len(fits))  # fmt: skip
    carry = carry_deepstack(model) if pages else contextlib.nullcontext(0)  # text rows have no deepstack to carry
    with PeakMemory(job.device) as mem, AutoRoundLogWatch() as watch, carry as deepstack:
        t0 = time.perf_counter()
        with env(AR_DISABLE_DATASET_SUBPROCESS="1", AR_WORK_SPACE=str(out / "_ar_work")):
            ar = AutoRound(model, tokenizer=processor.tokenizer, processor=processor,
                           image_processor=processor.image_processor, **kwargs)  # fmt: skip
            try:
                result = ar.quantize_and_save(str(raw_dir), format=q.format)
            except SystemExit as exc:  # auto-round calls sys.exit() on some failures
                raise QuantizationError(f"auto-round exited (code {exc.code}) while quantizing") from exc
        quant_seconds = time.perf_counter() - t0
    recorder.remove()
    pixels.remove()
    passes = _check_calibrated_on(calib, recorder, pixels, watch)
    del model, ar
    seen = {"rows_seen_by_model": len(recorder.rows), "calibration_forward_calls": recorder.calls,
            "pixel_rows_seen_by_vision_tower": pixels.rows,
            "calibration_passes": passes, "deepstack_layers_carried": deepstack,
            "vision_layer_groups": groups}  # fmt: skip
    return MethodRun(
        export_dir=find_export_dir(raw_dir, result),
        scratch=[raw_dir, out / "_ar_work"],
        expected_layers=expected,
        kept_modules=kept_modules(q.vision, kept),
        layer_overrides={n: c for n, c in kwargs["layer_config"].items() if "group_size" in c},
        quant_seconds=quant_seconds,
        memory=mem,
        load_dtype=load_dtype,
        arguments={**kwargs, **({"dataset": PAGES_FILE if pages else CALIB_FILE} if calib else {})},
        warnings=watch.messages,
        calibration=seen,
    )


def _check_calibrated_on(calib, recorder: RowRecorder, pixels: PixelRecorder, watch: AutoRoundLogWatch) -> int | None:
    """The samples auto-round really calibrated on must be exactly our selection (none, without calibration), and
    a page calibration's pixels must have reached the vision tower in whole passes; returns how many (pages)."""
    if watch.fatal():
        raise QuantizationError(f"auto-round skipped calibration data: {watch.fatal()[:3]}")
    if calib is None:
        if recorder.rows:
            raise QuantizationError(f"auto-round ran {recorder.calls} calibration forward passes without calibration data")
        return None
    pages = isinstance(calib, PageCalibration)
    selected = calib.token_rows if pages else {tuple(ids) for ids in calib.selection.token_ids}
    if recorder.rows != selected:
        raise QuantizationError(
            f"auto-round calibrated on {len(recorder.rows)} distinct samples, {len(recorder.rows - selected)} of them "
            f"not in our selection of {len(selected)}: the recorded sample count would be wrong"
        )
    expected_pixels = calib.pixel_rows if pages else 0
    # with the vision tower quantized too auto-round runs its calibration pass once per group of blocks: whole passes
    passes = pixels.rows // expected_pixels if expected_pixels else 0
    if pixels.rows != passes * expected_pixels or (pages and not passes):
        raise QuantizationError(f"the vision tower saw {pixels.rows} pixel rows in calibration, the selection has "
                                f"{expected_pixels}: auto-round did not calibrate on the pages as selected")  # fmt: skip
    return passes if pages else None
