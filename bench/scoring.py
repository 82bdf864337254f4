"""Where and how fast MaxSim scoring runs in an evaluation: the encoder's own `similarity` (mteb's MaxSim, what
`mteb.evaluate` calls for ColQwen3Encoder) on embeddings shaped as the encoder hands them to mteb (float32 CPU tensors,
one per page and query, ragged), at the scale of the largest public ViDoRe v3 task (1,000 queries x 5,043 pages of
~1,300 vectors, 320-d) or a fraction of it.

    python bench/scoring.py --queries 1000 --pages 5043 --json out.json        # on the GPU machine
    python bench/scoring.py --queries 16 --pages 64 --device-check cpu          # the CPU check (numbers mean nothing)

It records the device mteb chose (by watching `mteb.similarity_functions._select_device`), the time, the
query-page pairs per second, and for a slice the CPU's rate, and checks the GPU's scores against the CPU's on it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def ragged(n: int, mean: int, spread: int, dim: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(mean - spread, mean + spread + 1, (n,), generator=g)
    return [torch.nn.functional.normalize(torch.randn(int(k), dim, generator=g), dim=-1) for k in lengths]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--pages", type=int, default=5043)
    ap.add_argument("--page-tokens", type=int, default=1300)
    ap.add_argument("--query-tokens", type=int, default=24)
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--cpu-pages", type=int, default=64, help="pages of the CPU slice (rate and agreement)")
    ap.add_argument("--device-check", default=None, help="cpu: run where no GPU is (the CPU check)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import mteb.similarity_functions as sf

    from colq_sweep.evaluate.encoder import ColQwen3Encoder

    chosen: list[str] = []
    select = sf._select_device

    def watch(a, b):
        d = select(a, b)
        chosen.append(str(d))
        return d

    sf._select_device = watch
    enc = ColQwen3Encoder(model_name="bench/scoring", model_revision="0", loader=lambda: None, device="cpu")
    queries = ragged(args.queries, args.query_tokens, 8, args.dim, 0)
    pages = ragged(args.pages, args.page_tokens, 60, args.dim, 1)
    r: dict = {"queries": args.queries, "pages": args.pages, "page_tokens": args.page_tokens, "dim": args.dim,
               "cuda": torch.cuda.is_available(), "torch": torch.__version__}  # fmt: skip
    if torch.cuda.is_available():
        enc.similarity(queries[:8], pages[:8])  # warm-up: CUDA context, kernels
        torch.cuda.synchronize()
    chosen.clear()
    t0 = time.perf_counter()
    scores = enc.similarity(queries, pages)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    r["seconds"] = time.perf_counter() - t0
    r["devices_chosen"] = sorted(set(chosen))
    r["pairs_per_s"] = args.queries * args.pages / r["seconds"]
    r["result_device"] = str(scores.device)
    sf._select_device = lambda a, b: torch.device("cpu")  # the CPU's rate on a slice, and its scores
    k = min(args.cpu_pages, args.pages)
    t0 = time.perf_counter()
    cpu = enc.similarity(queries, pages[:k])
    r["cpu_seconds_slice"] = time.perf_counter() - t0
    r["cpu_pairs_per_s"] = args.queries * k / r["cpu_seconds_slice"]
    r["cpu_seconds_full_est"] = args.queries * args.pages / r["cpu_pairs_per_s"]
    r["max_abs_diff_vs_cpu"] = float((scores[:, :k].cpu().float() - cpu.float()).abs().max())
    print(json.dumps(r, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=1)


if __name__ == "__main__":
    main()
