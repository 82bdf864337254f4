"""Our own dequantization: packed int32 (AWQ GEMM, GPTQ, auto_round) -> float weights, and a model loaded
with them as plain Linear layers (`backend=dequant`: accuracy studies on any device, no speed or memory gain).
The int4 x scale rebuild is checked against a by-hand unpacking and against auto-round's kernels in the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from colq_sweep.quantize.tensors import (
    QUANT_TENSOR_SUFFIXES,
    packing_of,
    quant_config,
    quant_prefixes,
    safetensors_files,
)

AWQ_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # logical column j of a group of 8 sits in nibble AWQ_ORDER[j]


def unpack_int32(packed, bits: int, dim: int):
    """Split each int32 into 32/bits unsigned values, lowest bits first, along `dim`; widths that do not divide 32
    (3 bits: GPTQ packs 32 values into 3 words) as one little-endian bit stream along `dim`."""
    import torch

    if bits not in (2, 3, 4, 8):
        raise NotImplementedError(f"dequantizing {bits}-bit weights is not supported (2, 3, 4 or 8 bits only)")
    if 32 % bits:
        return unpack_bitstream(packed, bits, dim)
    per = 32 // bits
    p = packed.to(torch.int32).movedim(dim, -1)
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=p.device)
    vals = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    vals = vals.reshape(*p.shape[:-1], p.shape[-1] * per)
    return vals.movedim(-1, dim)


def unpack_bitstream(packed, bits: int, dim: int):
    """Values of `bits` bits laid end to end over the int32 words along `dim`, word 0's lowest bit first: value i
    occupies stream bits [i*bits, (i+1)*bits), possibly across two words."""
    import torch

    p = packed.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    n = p.shape[-1] * 32 // bits
    start = torch.arange(n, device=p.device) * bits
    word, shift = start // 32, start % 32
    low = p[..., word] >> shift
    spill = (shift + bits) > 32
    high = torch.zeros_like(low)
    nxt = torch.clamp(word + 1, max=p.shape[-1] - 1)
    high[..., spill] = p[..., nxt[spill]] << (32 - shift[spill])
    vals = (low | high) & ((1 << bits) - 1)
    return vals.to(torch.int32).movedim(-1, dim)


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
    for f in safetensors_files(path):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if only is None or k.rsplit(".", 1)[0] == only:
                    sd[k] = st.get_tensor(k)
    prefixes = quant_prefixes(sd)
    for p in sorted(prefixes):
        parts = {leaf: sd.pop(f"{p}.{leaf}", None) for leaf in QUANT_TENSOR_SUFFIXES}
        gs = int((qc.get("extra_config") or {}).get(p, {}).get("group_size", group_size))  # a layer's own group
        sd[f"{p}.weight"] = dequantize_linear(parts, packing, bits, gs, out_dtype=dtype)
    return sd


def load_dequantized(path: Path, device: str, dtype: str):
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
