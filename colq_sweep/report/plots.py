"""PNG plots (matplotlib, Agg, no pyplot global state): per model the per-entry NDCG@5 of every configuration
and the per-entry change vs the original; across models the averages with 95% bootstrap intervals."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from colq_sweep.report.numbers import ModelAnalysis  # noqa: E402

DPI = 100
MAX_WIDTH_IN = 40.0


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "model"


def entry_label(task: str, subset: str) -> str:
    t = re.sub(r"Retrieval$", "", task)
    return t if subset in ("default", "") else f"{t} ({subset})"


def _colors(n: int) -> list:
    """Distinct colours for quantized configurations; grey is kept for the original."""
    tab10 = matplotlib.colormaps["tab10"]
    base = [tab10(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    if n > len(base):
        tab20 = matplotlib.colormaps["tab20"]
        base += [tab20(i) for i in range(20) if i not in (14, 15)]
    return [base[i % len(base)] for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _grouped(ax, series: list[np.ndarray], names: list[str], colors: list, errs: list | None = None) -> None:
    n_e = len(series[0]) if series else 0
    k = max(len(series), 1)
    width = 0.8 / k
    x = np.arange(n_e)
    for i, (y, name) in enumerate(zip(series, names, strict=True)):
        yerr = None
        if errs is not None and errs[i] is not None:
            lo, hi = errs[i][:, 0], errs[i][:, 1]
            yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
        ax.bar(x - 0.4 + width * (i + 0.5), y, width, label=name, color=colors[i], yerr=yerr,
               error_kw={"elinewidth": 0.6, "capsize": 1.5, "ecolor": "black"})
    ax.set_xlim(-0.6, n_e - 0.4)


def comparison_plot(ma: ModelAnalysis, path: Path) -> Path:
    """Per-entry NDCG@5 of every configuration (grouped bars per entry)."""
    confs = ma.all_configs
    n_e = ma.n_entries
    fig = Figure(figsize=(min(MAX_WIDTH_IN, max(8.0, 0.16 * n_e * (len(confs) + 1))), 6.0))
    ax = fig.add_subplot()
    colors = ["0.55"] + _colors(len(confs)) if ma.baseline else _colors(len(confs))
    _grouped(ax, [c.scores for c in confs], [c.short for c in confs], colors[: len(confs)])
    labels = [entry_label(t, s) for t, s in ma.entry_keys]
    ax.set_xticks(np.arange(n_e), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("NDCG@5")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{ma.model}: NDCG@5 per entry ({n_e} common entries)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def diff_plot(ma: ModelAnalysis, path: Path) -> Path:
    """Per-entry change of NDCG@5 vs the original, with the per-entry 95% bootstrap interval."""
    confs = ma.configs
    n_e = ma.n_entries
    fig = Figure(figsize=(min(MAX_WIDTH_IN, max(8.0, 0.16 * n_e * (len(confs) + 1))), 6.0))
    ax = fig.add_subplot()
    if ma.baseline is None or not confs:
        ax.text(0.5, 0.5, "no original (baseline) run: no changes to show", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    _grouped(ax, [c.delta_entry for c in confs], [c.short for c in confs], _colors(len(confs)),
             errs=[c.entry_ci for c in confs])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(n_e), [entry_label(t, s) for t, s in ma.entry_keys], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("change of NDCG@5 vs original (absolute)")
    ax.set_title(f"{ma.model}: change vs original per entry (bars: 95% paired bootstrap intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def avg_plot(analyses: list[ModelAnalysis], path: Path) -> Path:
    """Average NDCG@5 over each model's common entries, every configuration, with 95% intervals."""
    xs, ys, errs, names, colors, groups = [], [], [], [], [], []
    x = 0.0
    for ma in analyses:
        start = x
        pal = _colors(len(ma.configs))
        for i, c in enumerate(ma.all_configs):
            xs.append(x)
            ys.append(c.avg_all)
            lo, hi = c.ci.get("avg_all", (np.nan, np.nan))
            errs.append((max(c.avg_all - lo, 0.0) if np.isfinite(lo) else 0.0,
                         max(hi - c.avg_all, 0.0) if np.isfinite(hi) else 0.0))
            names.append(c.short)
            colors.append("0.55" if c.is_baseline else pal[i - (1 if ma.baseline else 0)])
            x += 1.0
        groups.append(((start + x - 1.0) / 2.0, f"{ma.model}\n({ma.n_entries} entries)"))
        x += 1.0
    fig = Figure(figsize=(min(MAX_WIDTH_IN, max(7.0, 0.6 * len(xs) + 2)), 6.0))
    ax = fig.add_subplot()
    if xs:
        ax.bar(xs, ys, 0.8, color=colors, yerr=np.array(errs).T, capsize=3,
               error_kw={"elinewidth": 0.8, "ecolor": "black"})
        ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=8)
        finite = [y for y in ys if np.isfinite(y)]
        bottom = max(0.0, (min(finite) if finite else 0.0) - 0.1)
        ax.set_ylim(bottom, min(1.05, (max(finite) if finite else 1.0) + 0.08))
        for xi, yi in zip(xs, ys, strict=True):
            if np.isfinite(yi):
                ax.text(xi, bottom + 0.005, f"{yi:.4f}", ha="center", va="bottom", fontsize=7, rotation=90,
                        color="white", fontweight="bold")
        sec = ax.secondary_xaxis("top")
        sec.set_xticks([g[0] for g in groups], [g[1] for g in groups], fontsize=9)
    ax.set_ylabel("average NDCG@5 over the model's common entries")
    ax.set_title("Average NDCG@5 per model and configuration (error bars: 95% bootstrap interval of each average)", pad=28)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def make_plots(analyses: list[ModelAnalysis], out_dir: Path, across=None) -> dict[str, dict[str, Path] | Path]:
    """Write every plot; returns {'models': {model: {'comparison': p, 'diff': p}}, 'avg': p, 'frontier': p}
    ('frontier' when `across`, the cross-model view, has configurations)."""
    out_dir = Path(out_dir)
    per_model: dict[str, dict[str, Path]] = {}
    used: set[str] = set()
    for ma in analyses:
        if not ma.all_configs or not ma.n_entries:
            continue
        m = base = safe_name(ma.model)
        i = 2
        while m in used:
            m, i = f"{base}-{i}", i + 1
        used.add(m)
        per_model[ma.model] = {
            "comparison": comparison_plot(ma, out_dir / f"performance_comparison_{m}.png"),
            "diff": diff_plot(ma, out_dir / f"performance_diff_{m}.png"),
        }
    out = {"models": per_model, "avg": avg_plot([a for a in analyses if a.n_entries], out_dir / "performance_avg_comparison_all.png")}
    if across is not None and across.candidates:
        out["frontier"] = frontier_plot(across, out_dir / "performance_frontier.png")
    return out


