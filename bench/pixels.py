"""Page pixels at real ViDoRe sizes: the PIL image processor against evaluate/pixels.py's tensor ops on the CPU and
on the GPU (values and time per page), e.g.

    python bench/pixels.py --checkpoint colq_sweep/fixtures/data/tiny-colqwen3 --json out.json

Only the checkpoint's image processor is read (its preprocessor_config.json, built with the 1280-token cap), so the
fixture's folder serves for the real models' too (the same processor settings). Per size: the largest difference
in uint8 levels and the share of values that differ at all, against the PIL processor; ms per page for the PIL
processor, the tensor path on the CPU, and on the GPU from host uint8 (transfer included) with the host's half
(decode excluded: PNG/JPEG decoding is the same in every path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from encode import text_pages  # noqa: E402

from colq_sweep.evaluate import pixels as px  # noqa: E402
from colq_sweep.model import ColQwen3Processor  # noqa: E402

SIZES = ["1700x2200", "2480x3508", "2667x1500", "1024x1280", "5334x14167", "6875x24978"]


def per_page(fn, reps: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    proc = ColQwen3Processor.from_checkpoint(args.checkpoint, 1280)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for i, spec in enumerate(args.sizes.split(",")):
        w, _, h = spec.partition("x")
        (page,) = text_pages([(int(w), int(h))], seed=i)
        ref = proc.process_images([page])
        row = {"size": spec, "grid": ref["image_grid_thw"][0].tolist(),
               "pil_ms": per_page(lambda page=page: proc.process_images([page]), args.reps)}  # fmt: skip
        host = px.host_batch(proc, [page], pin=torch.cuda.is_available())
        row["host_ms"] = per_page(lambda page=page: px.host_batch(proc, [page]), args.reps)
        for dev in devices:
            try:
                got = px.finish(host, proc, dev, None)
            except RuntimeError as e:  # e.g. a CUDA kernel limit at an extreme downscale
                row[f"{dev}_error"] = str(e)[:300]
                continue
            for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
                assert torch.equal(got[k].cpu(), ref[k]), (spec, k)
            diff = (got["pixel_values"].cpu() - ref["pixel_values"]).abs()
            row[f"{dev}_max_levels"] = round(diff.max().item() * 127.5, 2)
            row[f"{dev}_frac_differing"] = (diff > 1e-6).float().mean().item()
            row[f"{dev}_ms"] = per_page(lambda dev=dev, host=host: px.finish(host, proc, dev, torch.bfloat16), args.reps)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
