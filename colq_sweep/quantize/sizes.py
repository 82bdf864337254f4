"""Size accounting: bytes on disk and parameters by precision (packed ints count as their logical weights)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from colq_sweep.quantize.artifacts import PROVENANCE_FILES, read_manifest
from colq_sweep.quantize.tensors import (
    QUANT_TENSOR_SUFFIXES,
    quant_config,
    quant_prefixes,
    read_safetensors_header,
    safetensors_files,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
VISION_PREFIX = "vlm.model.visual."


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


DTYPE_BITS = {"BF16": 16, "F16": 16, "F32": 32, "F64": 64, "F8_E4M3": 8, "F8_E5M2": 8, "I8": 8, "U8": 8}  # safetensors dtypes


def param_counts(ckpt: str | os.PathLike) -> dict[str, float]:
    """Parameters by precision from the safetensors headers; packed ints count as their logical weights."""
    ckpt = Path(ckpt)
    headers: dict[str, dict] = {}
    for f in safetensors_files(ckpt):
        headers.update(read_safetensors_header(f))
    bits = None
    with contextlib.suppress(ValueError, OSError):
        bits = int(quant_config(ckpt).get("bits", 4))
    prefixes = quant_prefixes(headers)
    out: dict[str, float] = {
        "params_16bit": 0.0,
        "params_32bit": 0.0,
        "params_other": 0.0,
        "quant_meta_bytes": 0.0,
    }
    qkey = f"params_int{bits}" if bits else None
    if qkey:
        out[qkey] = 0.0
    out.update(vision_tensor_bytes=0.0, text_tensor_bytes=0.0, vision_params_quantized=0.0, vision_params=0.0)
    for name, meta in headers.items():
        n = 1
        for s in meta["shape"]:
            n *= s
        nbytes = meta["data_offsets"][1] - meta["data_offsets"][0]
        head, _, leaf = name.rpartition(".")
        vision = name.startswith(VISION_PREFIX)  # the vision tower's part (the rest: decoder, embeddings, heads)
        out["vision_tensor_bytes" if vision else "text_tensor_bytes"] += nbytes
        quantized = head in prefixes and leaf in QUANT_TENSOR_SUFFIXES
        if vision and (not quantized or leaf == "qweight"):
            out["vision_params"] += n * 32 / bits if quantized else n
            out["vision_params_quantized"] += n * 32 / bits if quantized else 0
        if quantized:
            if leaf == "qweight":
                out[qkey] += n * 32 / bits
            else:
                out["quant_meta_bytes"] += nbytes
            continue
        width = DTYPE_BITS.get(meta["dtype"])
        if width == 16:
            out["params_16bit"] += n
        elif width == 32:
            out["params_32bit"] += n
        else:
            out["params_other"] += n
    out["params_total"] = sum(v for k, v in out.items() if k.startswith("params_"))
    vp = out.pop("vision_params")
    out["vision_params_quantized_pct"] = 100.0 * out.pop("vision_params_quantized") / vp if vp else 0.0
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
    for k in ("params_16bit", "params_32bit", "params_other", "params_total", "vision_tensor_bytes", "text_tensor_bytes"):
        r[f"base_{k}"] = base[k]
    r.update(param_counts(quant_dir))
    if r.get("params_total"):
        r["weight_bits_per_param"] = 8.0 * qw / r["params_total"]
    manifest = read_manifest(quant_dir) or {}
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
