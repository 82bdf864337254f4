"""`PointResults`: everything the report knows about one sweep point, independent of where it came from.

The MLflow loader (`load.py`) builds these from runs; tests build them synthetically. All the numbers of the
report are computed from `entries` (one row per (task, subset) entry, mteb's per-entry scores) and
`per_query` (one row per query, the paired unit of the bootstrap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from colq_sweep import contract as R
from colq_sweep.contract import (  # the columns the sweep writes
    ENTRY_COLUMNS,
    FINISHED,
    NUMERIC_ENTRY,
    NUMERIC_PER_QUERY,
    PER_QUERY_COLUMNS,
    ROLE_BASELINE,
    ROLE_QUANTIZED,
)

ROLES = (ROLE_BASELINE, ROLE_QUANTIZED)


def empty_entries() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ENTRY_COLUMNS})


def empty_per_query() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in PER_QUERY_COLUMNS})


@dataclass
class PointResults:
    """One sweep point (a configuration of a model, or its original = baseline).

    params: the run's flattened config as strings (`seqlen`, `batch_size`, `quant.bits`, ...); the report
    detects the factors of a sweep as the params that vary among a model's quantized points.
    metrics: tracked numbers under the contract's names (`size/total_bytes`, `quant/seconds`, `eval/pages_per_s`,
    ...; older names are renamed on construction: contract.RENAMED).
    status: MLflow run status; only FINISHED points give numbers, FAILED ones are listed as failed.
    """

    model: str
    label: str
    role: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    entries: pd.DataFrame = field(default_factory=empty_entries)
    per_query: pd.DataFrame = field(default_factory=empty_per_query)
    run_id: str = ""
    status: str = FINISHED
    config_hash: str = ""
    eval_hash: str = ""
    start_time: int | None = None  # ms since the epoch (MLflow's start_time)
    error: str = ""  # why a run failed (tag colq.error), shown in the failed-runs section
    kernel: str = ""  # the load-back kernels a quantized point was evaluated with (tag colq.kernel_backend)
    device: str = ""  # the device kind it was evaluated on (tag colq.device_name: "cpu", "NVIDIA H200", ...)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = R.tracked(self.metrics)  # a store written before the contract's names reads as a new one

    @property
    def is_baseline(self) -> bool:
        return self.role == "baseline"

    @property
    def finished(self) -> bool:
        return str(self.status).upper() == FINISHED

    def metric(self, key: str) -> float | None:
        """A tracked metric as a finite float, else None (missing metrics are shown as n/a)."""
        v = self.metrics.get(key)
        try:
            v = float(v)
        except (TypeError, ValueError):
            return None
        return v if math.isfinite(v) else None


def clean_entries(df: pd.DataFrame | None) -> pd.DataFrame:
    """Typed copy with every contract column; rows without a finite ndcg_at_5 are dropped; one row per entry."""
    if df is None or len(df) == 0:
        return empty_entries()
    out = df.copy()
    for c in ENTRY_COLUMNS:
        if c not in out.columns:
            out[c] = None
    for c in NUMERIC_ENTRY:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    for c in ("task", "subset"):
        out[c] = out[c].astype(str)
    out["language"] = out["language"].fillna("?").astype(str)
    out["benchmark"] = out["benchmark"].fillna("?").astype(str)
    out["main_metric"] = out["main_metric"].fillna("").astype(str)
    out = out[np.isfinite(out["ndcg_at_5"].to_numpy(dtype=float))]
    out = out.drop_duplicates(subset=["task", "subset"], keep="last")
    return out.reset_index(drop=True)


def clean_per_query(df: pd.DataFrame | None) -> pd.DataFrame:
    """Typed copy; rows without a finite ndcg_at_5 are dropped; one row per (task, subset, query_id)."""
    if df is None or len(df) == 0:
        return empty_per_query()
    out = df.copy()
    for c in PER_QUERY_COLUMNS:
        if c not in out.columns:
            out[c] = None
    for c in NUMERIC_PER_QUERY:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    for c in ("task", "subset", "query_id"):
        out[c] = out[c].astype(str)
    out = out[np.isfinite(out["ndcg_at_5"].to_numpy(dtype=float))]
    out = out.drop_duplicates(subset=["task", "subset", "query_id"], keep="last")
    return out.reset_index(drop=True)


def is_english(language: Any) -> bool:
    s = str(language).strip().lower()
    return s in ("en", "eng", "english") or s.startswith(("en-", "en_", "eng-", "eng_"))
