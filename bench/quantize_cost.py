"""Quantization cost: colq_sweep's quantize stage against auto-round's API called directly with the same
arguments, in the same process on the same GPU (target: ratio <= 1.02), with seconds per decoder block and peak
GPU memory.

    python bench/quantize_cost.py --checkpoint /tmp/rs/4b-l4 --seqlen 1024 --batch-size 8 --nsamples 16 \
        --iters 50 [--algorithms rtn|opt_rtn|awq,signround] [--scheme W8A16] [--compile] [--low-gpu-mem] --json out.json

Use a real-shape checkpoint with a few layers (`python -m colq_sweep.fixtures.realshape --size 4b --layers 4`). The order is
direct, ours, direct, and ours is compared with the mean of the two direct runs: the first run in a process pays for
CUDA's and the libraries' warm-up, which a single ours-then-direct pair charged to ours (1.08 measured that way on an
H200, 2026-12-02). Per-block figures are whole-run seconds / layers (data caching and export included).
The direct call is what a user of auto-round would write; our stage also keeps long-lived objects out of the garbage
collector while AutoRound runs (`runtime.gc_frozen`: auto-round collects after every layer), which is most of a tiny
model's time: on the CPU check (`--fixture --device cpu --seqlen 32 --batch-size 4 --nsamples 4 --iters 4`) ours
takes 0.18 s of AutoRound time against 3.5 s. `--ours-only` times our stage alone and records the weights' sha256, so
runs with other settings (`--compile`, `--low-gpu-mem`) show whether those settings change the quantized weights;
`--keep FILE` keeps the weights for `bench/weights_diff.py`, which says by how much when the hashes differ.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from colq_sweep.config import validate
from colq_sweep.fixtures.synthetic import calibration_texts


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def calibration(path: Path, n: int, words: int = 3000) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in calibration_texts(0, n, words)))
    return path


def point_for(args, calib: Path, outputs: Path):
    return validate({
        "model": {"name": "bench", "id": None, "revision": None, "path": args.checkpoint, "dtype": "bfloat16",
                  "max_num_visual_tokens": 1280},
        "quant": {"method": "autoround", "algorithms": args.algorithms.split(","), "scheme": args.scheme, "bits": None,
                  "group_size": None, "sym": True, "format": "auto", "lr": None, "minmax_lr": None, "low_gpu_mem_usage": args.low_gpu_mem,
                  "enable_torch_compile": args.compile, "backend": "auto", "allow_fewer_samples": False},
        "calib": {"source": "jsonl", "dataset": None, "revision": None, "split": None, "text_field": "text",
                  "path": str(calib)},
        "eval": {"tasks": ["VidoreArxivQARetrieval"]},
        "seqlen": args.seqlen, "batch_size": args.batch_size, "nsamples": args.nsamples, "iters": args.iters,
        "seed": 0, "name": "bench", "outputs_dir": str(outputs), "device": args.device, "force": True,
    })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--fixture", action="store_true", help="the tiny fixture model on --device cpu (a CPU check)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--algorithms", default="signround", help="quant.algorithms, comma-separated (rtn, opt_rtn, awq,signround)")
    ap.add_argument("--scheme", default="W4A16")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--low-gpu-mem", action="store_true", help="low_gpu_mem_usage=true (the default is false)")
    ap.add_argument("--ours-only", action="store_true", help="only our stage (settings comparisons: time, weights hash)")
    ap.add_argument("--keep", default=None, help="copy our artifact's model.safetensors here (bench/weights_diff.py)")
    ap.add_argument("--keep-dir", default=None, help="copy our whole artifact here (a quantized checkpoint to load)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.pipeline.plan import resolve
    from colq_sweep.quantize.export import checkpoint_dtype
    from colq_sweep.quantize.methods.autoround.build import autoround_entry, autoround_kwargs
    from colq_sweep.quantize.stage import quantize

    work = Path(tempfile.mkdtemp(prefix="qcost_"))
    if args.fixture:
        from colq_sweep.fixtures.offline import ensure_fixtures

        args.checkpoint = str(ensure_fixtures(work / "fixtures").checkpoint)
    elif not args.checkpoint:
        ap.error("give --checkpoint or --fixture")
    layers = json.loads((Path(args.checkpoint) / "config.json").read_text())["text_config"]["num_hidden_layers"]
    calib = calibration(work / "calib.jsonl", max(args.nsamples * 2, 32))
    point = point_for(args, calib, work / "out")
    results = {}
    model = load_colqwen3(args.checkpoint, dtype=checkpoint_dtype(args.checkpoint), device="cpu")  # as our stage does
    proc = ColQwen3Processor.from_checkpoint(args.checkpoint, 1280)
    AutoRound = autoround_entry()

    def direct(tag: str) -> dict:
        # the same AutoRound call on the same calibration rows, same process and GPU
        rows = str(calib_rows) if point.quant.needs_calibration else None  # plain RTN reads none
        kwargs = autoround_kwargs(point.quant, point.seed, "cuda:0" if args.device == "cuda" else args.device, rows)
        fresh = copy.deepcopy(model)  # AutoRound changes the model it is given; copying is not part of the cost
        reset_peak()
        t0 = time.perf_counter()
        ar = AutoRound(fresh, tokenizer=proc.tokenizer, processor=proc, image_processor=proc.image_processor,
                       **kwargs)  # fmt: skip
        ar.quantize_and_save(str(work / f"direct-{tag}"), format=point.quant.format)
        return {"autoround_s": time.perf_counter() - t0, "peak_gib": peak_gib()}

    calib_rows = calib  # before ours has run, its selection is not written yet: the full file, same seed and count
    first = None if args.ours_only else direct("a")
    # ours: the whole stage (calibration selection, AutoRound, export fix-ups, manifest)
    reset_peak()
    t0 = time.perf_counter()
    art = quantize(dataclasses.replace(resolve(point).quant, models_dir=(work / "models").resolve()))
    results["ours"] = {"stage_s": time.perf_counter() - t0, "autoround_s": art.manifest["quant_seconds"],
                       "peak_gib": peak_gib(),
                       # equal hashes across settings = the settings do not change the quantized weights
                       "weights_sha256": ",".join(v["sha256"] for k, v in sorted(art.manifest["files"].items())
                                                  if k.endswith(".safetensors")),
                       "per_block_s": art.manifest["quant_seconds"] / layers}  # fmt: skip
    results["settings"] = {"layers": layers, "algorithms": args.algorithms, "scheme": args.scheme, "seqlen": args.seqlen, "batch_size": args.batch_size,
                           "nsamples": args.nsamples, "iters": args.iters, "compile": args.compile,
                           "low_gpu_mem_usage": args.low_gpu_mem}  # fmt: skip
    if args.keep:
        Path(args.keep).parent.mkdir(parents=True, exist_ok=True)
        shards = sorted(art.path.glob("*.safetensors"))
        if len(shards) == 1:
            shutil.copyfile(shards[0], args.keep)
        else:
            print(f"--keep: {len(shards)} weight files, not kept (bench/weights_diff.py reads one)")
    if args.keep_dir:
        shutil.copytree(art.path, args.keep_dir, dirs_exist_ok=True)
    if args.ours_only:
        finish(results, args, work)
        return
    calib_rows = art.path / "calibration.jsonl" if point.quant.needs_calibration else None
    second = direct("b")
    results["direct_runs"] = [first, second]
    results["direct"] = {"autoround_s": (first["autoround_s"] + second["autoround_s"]) / 2,
                         "peak_gib": max(first["peak_gib"], second["peak_gib"])}  # fmt: skip
    results["ratio_autoround"] = results["ours"]["autoround_s"] / results["direct"]["autoround_s"]
    results["ratio_stage_vs_direct"] = results["ours"]["stage_s"] / results["direct"]["autoround_s"]
    results["per_block_s_direct"] = results["direct"]["autoround_s"] / layers
    finish(results, args, work)


def finish(results: dict, args, work: Path) -> None:
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
