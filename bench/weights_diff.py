"""How far apart two W4A16 exports are: per kind of tensor, the share of equal int4 codes (qweight, qzeros) and the
largest relative difference of the scales, and the largest difference of the dequantized weights in units of their
own scale (1.0 = one quantization step).

    python bench/weights_diff.py a/model.safetensors b/model.safetensors [--json out.json]

`bench/quantize_cost.py --keep` writes such files; equal sha256 already means equal weights, this says how unequal
they are otherwise (a run repeated with the same settings on a GPU shows the floor set by nondeterministic kernels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from colq_sweep.quantize.dequant import dequantize_linear, unpack_awq

PACKED = ("qweight", "qzeros", "scales")


def compare(a: dict, b: dict) -> dict:
    if a.keys() != b.keys():
        raise SystemExit(f"the files hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    codes = same = 0
    scale_rel = step_diff = other = 0.0
    for name in sorted(a):
        x, y = a[name], b[name]
        if name.endswith((".qweight", ".qzeros")):
            ux, uy = unpack_awq(x), unpack_awq(y)
            codes += ux.numel()
            same += int((ux == uy).sum())
        elif name.endswith(".scales"):
            scale_rel = max(scale_rel, float(((x.float() - y.float()).abs() / y.float().abs().clamp_min(1e-12)).max()))
            prefix = name[: -len("scales")]
            la, lb = ({k: t[prefix + k] for k in PACKED} for t in (a, b))
            group = la["qweight"].shape[0] // x.shape[0]  # input features per scale row
            wa, wb = (dequantize_linear(layer, "awq", 4, group) for layer in (la, lb))  # (out, in)
            step = x.float().abs().clamp_min(1e-12).repeat_interleave(group, 0).t()  # a's step of each weight
            step_diff = max(step_diff, float(((wa - wb).abs() / step).max()))
        else:
            other = max(other, float((x.float() - y.float()).abs().max()))
    return {"int4_codes": codes, "equal_code_share": same / codes if codes else 1.0,
            "scales_max_rel_diff": scale_rel, "dequantized_max_diff_in_steps": step_diff,
            "other_tensors_max_abs_diff": other}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    r = {"a": args.a, "b": args.b, **compare(load_file(args.a), load_file(args.b))}
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
