"""What the index stores of each page (`index.pool_factor`, `index.dtype`): transforms of page embeddings applied
after the page cache, so an index setting costs scoring time and no encoding.

- **Token pooling** (`pool_factor=k`, 1 = off): a page's token vectors (every real token of its input: the chat
  prompt's text and special tokens and the image tokens alike) are clustered by Ward's hierarchical clustering
  (scipy) on the unit vectors (Euclidean distance between unit vectors is a monotone function of their cosine)
  into ceil(n / k) clusters; each cluster is stored as the mean of its vectors, scaled back to unit length (the
  model's own vectors are unit length). Queries are never pooled. Pooled pages are cached on disk by
  (page cache key, pool factor): clustering costs ~0.15 s per real-size page on one CPU core.
- **Storage dtype** (`dtype`): `bf16` (what the page cache holds: the model's output, today's numbers exactly),
  `fp16`, `int8` (symmetric, one scale per vector: absmax / 127, the scale stored as fp16), `binary` (one sign bit
  per dimension: +1 for >= 0, -1 otherwise; scored asymmetrically against float queries).

Scoring stays mteb's MaxSim on what the index would hold: the dequantized int8 values, +-1 for binary.
`stored_bytes` counts what a store of that dtype needs per page (int8 includes its scales; binary packs 8
dimensions per byte).
"""

from __future__ import annotations

import hashlib
import math
import time

import torch

from colq_sweep.config.specs import INDEX_DTYPES, IndexSpec

INT8_MAX = 127


def pool_tokens(emb: torch.Tensor, factor: int) -> torch.Tensor:
    """(n, d) unit vectors -> (ceil(n / factor), d): Ward clusters of the vectors, each the unit-length mean of its
    members, in the order of their first member. Deterministic (scipy's linkage breaks ties by index)."""
    n = emb.shape[0]
    target = math.ceil(n / factor)
    if factor <= 1 or n <= 1 or target >= n:
        return emb
    import numpy as np
    from scipy.cluster.hierarchy import fcluster, linkage

    x = emb.float()
    z = linkage(x.double().numpy(), method="ward", metric="euclidean")
    labels = fcluster(z, t=target, criterion="maxclust")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # clusters numbered in the order their first token appears
    idx = torch.from_numpy(rank[inverse].astype(np.int64))
    sums = torch.zeros(len(first), x.shape[1]).index_add_(0, idx, x)
    return torch.nn.functional.normalize(sums, dim=-1).to(emb.dtype)


def quantize_int8(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, fp16 scale per vector): symmetric, scale = absmax / 127 (a zero vector gets scale 1)."""
    x = emb.float()
    scale = (x.abs().amax(dim=-1, keepdim=True) / INT8_MAX).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(x / scale.float()), -INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def store(emb: torch.Tensor, dtype: str) -> torch.Tensor:
    """What a `dtype` index holds of one page, as the float32 values MaxSim scores."""
    if dtype == "bf16":
        return emb.to(torch.bfloat16).float()
    if dtype == "fp16":
        return emb.to(torch.float16).float()
    if dtype == "int8":
        codes, scale = quantize_int8(emb)
        return codes.float() * scale.float()
    if dtype == "binary":
        return torch.where(emb.float() >= 0, 1.0, -1.0)
    raise ValueError(f"unknown index dtype {dtype!r}; allowed: {', '.join(INDEX_DTYPES)}")


def stored_bytes(n_vectors: int, dim: int, dtype: str) -> int:
    """Bytes a `dtype` store needs for n vectors of `dim` dimensions (no ids, no graph: the vectors themselves)."""
    per = {"bf16": 2 * dim, "fp16": 2 * dim, "int8": dim + 2, "binary": math.ceil(dim / 8)}[dtype]
    return n_vectors * per


def pooled_key(page_key: str, factor: int) -> str:
    """Cache key of a pooled page: its page-cache key and the pool factor (the clustering is part of the format)."""
    return hashlib.sha256(f"colq_sweep-pooled-v1\x1f{page_key}\x1fward\x1f{factor}".encode()).hexdigest()


class IndexTransform:
    """Applies an IndexSpec to the pages an encoder returns and counts what the index holds (each distinct page once
    per task: a corpus shared by several subsets is one index)."""

    def __init__(self, spec: IndexSpec, pooled_store=None):
        self.spec = spec
        self.pooled_store = pooled_store  # a PageStore for pooled pages (None: pool every time)
        self.tasks: dict[str, dict[str, float]] = {}  # task -> pages, vectors, bytes, seconds of its index
        self._counted: set[tuple[str, str]] = set()
        self._memo: dict[str, torch.Tensor] = {}  # the current task's stored pages (subsets share one corpus)
        self._memo_task: str | None = None

    def apply(self, embs: list[torch.Tensor], keys: list[str] | None, task: str) -> list[torch.Tensor]:
        """The stored form of each page (`keys`: their page-cache keys, None when pages are not cached). The
        default setting returns the pages as they are."""
        t0 = time.perf_counter()
        if self._memo_task != task:
            self._memo, self._memo_task = {}, task
        out = []
        for i, emb in enumerate(embs):
            key = keys[i] if keys is not None else None
            if self.spec.is_default:
                pooled = stored = emb
            elif key is not None and key in self._memo:
                stored = self._memo[key]
                pooled = stored
            else:
                pooled = self._pooled(emb, key)
                stored = store(pooled, self.spec.dtype)
                if key is not None:
                    self._memo[key] = stored
            out.append(stored)
            t = self.tasks.setdefault(task, dict.fromkeys(("pages", "vectors", "bytes", "seconds"), 0.0))
            if key is None or (task, key) not in self._counted:
                if key is not None:
                    self._counted.add((task, key))
                t["pages"] += 1
                t["vectors"] += pooled.shape[0]
                t["bytes"] += stored_bytes(pooled.shape[0], pooled.shape[1], self.spec.dtype)
        self.tasks[task]["seconds"] += time.perf_counter() - t0
        return out

    def adopt(self, task: str, stats: dict[str, float]) -> None:
        """A task served from the result cache: its index as recorded when it was evaluated (`<Task>.index.json`)."""
        self.tasks[task] = {k: float(stats[k]) for k in ("pages", "vectors", "bytes", "seconds")}

    def _pooled(self, emb: torch.Tensor, key: str | None) -> torch.Tensor:
        k = self.spec.pool_factor
        if k <= 1:
            return emb
        if key is None or self.pooled_store is None:
            return pool_tokens(emb, k)
        pkey = pooled_key(key, k)
        got = self.pooled_store.get(pkey)
        if got is None:
            got = pool_tokens(emb, k)
            self.pooled_store.put(pkey, got)
        return got

    def metrics(self) -> dict[str, float]:
        """Over every task of the evaluation: pages, mean vectors and bytes per page, total bytes, transform time."""
        pages = sum(t["pages"] for t in self.tasks.values())
        if not pages:
            return {}
        total = sum(t["bytes"] for t in self.tasks.values())
        return {
            "index_pages": float(pages),
            "index_vectors_per_page": sum(t["vectors"] for t in self.tasks.values()) / pages,
            "index_bytes_per_page": total / pages,
            "index_total_bytes": float(total),
            "index_transform_seconds": sum(t["seconds"] for t in self.tasks.values()),
        }
