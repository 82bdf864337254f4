"""What a quantized checkpoint holds, read from its files without loading it: safetensors headers, which layers
are packed, and the packing scheme its `quantization_config` names."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

QUANT_TENSOR_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def safetensors_files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.iterdir() if p.suffix == ".safetensors")


def quant_prefixes(names) -> set[str]:
    return {n[: -len(".qweight")] for n in names if n.endswith(".qweight")}


def is_quant_tensor(name: str, prefixes: set[str]) -> bool:
    head, _, leaf = name.rpartition(".")
    return head in prefixes


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets} from a .safetensors header (no tensor data read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


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
