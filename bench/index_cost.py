"""Index transform and scoring cost at real page sizes: what `index.pool_factor` and `index.dtype` cost per 1,000
pages (evaluate/index.py), and MaxSim scoring of queries against the stored pages.

    python bench/index_cost.py --pages 1000 --tokens 1300 --dim 320 --queries 100 --device cpu --json out.json

Pages are random unit vectors with structure (each page's tokens drawn around a few hundred centres, as image
patches of one page resemble each other), so clustering does real work; accuracy is not measured here (the fixture's
sweep does that). Scoring: MaxSim of `--queries` queries of 30 tokens against every page, in page batches, on
`--device`. ViDoRe v3's largest public task has 5,043 pages: multiply the per-1,000 figures by 5.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from colq_sweep.config.specs import INDEX_DTYPES
from colq_sweep.evaluate.index import pool_tokens, store, stored_bytes


def pages(n: int, tokens: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        centres = torch.nn.functional.normalize(torch.randn(tokens // 4, dim, generator=g), dim=-1)
        pick = torch.randint(0, centres.shape[0], (tokens,), generator=g)
        x = centres[pick] + 0.3 * torch.randn(tokens, dim, generator=g) / dim**0.5
        out.append(torch.nn.functional.normalize(x, dim=-1).to(torch.bfloat16).float())
    return out


def maxsim_seconds(queries: torch.Tensor, docs: list[torch.Tensor], device: str, batch: int = 8) -> float:
    """Seconds to score every query against every page (padded page batches, as mteb's MaxSim does)."""
    q = queries.to(device)
    t0 = time.perf_counter()
    for start in range(0, len(docs), batch):
        chunk = docs[start:start + batch]
        d = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device)
        scores = torch.einsum("qtd,psd->qpts", q, d).amax(dim=-1).sum(dim=-1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        del scores
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=1300)
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--pool-pages", type=int, default=None, help="pages to pool (default: all; pooling is the slow one)")
    ap.add_argument("--factors", default="2,3")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    docs = pages(args.pages, args.tokens, args.dim)
    queries = torch.nn.functional.normalize(torch.randn(args.queries, 30, args.dim), dim=-1)
    per_k = 1000 / args.pages
    res: dict = {"settings": vars(args), "threads": torch.get_num_threads(), "transform_s_per_1000_pages": {},
                 "bytes_per_page": {}, "scoring_s_per_1000_pages": {}, "vectors_per_page": {}}  # fmt: skip
    for dtype in INDEX_DTYPES:
        t0 = time.perf_counter()
        stored = [store(d, dtype) for d in docs]
        res["transform_s_per_1000_pages"][dtype] = (time.perf_counter() - t0) * per_k
        res["bytes_per_page"][dtype] = stored_bytes(args.tokens, args.dim, dtype)
        res["scoring_s_per_1000_pages"][dtype] = maxsim_seconds(queries, stored, args.device) * per_k
    npool = args.pool_pages or args.pages
    for k in (int(f) for f in args.factors.split(",")):
        t0 = time.perf_counter()
        pooled = [pool_tokens(d, k) for d in docs[:npool]]
        res["transform_s_per_1000_pages"][f"pool{k}"] = (time.perf_counter() - t0) * 1000 / npool
        res["vectors_per_page"][f"pool{k}"] = sum(p.shape[0] for p in pooled) / npool
        res["scoring_s_per_1000_pages"][f"pool{k}"] = maxsim_seconds(queries, pooled, args.device) * 1000 / npool
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
