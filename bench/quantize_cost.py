"""Quantization cost: colq_sweep's quantize stage against auto-round's API called directly with the same
arguments, in the same process on the same GPU (target: ratio <= 1.02), with seconds per decoder block and peak
GPU memory.

    python bench/quantize_cost.py --checkpoint /tmp/rs/4b-l4 --seqlen 1024 --batch-size 8 --nsamples 16 \
        --iters 50 [--compile] [--no-low-gpu-mem] --json out.json

Use a real-shape checkpoint with a few layers (`python -m colq_sweep.realshape --size 4b --layers 4`). The order is
direct, ours, direct, and ours is compared with the mean of the two direct runs: the first run in a process pays for
CUDA's and the libraries' warm-up, which a single ours-then-direct pair charged to ours (1.08 measured that way on an
H200, 2026-12-02). Per-block figures are whole-run seconds / layers (data caching and export included).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from colq_sweep.config import validate
from colq_sweep.synthetic import calibration_texts


def calibration(path: Path, n: int, words: int = 3000) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in calibration_texts(0, n, words)))
    return path


def point_for(args, calib: Path, outputs: Path):
    return validate({
        "model": {"name": "bench", "id": None, "revision": None, "path": args.checkpoint, "dtype": "bfloat16",
                  "max_num_visual_tokens": 1280},
        "quant": {"method": "autoround", "scheme": "W4A16", "bits": 4, "group_size": 128, "sym": True,
                  "format": "auto_awq", "lr": None, "minmax_lr": None, "low_gpu_mem_usage": not args.no_low_gpu_mem,
                  "enable_torch_compile": args.compile, "backend": "auto", "allow_fewer_samples": False},
        "calib": {"source": "jsonl", "dataset": None, "revision": None, "split": None, "text_field": "text",
                  "path": str(calib)},
        "eval": {"tasks": ["VidoreArxivQARetrieval"]},
        "seqlen": args.seqlen, "batch_size": args.batch_size, "nsamples": args.nsamples, "iters": args.iters,
        "seed": 0, "name": "bench", "outputs_dir": str(outputs), "device": "cuda", "force": True,
    })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-low-gpu-mem", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.quantize.build import autoround_entry, autoround_kwargs
    from colq_sweep.quantize.stage import quantize_point

    work = Path(tempfile.mkdtemp(prefix="qcost_"))
    layers = json.loads((Path(args.checkpoint) / "config.json").read_text())["text_config"]["num_hidden_layers"]
    calib = calibration(work / "calib.jsonl", max(args.nsamples * 2, 32))
    point = point_for(args, calib, work / "out")
    results = {}
    model = load_colqwen3(args.checkpoint, dtype="bfloat16", device="cpu")
    proc = ColQwen3Processor.from_checkpoint(args.checkpoint, 1280)
    AutoRound = autoround_entry()

    def direct(tag: str) -> dict:
        # the same AutoRound call on the same calibration rows, same process and GPU
        kwargs = autoround_kwargs(point, "cuda:0", str(calib_rows))
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        ar = AutoRound(copy.deepcopy(model), tokenizer=proc.tokenizer, processor=proc, image_processor=proc.image_processor,
                       **kwargs)  # fmt: skip
        ar.quantize_and_save(str(work / f"direct-{tag}"), format="auto_awq")
        return {"autoround_s": time.perf_counter() - t0, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}

    calib_rows = calib  # before ours has run, its selection is not written yet: the full file, same seed and count
    first = direct("a")
    # ours: the whole stage (calibration selection, AutoRound, export fix-ups, manifest)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    art = quantize_point(point, work / "models")
    results["ours"] = {"stage_s": time.perf_counter() - t0, "autoround_s": art.manifest["quant_seconds"],
                       "peak_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip
    calib_rows = art.path / "calibration.jsonl"
    second = direct("b")
    results["direct_runs"] = [first, second]
    results["direct"] = {"autoround_s": (first["autoround_s"] + second["autoround_s"]) / 2,
                         "peak_gib": max(first["peak_gib"], second["peak_gib"])}  # fmt: skip
    results["ratio_autoround"] = results["ours"]["autoround_s"] / results["direct"]["autoround_s"]
    results["ratio_stage_vs_direct"] = results["ours"]["stage_s"] / results["direct"]["autoround_s"]
    results["per_block_s_direct"] = results["direct"]["autoround_s"] / layers
    results["settings"] = {"layers": layers, "seqlen": args.seqlen, "batch_size": args.batch_size,
                           "nsamples": args.nsamples, "iters": args.iters, "compile": args.compile,
                           "low_gpu_mem_usage": not args.no_low_gpu_mem}  # fmt: skip
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
