"""Multi-GPU dispatch: a sweep of 2 x k real points on k GPUs through `hydra/launcher=gpu-pool`, against the ideal.

    python bench/dispatch.py --gpus 4 --size 4b --iters 20          # random-weight 4B shape, eval=fixture
    python bench/dispatch.py --gpus 2 --fixture                      # CPU check of the arithmetic on the fixture

Runs quantize -> evaluate -> MLflow for 2k points (seeds 1..2k: distinct artifacts of one model, sharing one
baseline), then reads the runs back and prints per job: GPU (UUID, else CUDA_VISIBLE_DEVICES), start, end, stage
times; the makespan; the ideal (sum of job times / k, bounded below by the longest job) and their ratio (target
<= 1.1); how many quantizations and baseline evaluations ran (target: one per artifact key, one per model); and
whether two jobs ever overlapped on one GPU. Writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from colq_sweep import contract as R

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--size", choices=["4b", "8b"], default="4b")
    ap.add_argument("--fixture", action="store_true", help="the tiny fixture on CPU slots (checks the bookkeeping)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--outputs", default="outputs/dispatch")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.outputs).resolve()
    k = args.gpus
    seeds = ",".join(str(i) for i in range(1, 2 * k + 1))
    common = ["-m", "hydra/launcher=gpu-pool", f"hydra.launcher.devices=[{','.join(map(str, range(k)))}]",
              "eval=fixture", "calib=fixture", f"outputs_dir={out}", "name=dispatch", f"seed={seeds}",
              f"iters={args.iters}", "nsamples=16", "batch_size=8", "seqlen=256"]  # fmt: skip
    if args.fixture:
        common += ["model=tiny", "device=cpu", "seqlen=32", "nsamples=4", "batch_size=2"]
    else:
        ckpt = out / "realshape" / args.size
        if not (ckpt / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "colq_sweep.fixtures.realshape", "--size", args.size, "--out", str(ckpt)], check=True)
        common += [f"model=colqwen3-{args.size}", "model.id=null", "model.revision=null", f"model.path={ckpt}", "device=cuda"]
    subprocess.run([sys.executable, "-m", "colq_sweep.fixtures", "--out", str(out / "fixtures")], check=True, cwd=ROOT)
    proc = subprocess.run([sys.executable, "-m", "colq_sweep", *common], cwd=ROOT)
    report(out, k, args.json)
    return proc.returncode


def report(out: Path, k: int, json_path: str | None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("dispatch")
    parents = client.search_runs([exp.experiment_id], "tags.`colq.role` = 'sweep'", order_by=["attributes.start_time DESC"])
    parent = parents[0]
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    jobs = []
    for r in runs:
        t = r.data.tags
        jobs.append({
            "role": t.get("colq.role"), "label": t.get("colq.label"), "status": r.info.status,
            "gpu": t.get("colq.gpu_uuid") or t.get("colq.cuda_visible_devices") or "?",
            "start": r.info.start_time / 1000, "end": (r.info.end_time or r.info.start_time) / 1000,
            "quant_s": R.tracked(r.data.metrics).get(R.QUANT_STAGE_SECONDS), "eval_s": R.tracked(r.data.metrics).get(R.EVAL_SECONDS),
            "artifact": t.get("colq.artifact_key"), "reused": t.get("colq.artifact_reused"),
        })  # fmt: skip
    points = [j for j in jobs if j["role"] == "quantized"]
    t0 = min(j["start"] for j in jobs)
    makespan = max(j["end"] for j in jobs) - t0
    durations = [j["end"] - j["start"] for j in points]
    ideal = max(sum(durations) / k, max(durations))
    overlaps = [(a["label"], b["label"]) for a in points for b in points
                if a is not b and a["gpu"] == b["gpu"] and a["start"] < b["end"] and b["start"] < a["end"]]  # fmt: skip
    quantized = sum(j["reused"] == "false" for j in points)
    baselines = sum(j["role"] == "baseline" for j in jobs)
    print(f"{'job':<48} {'gpu':<42} {'start':>7} {'end':>7} {'quant s':>8} {'eval s':>8}")
    for j in sorted(jobs, key=lambda j: j["start"]):
        print(f"{(j['role'] + ' ' + (j['label'] or ''))[:48]:<48} {j['gpu'][:42]:<42} {j['start'] - t0:7.1f} "
              f"{j['end'] - t0:7.1f} {j['quant_s'] or 0:8.1f} {j['eval_s'] or 0:8.1f}")  # fmt: skip
    result = {"k": k, "points": len(points), "makespan_s": makespan, "ideal_s": ideal, "ratio": makespan / ideal,
              "quantizations": quantized, "distinct_artifacts": len({j["artifact"] for j in points}),
              "baseline_evaluations": baselines, "overlaps_on_one_gpu": overlaps,
              "all_finished": all(j["status"] == "FINISHED" for j in jobs)}  # fmt: skip
    print(json.dumps(result, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps({"summary": result, "jobs": jobs}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