def frontier_plot(ca, path: Path) -> Path:
    """Quality vs deployment memory of every configuration of the experiment (one colour per model, originals as
    squares), the Pareto frontier as a step line; marker area by pages/s where speed is an objective, and a second
    panel of quality vs pages/s then. `ca`: report.frontier.CrossAnalysis."""
    cands = [c for c in ca.candidates if c.memory_bytes is not None and np.isfinite(c.avg)]
    speed = ca.speed_device is not None
    fig = Figure(figsize=(13.0 if speed else 8.0, 6.0))
    axes = [fig.add_subplot(1, 2 if speed else 1, i + 1) for i in range(2 if speed else 1)]
    models = list(dict.fromkeys(c.model for c in cands))
    color = dict(zip(models, _colors(len(models)), strict=True))
    top = max((c.pages_per_s for c in cands if c.pages_per_s), default=1.0)
    for c in cands:
        size = 40 + 260 * (c.pages_per_s / top) if speed and c.pages_per_s else 70
        err = None if c.ci is None else [[max(c.avg - c.ci[0], 0)], [max(c.ci[1] - c.avg, 0)]]
        kw = {"color": color[c.model], "edgecolors": "black" if c.status == "frontier" else "none", "zorder": 3}
        for ax, x in zip(axes, [c.memory_bytes / 1e6] + ([c.pages_per_s] if speed else []), strict=True):
            ax.scatter([x], [c.avg], s=size if ax is axes[0] else 70, marker="s" if c.is_original else "o", **kw)
            if err is not None:
                ax.errorbar([x], [c.avg], yerr=err, fmt="none", ecolor="0.4", elinewidth=0.7, capsize=2, zorder=2)
            ax.annotate(c.config.short, (x, c.avg), textcoords="offset points", xytext=(5, 4), fontsize=7)
    front = ca.frontier
    if front:
        xs = [c.memory_bytes / 1e6 for c in front]
        axes[0].step(xs, [c.avg for c in front], where="post", color="black", linewidth=1, alpha=0.6, label="frontier")
    for m in models:
        axes[0].scatter([], [], color=color[m], label=m)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("deployment memory (MB: weights on disk + index)")
    axes[0].set_ylabel(f"average NDCG@5 over the {len(ca.entries)} shared entries")
    axes[0].set_title("Quality vs memory (squares: originals; black edge: frontier" + ("; area: pages/s)" if speed else ")"))
    if models:
        axes[0].legend(fontsize=8, loc="lower right")
    if speed:
        axes[1].set_xlabel(f"pages/s ({ca.speed_device})")
        axes[1].set_title("Quality vs encoding speed")
    for ax in axes:
        ax.grid(alpha=0.3)
    return _save(fig, path)
