"""What the report's analysis of one model holds (analysis.py computes it; sections, cells, frames and plots read it):
each configuration's numbers, the entries left out and why, the design's effects, seed replicates, the best."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from colq_sweep.report import stats
from colq_sweep.report.points import PointResults

EntryKey = tuple[str, str]


@dataclass
class ConfigStats:
    point: PointResults = field(repr=False)
    key: str  # unique display label within the model
    short: str  # short label (the varying factors) for plots and wide tables
    scores: np.ndarray  # NDCG@5 per common entry (entries.csv)
    ndcg10: np.ndarray  # NDCG@10 per common entry (NaN where absent)
    avg_all: float = math.nan
    avg_en: float = math.nan
    delta_entry: np.ndarray | None = None
    delta_all: float = math.nan
    delta_en: float = math.nan
    rel_all: float = math.nan
    rel_en: float = math.nan
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    boot: bool = False  # part of the bootstrap (has per-query scores, and so has the original)
    entry_ci: np.ndarray | None = None  # (E, 2)
    entry_sig: list[str] = field(default_factory=list)
    pq_max_abs_diff: float | None = None  # per-query means vs entries.csv on the common entries
    se_avg_all: float | None = None  # bootstrap standard error of the average (query sampling)
    base_bytes: float | None = None
    quant_bytes: float | None = None
    reduction_pct: float | None = None

    @property
    def is_baseline(self) -> bool:
        return self.point.is_baseline

    def count_direction(self) -> tuple[int, int, int]:
        """Entries whose point estimate is higher / lower / equal vs the original."""
        d = self.delta_entry
        if d is None:
            return (0, 0, 0)
        return int((d > 0).sum()), int((d < 0).sum()), int((d == 0).sum())

    def count_significance(self) -> tuple[int, int, int] | None:
        """Entries improved significantly / degraded significantly / not significant (None: no bootstrap)."""
        if not self.boot or self.is_baseline:
            return None
        return (self.entry_sig.count("improved"), self.entry_sig.count("degraded"),
                self.entry_sig.count("not significant"))


@dataclass
class MissingEntry:
    task: str
    subset: str
    benchmark: str
    language: str
    missing_in: list[str]
    reason: str


@dataclass
class EffectRow:
    level: str
    n_configs: int
    mean: float
    lo: float | None
    hi: float | None
    contrast: float | None
    c_lo: float | None
    c_hi: float | None


@dataclass
class FactorEffect:
    factor: stats.Factor
    ref: str
    rows: list[EffectRow]


@dataclass
class SeedGroup:
    fixed: str  # the shared settings
    members: list[ConfigStats]
    seeds: list[str]
    mean: float
    std: float
    vmin: float
    vmax: float
    boot_se: float | None  # typical bootstrap SE (query sampling) of one member's average

    @property
    def spread(self) -> float:
        return self.vmax - self.vmin


@dataclass
class ModelAnalysis:
    model: str
    n_boot: int
    seed: int
    baseline: ConfigStats | None
    configs: list[ConfigStats]
    entries: pd.DataFrame  # common entries in report order: task, subset, benchmark, language, english, n_queries
    missing: list[MissingEntry]
    notes: list[str] = field(default_factory=list)
    design: stats.Design | None = None
    effects: list[FactorEffect] = field(default_factory=list)
    seed_groups: list[SeedGroup] = field(default_factory=list)
    best: ConfigStats | None = None
    indistinguishable: list[tuple[ConfigStats, float, float, float]] = field(default_factory=list)
    distinguishable: list[tuple[ConfigStats, float, float, float]] = field(default_factory=list)
    smaller_alternative: ConfigStats | None = None
    boot_ok: bool = False
    boot_avg: np.ndarray | None = None  # (B, C) replicate averages over all common entries
    boot_cols: dict[str, int] = field(default_factory=dict)  # config key -> column of boot_avg

    @property
    def all_configs(self) -> list[ConfigStats]:
        return ([self.baseline] if self.baseline else []) + self.configs

    @property
    def n_entries(self) -> int:
        return len(self.entries)

    @property
    def n_entries_en(self) -> int:
        return int(self.entries["english"].sum()) if len(self.entries) else 0

    @property
    def n_queries(self) -> int | None:
        q = self.entries["n_queries"] if len(self.entries) else pd.Series(dtype=float)
        return int(q.sum()) if len(q) and q.notna().all() else None

    @property
    def entry_keys(self) -> list[EntryKey]:
        return list(zip(self.entries["task"], self.entries["subset"], strict=True))
