"""The comparison report (colq_sweep.report): numbers re-computed independently from the raw per-entry and
per-query scores, the statistics' edge cases, the design analysis, the plots and the MLflow round trip."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pandas as pd
import pytest

from colq_sweep.report import PointResults, build_report, build_report_from_points
from colq_sweep.report.__main__ import main as cli_main

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"

ENTRIES = [  # (task, subset, language, benchmark)
    ("VidoreArxivQARetrieval", "default", "en", "ViDoRe(v1)"),
    ("VidoreDocVQARetrieval", "default", "en", "ViDoRe(v1)"),
    ("Vidore2ESGReportsRetrieval", "english", "en", "ViDoRe(v2)"),
    ("Vidore2ESGReportsRetrieval", "french", "fr", "ViDoRe(v2)"),
    ("Vidore3HrRetrieval", "english", "en", "ViDoRe(v3)"),
    ("Vidore3HrRetrieval", "german", "de", "ViDoRe(v3)"),
]
META = {(t, s): (lang, b) for t, s, lang, b in ENTRIES}
N_BOOT = 300
SEED = 7


# ------------------------------------------------------------------------------------------ synthetic data


def base_scores(rng, n_q: int = 30) -> dict:
    return {(t, s): rng.uniform(0.2, 0.9, n_q) for t, s, _, _ in ENTRIES}


def shifted(scores: dict, shift: float, rng, noise: float = 0.02) -> dict:
    return {e: np.clip(v + shift + rng.normal(0.0, noise, len(v)), 0.0, 1.0) for e, v in scores.items()}


def ndcg10_of(v: np.ndarray) -> np.ndarray:
    return np.clip(0.9 * v + 0.05, 0.0, 1.0)


def make_point(model, label, role, scores, params=None, metrics=None, drop=(), status="FINISHED", run_id=None):
    rows, erows = [], []
    for (t, s), v in scores.items():
        if (t, s) in drop:
            continue
        lang, bench = META[(t, s)]
        v10 = ndcg10_of(v)
        rows += [dict(task=t, subset=s, language=lang, query_id=f"q{i:03d}", ndcg_at_5=x, ndcg_at_10=y)
                 for i, (x, y) in enumerate(zip(v, v10, strict=True))]
        main = "ndcg_at_10" if bench == "ViDoRe(v3)" else "ndcg_at_5"
        erows.append(dict(task=t, subset=s, language=lang, benchmark=bench, ndcg_at_5=v.mean(), ndcg_at_10=v10.mean(),
                          main_metric=main, main_score=(v10 if main == "ndcg_at_10" else v).mean(), recall_at_5=0.5,
                          n_queries=len(v)))
    return PointResults(model=model, label=label, role=role, params=dict(params or {}), metrics=dict(metrics or {}),
                        entries=pd.DataFrame(erows), per_query=pd.DataFrame(rows),
                        run_id=run_id or f"{model}-{label}".replace(" ", "_"), status=status)


def report_order(keys) -> list:
    """The documented order of entries (benchmark, task, subset)."""
    return sorted(keys, key=lambda e: (META[e][1], e[0], e[1]))


def naive_bootstrap(base: dict, conf: dict, order: list, n_boot: int, seed: int) -> np.ndarray:
    """(E, B) replicate per-entry changes, one resample at a time (independent of the vectorised code)."""
    rng = np.random.default_rng(seed)
    out = []
    for e in order:
        b, c = np.asarray(base[e]), np.asarray(conf[e])
        idx = rng.integers(0, len(b), size=(n_boot, len(b)))
        out.append([c[idx[i]].mean() - b[idx[i]].mean() for i in range(n_boot)])
    return np.array(out)


# ------------------------------------------------------------------------------------------ parsing


def table_after(md: str, heading: str) -> list[dict[str, str]]:
    lines = md.splitlines()
    i = lines.index(heading)
    j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("|"))
    header = [c.strip() for c in lines[j].strip().strip("|").split("|")]
    rows = []
    for line in lines[j + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip().strip("|").split("|")], strict=True)))
    return rows


def nums(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell.replace(",", ""))]


def num(cell: str) -> float:
    v = nums(cell)
    assert len(v) == 1, cell
    return v[0]


def close(parsed: float, exact: float, digits: int = 5) -> bool:
    return abs(parsed - exact) <= 0.5 * 10 ** (-digits) + 1e-9


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One model, the original and three seqlen configurations: a clear loss, a gain and no change."""
    rng = np.random.default_rng(123)
    base = base_scores(rng)
    confs = {"256": shifted(base, -0.05, rng), "512": shifted(base, 0.03, rng), "1024": shifted(base, 0.0, rng)}
    common = {"iters": "1000", "seed": "42", "batch_size": "8", "quant.bits": "4"}
    points = [make_point("4b", "original", "baseline", base, metrics={"total_bytes": 8.4e9, "eval_seconds": 50.0,
                                                                       "peak_rss_mb": 1234.0})]
    for sl, sc in confs.items():
        points.append(make_point("4b", f"w4g128 seqlen={sl}", "quantized", sc, params={**common, "seqlen": sl},
                                 metrics={"base_total_bytes": 8.4e9, "quant_total_bytes": 3.5e9, "quant_seconds": 123.4,
                                          "pages_per_s": 14.25, "queries_per_s": 1521.0}))
    out = tmp_path_factory.mktemp("study")
    path = build_report_from_points(points, out, title="study", n_boot=N_BOOT, seed=SEED, plots=False)
    return {"base": base, "confs": confs, "md": path.read_text(), "out": out, "points": points}


def test_performance_table_recomputed(study):
    md, base, confs = study["md"], study["base"], study["confs"]
    order = report_order(base)
    en = [e for e in order if META[e][0] == "en"]
    rows = {r["Configuration"]: r for r in table_after(md, "### Performance — 4b")}
    b_all = np.mean([base[e].mean() for e in order])
    b_en = np.mean([base[e].mean() for e in en])
    assert close(num(rows["original"]["Avg NDCG@5 (all)"]), b_all)
    assert close(num(rows["original"]["Avg NDCG@5 (English)"]), b_en)
    for sl, sc in confs.items():
        r = rows[f"seqlen={sl}"]
        c_all = np.mean([sc[e].mean() for e in order])
        c_en = np.mean([sc[e].mean() for e in en])
        assert close(num(r["Avg NDCG@5 (all)"]), c_all)
        assert close(num(r["Abs. change"]), c_all - b_all)
        assert close(num(r["Change"]), (c_all - b_all) / b_all * 100, 2)
        assert close(num(r["Avg NDCG@5 (English)"]), c_en)
        assert close(num(r["Change (English)"]), (c_en - b_en) / b_en * 100, 2)
        reps = naive_bootstrap(base, sc, order, N_BOOT, SEED)
        lo, hi = np.percentile(reps.mean(axis=0), [2.5, 97.5])
        plo, phi = nums(r["95% CI (abs.)"])
        assert close(plo, lo) and close(phi, hi)
        en_idx = [order.index(e) for e in en]
        lo, hi = np.percentile(reps[en_idx].mean(axis=0), [2.5, 97.5])
        plo, phi = nums(r["95% CI (abs., English)"])
        assert close(plo, lo) and close(phi, hi)
    assert "6 common entries (4 English), 180 queries." in md
    assert f"{N_BOOT} replicates" in md and "covers 0" in md


def test_entry_level_counts_and_entries_csv(study):
    md, base, confs, out = study["md"], study["base"], study["confs"], study["out"]
    order = report_order(base)
    counts = {r["Entries"]: r for r in table_after(md, "### Entry-level changes — 4b")}
    csv = pd.read_csv(out / "entries.csv")
    assert len(csv) == 4 * len(ENTRIES) and csv["common"].all()
    seen = set()
    for sl, sc in confs.items():
        col = f"seqlen={sl}"
        d = np.array([sc[e].mean() - base[e].mean() for e in order])
        reps = naive_bootstrap(base, sc, order, N_BOOT, SEED)
        lo, hi = np.percentile(reps, [2.5, 97.5], axis=1)
        sig = np.where(lo > 0, "improved", np.where(hi < 0, "degraded", "not significant"))
        seen |= set(sig)
        assert int(counts["Higher than original (point estimate)"][col]) == (d > 0).sum()
        assert int(counts["Lower than original (point estimate)"][col]) == (d < 0).sum()
        assert int(counts["Improved significantly"][col]) == (sig == "improved").sum()
        assert int(counts["Degraded significantly"][col]) == (sig == "degraded").sum()
        assert int(counts["Unchanged (not significant)"][col]) == (sig == "not significant").sum()
        rows = csv[csv["configuration"] == col].set_index(["task", "subset"])
        for i, e in enumerate(order):
            r = rows.loc[e]
            assert math.isclose(r["delta_ndcg_at_5"], d[i], abs_tol=1e-12)
            assert math.isclose(r["delta_ci_low"], lo[i], abs_tol=1e-12)
            assert math.isclose(r["delta_ci_high"], hi[i], abs_tol=1e-12)
            assert r["significance"] == sig[i]
            assert r["n_queries"] == len(base[e])
    assert {"improved", "degraded"} <= seen  # the fixture exercises both directions


def test_best_sizes_speed_and_v3(study):
    md, base, confs = study["md"], study["base"], study["confs"]
    order = report_order(base)
    avgs = {sl: np.mean([sc[e].mean() for e in order]) for sl, sc in confs.items()}
    best = max(avgs, key=avgs.get)
    b_all = np.mean([base[e].mean() for e in order])
    summary = {r["Model"]: r for r in table_after(md, "## Executive summary")}["`4b`"]
    assert summary["Best configuration"] == f"`w4g128 seqlen={best}`"
    assert close(num(summary["Abs. change"]), avgs[best] - b_all)
    assert summary["Size before → after"] == "8.40 GB → 3.50 GB"
    assert close(num(summary["Size reduction"]), (1 - 3.5 / 8.4) * 100, 1)
    assert summary["Significant loss/gain?"] == "yes (improvement)"
    dist = {r["Configuration"]: r for r in table_after(md, "### Best configuration and recommendation — 4b")}
    assert dist["seqlen=256"]["Distinguishable from best?"] == "yes (worse)"
    speed = {r["Configuration"]: r for r in table_after(md, "## Speed and memory")}
    assert speed["seqlen=256"]["Pages/s"] == "14.25" and speed["seqlen=256"]["Queries/s"] == "1,521.00"
    assert speed["seqlen=256"]["Quantization time"] == "123.4 s (2.1 min)"
    assert speed["original"]["Quantization time"] == "n/a" and speed["original"]["Evaluation time"] == "50.0 s"
    assert speed["original"]["Eval. peak RSS (MB)"] == "1,234.0"  # the evaluator's own name, peak_rss_mb
    v3 = {r["Entry"]: r for r in table_after(md, "### ViDoRe(v3): official NDCG@10 — 4b")}
    v3_entries = [e for e in order if META[e][1] == "ViDoRe(v3)"]
    for sl, sc in confs.items():
        assert close(num(v3["**Average**"][f"seqlen={sl}"]), np.mean([ndcg10_of(sc[e]).mean() for e in v3_entries]))
    assert "None: every configuration has all 6 entries." in md
    assert "No failed runs." in md


def test_self_comparison_is_not_significant(tmp_path):
    rng = np.random.default_rng(5)
    base = base_scores(rng)
    points = [make_point("m", "original", "baseline", base),
              make_point("m", "copy", "quantized", {e: v.copy() for e, v in base.items()})]
    md = build_report_from_points(points, tmp_path, n_boot=N_BOOT, seed=SEED, plots=False).read_text()
    row = {r["Configuration"]: r for r in table_after(md, "### Performance — m")}["copy"]
    lo, hi = nums(row["95% CI (abs.)"])
    assert lo <= 0 <= hi
    counts = {r["Entries"]: r for r in table_after(md, "### Entry-level changes — m")}
    assert counts["Improved significantly"]["copy"] == "0" and counts["Degraded significantly"]["copy"] == "0"
    assert counts["Unchanged (not significant)"]["copy"] == str(len(ENTRIES))
    csv = pd.read_csv(tmp_path / "entries.csv")
    q = csv[csv["configuration"] == "copy"]
    assert (q["delta_ci_low"] <= 0).all() and (q["delta_ci_high"] >= 0).all()
    assert set(q["significance"]) == {"not significant"}
    assert "The change is not statistically significant" in md


def test_missing_entry_listed_and_excluded(tmp_path):
    rng = np.random.default_rng(9)
    base = base_scores(rng)
    a, b = shifted(base, -0.01, rng), shifted(base, 0.01, rng)
    gone = ("Vidore3HrRetrieval", "german")
    points = [make_point("m", "original", "baseline", base),
              make_point("m", "a", "quantized", a, params={"seqlen": "256"}),
              make_point("m", "b", "quantized", b, params={"seqlen": "512"}, drop=[gone])]
    md = build_report_from_points(points, tmp_path, n_boot=N_BOOT, seed=SEED, plots=False).read_text()
    missing = table_after(md, "### Entries not common to all configurations — m")
    assert len(missing) == 1
    assert missing[0]["Entry"] == "Vidore3Hr (german)" and missing[0]["Missing in"] == "`seqlen=512`"
    common = report_order([e for e in base if e != gone])
    rows = {r["Configuration"]: r for r in table_after(md, "### Performance — m")}
    for name, sc in (("original", base), ("seqlen=256", a), ("seqlen=512", b)):
        assert close(num(rows[name]["Avg NDCG@5 (all)"]), np.mean([sc[e].mean() for e in common]))
    reps = naive_bootstrap(base, a, common, N_BOOT, SEED)
    lo, hi = np.percentile(reps.mean(axis=0), [2.5, 97.5])
    plo, phi = nums(rows["seqlen=256"]["95% CI (abs.)"])
    assert close(plo, lo) and close(phi, hi)
    assert "5 common entries (4 English)" in md
    csv = pd.read_csv(tmp_path / "entries.csv")
    not_common = csv[~csv["common"]]
    assert len(not_common) == 2 and set(not_common["subset"]) == {"german"}  # original + a still list it
    assert not_common["delta_ndcg_at_5"].isna().all()


def test_confounded_factors_flagged(tmp_path):
    rng = np.random.default_rng(11)
    base = base_scores(rng, n_q=10)
    points = [make_point("m", "original", "baseline", base)]
    for sl, bs, n in (("256", "8", "128"), ("512", "16", "256"), ("1024", "32", "512")):
        points.append(make_point("m", f"s{sl}", "quantized", shifted(base, 0.0, rng),
                                 params={"seqlen": sl, "batch_size": bs, "nsamples": n, "seed": "42"}))
    for sl, bs in (("256", "8"), ("512", "8"), ("1024", "16")):
        points.append(make_point("p", f"s{sl}", "quantized", shifted(base, 0.0, rng),
                                 params={"seqlen": sl, "batch_size": bs}))
    md = build_report_from_points(points, tmp_path, n_boot=50, seed=SEED, plots=False).read_text()
    assert "**Confounded:** `seqlen`, `batch_size` and `nsamples` change together in this sweep" in md
    assert "`seqlen` and `batch_size` one-to-one" in md and "cannot be estimated" in md
    rows = table_after(md, "#### Effect of seqlen + batch_size + nsamples — m")
    assert "`batch_size` is determined by `seqlen`" in md  # model p: batch size 8, 8, 16 for three seqlens
    assert [r["Level"] for r in rows] == [f"seqlen={a}, batch_size={b}, nsamples={c}" for a, b, c in
                                          (("256", "8", "128"), ("512", "16", "256"), ("1024", "32", "512"))]


def test_crossed_design_effects_and_seed_spread(tmp_path):
    rng = np.random.default_rng(13)
    base = base_scores(rng)
    order = report_order(base)
    points, deltas, confs = [make_point("m", "original", "baseline", base)], {}, {}
    for sl, shift_s in (("256", -0.03), ("1024", 0.0)):
        for ns, shift_n in (("128", -0.01), ("512", 0.01)):
            for seed in ("1", "2"):
                sc = shifted(base, shift_s + shift_n, rng)
                params = {"seqlen": sl, "nsamples": ns, "seed": seed, "batch_size": "8"}
                points.append(make_point("m", f"{sl}-{ns}-{seed}", "quantized", sc, params=params))
                deltas[(sl, ns, seed)] = np.mean([sc[e].mean() - base[e].mean() for e in order])
                confs[(sl, ns, seed)] = sc
    md = build_report_from_points(points, tmp_path, n_boot=200, seed=SEED, plots=False).read_text()
    assert "Confounded" not in md
    assert "Crossed design `seqlen` (2) × `nsamples` (2) × `seed` (2): all 8 combinations present" in md
    keys = list(deltas)
    for pos, name, levels in ((0, "seqlen", ("256", "1024")), (1, "nsamples", ("128", "512")), (2, "seed", ("1", "2"))):
        rows = {r["Level"]: r for r in table_after(md, f"#### Effect of {name} — m")}
        means = {lv: np.mean([deltas[k] for k in keys if k[pos] == lv]) for lv in levels}
        for lv in levels:
            assert close(num(rows[f"{name}={lv}"]["Mean change vs original (abs.)"]), means[lv])
        diff = num(rows[f"{name}={levels[1]}"][f"Difference vs {name}={levels[0]}"])
        assert close(diff, means[levels[1]] - means[levels[0]])
        # interval of the level mean: the same linear combination of the naive paired replicates
        reps = np.mean([naive_bootstrap(base, confs[k], order, 200, SEED).mean(axis=0)
                        for k in keys if k[pos] == levels[0]], axis=0)
        lo, hi = np.percentile(reps, [2.5, 97.5])
        plo, phi = nums(rows[f"{name}={levels[0]}"]["95% CI"])
        assert close(plo, lo) and close(phi, hi)
    seeds = {r["Shared settings"]: r for r in table_after(md, "### Seed replicates — m")}
    assert len(seeds) == 4
    for sl in ("256", "1024"):
        for ns in ("128", "512"):
            r = seeds[f"seqlen={sl}, nsamples={ns}"]
            avgs = np.array([np.mean([confs[(sl, ns, s)][e].mean() for e in order]) for s in ("1", "2")])
            assert close(num(r["Std (ddof=1)"]), avgs.std(ddof=1))
            assert close(num(r["Range"]), avgs.max() - avgs.min())
            assert close(num(r["Mean avg NDCG@5"]), avgs.mean())


def _assert_png(path):
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_plots_are_valid_pngs(tmp_path):
    rng = np.random.default_rng(17)
    base, base2 = base_scores(rng), base_scores(rng)
    points = [make_point("colqwen3-4b", "original", "baseline", base),
              make_point("colqwen3-4b", "q1", "quantized", shifted(base, -0.02, rng), params={"seqlen": "256"}),
              make_point("colqwen3-4b", "q2", "quantized", shifted(base, 0.01, rng), params={"seqlen": "1024"}),
              make_point("colqwen3-8b", "original", "baseline", base2),
              make_point("colqwen3-8b", "q1", "quantized", shifted(base2, 0.0, rng), params={"seqlen": "1024"},
                         drop=[("VidoreDocVQARetrieval", "default")])]
    md = build_report_from_points(points, tmp_path, n_boot=100, seed=SEED).read_text()
    names = ["performance_comparison_colqwen3-4b.png", "performance_diff_colqwen3-4b.png",
             "performance_comparison_colqwen3-8b.png", "performance_diff_colqwen3-8b.png",
             "performance_avg_comparison_all.png"]
    for n in names:
        _assert_png(tmp_path / n)
        assert f"]({n})" in md
    # report.html: the same report with every plot inlined, so MLflow's artifact viewer shows them
    import base64
    import re

    page = (tmp_path / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == md.count("![") >= len(names) and all(s.startswith("data:image/png;base64,") for s in srcs)
    inlined = [base64.b64decode(s.split(",", 1)[1]) for s in srcs]
    assert all((tmp_path / n).read_bytes() in inlined for n in names)
    assert "<table>" in page and "<h1>" in page and "](performance_" not in page
    assert "**Warning: the models' entry sets differ** (`colqwen3-4b` 6, `colqwen3-8b` 5 entries; 5 shared)" in md


# ------------------------------------------------------------------------------------------ MLflow round trip


def _log_point(client, exp_id, tmp, p: PointResults, parent_id: str | None, eval_hash: str = "ev1", start_time=None):
    tags = {"colq.role": p.role, "colq.model": p.model, "colq.label": p.label, "colq.eval_hash": eval_hash,
            "colq.config_hash": f"h-{p.label}", "colq.artifact_key": f"k-{p.label}", "colq.sweep_id": "s1"}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = client.create_run(exp_id, tags=tags, run_name=p.label, start_time=start_time)
    rid = run.info.run_id
    from mlflow.entities import Metric, Param

    client.log_batch(rid, metrics=[Metric(k, float(v), 0, 0) for k, v in p.metrics.items()],
                     params=[Param(k, str(v)) for k, v in p.params.items()])
    if p.status == "FINISHED":
        d = tmp / "logged" / rid
        d.mkdir(parents=True)
        p.entries.to_csv(d / "entries.csv", index=False)
        p.per_query.to_csv(d / "per_query.csv", index=False)
        client.log_artifact(rid, str(d / "entries.csv"), "results")
        client.log_artifact(rid, str(d / "per_query.csv"), "results")
    if p.error:
        client.set_tag(rid, "colq.error", p.error)
    client.set_terminated(rid, p.status)
    return rid


def test_end_to_end_through_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow import MlflowClient

    rng = np.random.default_rng(21)
    base = base_scores(rng, n_q=12)
    q1, q2 = shifted(base, -0.02, rng), shifted(base, 0.01, rng)
    sizes = {"base_total_bytes": 2.0e7, "quant_total_bytes": 0.9e7, "size_reduction_pct": 55.0}
    p_base = make_point("tiny", "original", "baseline", base,
                        params={"model.name": "tiny", "quant.method": "none"}, metrics={"total_bytes": 2.0e7})
    p1 = make_point("tiny", "w4g128 seqlen=32", "quantized", q1,
                    params={"model.name": "tiny", "quant.method": "autoround", "seqlen": "32", "batch_size": "4"},
                    metrics={**sizes, "quant_seconds": 8.0, "pages_per_s": 3.5})
    p2 = make_point("tiny", "w4g128 seqlen=64", "quantized", q2,
                    params={"model.name": "tiny", "quant.method": "autoround", "seqlen": "64", "batch_size": "4"},
                    metrics=sizes)
    p3 = make_point("tiny", "w4g128 seqlen=128", "quantized", base, status="FAILED",
                    params={"model.name": "tiny", "quant.method": "autoround", "seqlen": "128", "batch_size": "4"})
    p3.error = "RuntimeError: fail_point"

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("e2e", artifact_location=(tmp_path / "artifacts").as_uri())
    old_parent = client.create_run(exp_id, tags={"colq.role": "sweep"}, run_name="old-sweep", start_time=1000)
    client.set_terminated(old_parent.info.run_id, "FINISHED")
    _log_point(client, exp_id, tmp_path, p_base, None)  # the baseline outside any sweep
    parent = client.create_run(exp_id, tags={"colq.role": "sweep", "colq.sweep_id": "s1"}, run_name="sweep")
    pid = parent.info.run_id
    stale = make_point("tiny", p1.label, "quantized", shifted(base, -0.2, rng), params=p1.params)
    _log_point(client, exp_id, tmp_path, stale, old_parent.info.run_id, start_time=2000)  # an older run of p1
    mid = client.create_run(exp_id, tags={"colq.role": "sweep"}, run_name="mid-sweep", start_time=3000).info.run_id
    client.set_terminated(mid, "FINISHED")
    _log_point(client, exp_id, tmp_path, p2, mid)  # an older sweep with a compared run
    for p in (p1, p3):
        _log_point(client, exp_id, tmp_path, p, pid)
    client.set_terminated(pid, "FINISHED")

    path = build_report("e2e", tracking_uri=uri, outputs_dir=tmp_path, n_boot=100, seed=SEED)
    assert path == tmp_path / "reports" / "e2e" / "report.md"
    md = path.read_text()
    order = report_order(base)
    rows = {r["Configuration"]: r for r in table_after(md, "### Performance — tiny")}
    b_all = np.mean([base[e].mean() for e in order])
    for name, sc in (("seqlen=32", q1), ("seqlen=64", q2)):
        c_all = np.mean([sc[e].mean() for e in order])
        assert close(num(rows[name]["Avg NDCG@5 (all)"]), c_all)
        assert close(num(rows[name]["Abs. change"]), c_all - b_all)
    failed = table_after(md, "## Failed and unused runs")
    assert [(r["Label"], r["Status"], r["Error"]) for r in failed] == [
        ("`w4g128 seqlen=128`", "FAILED", "RuntimeError: fail_point")]
    assert "seqlen=128" not in {r["Configuration"] for r in table_after(md, "### Performance — tiny")}
    sizes_rows = {r["Configuration"]: r for r in table_after(md, "## Memory efficiency (on-disk size)")}
    assert sizes_rows["seqlen=32"]["Original size"] == "20.00 MB" and sizes_rows["seqlen=32"]["Quantized size"] == "9.00 MB"
    assert pid in md  # provenance: the sweep run the report belongs to
    assert "1 older finished run(s) of an already reported configuration were left out" in md

    logged = {a.path for a in client.list_artifacts(pid, "report")}
    for n in ("report.md", "entries.csv", "summary.csv", "performance_comparison_tiny.png",
              "performance_diff_tiny.png", "performance_avg_comparison_all.png"):
        assert f"report/{n}" in logged
    assert not client.list_artifacts(old_parent.info.run_id)
    # the recommendation is the newest sweep's description; the older sweep whose run was compared points to it,
    # the one whose only run was left out gets nothing
    note = lambda run: client.get_run(run).data.tags.get("mlflow.note.content")  # noqa: E731
    assert note(pid).startswith("**`tiny`") and note(mid).endswith(note(pid)) and pid in note(mid)
    assert note(old_parent.info.run_id) is None

    # the CLI: --no-log into another folder; an unknown experiment is one line and exit code 2
    assert cli_main(["--name", "e2e", "--tracking-uri", uri, "--out", str(tmp_path / "cli"), "--no-log",
                     "--n-boot", "20", "--no-plots"]) == 0
    assert (tmp_path / "cli" / "report.md").is_file()
    assert cli_main(["--name", "nope", "--tracking-uri", uri, "--no-log"]) == 2
    assert cli_main(["--name", "e2e", "--outputs-dir", str(tmp_path / "empty"), "--no-log"]) == 2


def test_degenerate_inputs_do_not_crash(tmp_path):
    """No original, no per-query scores, a model with only failed runs: the report says so, with n/a numbers."""
    rng = np.random.default_rng(3)
    base = base_scores(rng, n_q=5)
    no_pq = make_point("b", "q-nopq", "quantized", shifted(base, 0.0, rng), params={"seqlen": "64"})
    no_pq.per_query = no_pq.per_query.iloc[0:0]
    points = [make_point("a", "q1", "quantized", base, params={"seqlen": "32"}),
              make_point("a", "q2", "quantized", shifted(base, 0.0, rng), params={"seqlen": "64"}),
              make_point("b", "original", "baseline", base), no_pq,
              make_point("c", "original", "baseline", base, status="FAILED")]
    md = build_report_from_points(points, tmp_path, n_boot=20, seed=SEED, plots=False).read_text()
    assert "No finished original (baseline) run for this model: changes cannot be computed." in md
    assert "`q-nopq` has no per-query scores: no confidence intervals for it." in md
    row = {r["Configuration"]: r for r in table_after(md, "### Performance — b")}["q-nopq"]
    assert row["95% CI (abs.)"] == "n/a" and row["Abs. change"] != "n/a"
    assert [r["Status"] for r in table_after(md, "## Failed and unused runs")] == ["FAILED"]


def test_queries_paired_by_id(tmp_path):
    """A query missing in one configuration is dropped from the pairs of that entry (and said so)."""
    rng = np.random.default_rng(29)
    base = base_scores(rng, n_q=20)
    conf = shifted(base, -0.02, rng)
    p = make_point("m", "q", "quantized", conf, params={"seqlen": "64"})
    e0 = ("VidoreArxivQARetrieval", "default")
    p.per_query = p.per_query[~((p.per_query["task"] == e0[0]) & (p.per_query["query_id"] == "q000"))]
    points = [make_point("m", "original", "baseline", base), p]
    md = build_report_from_points(points, tmp_path, n_boot=N_BOOT, seed=SEED, plots=False).read_text()
    assert "1 common entries have query ids missing in some configuration" in md
    per_entry = {r["Entry"]: r for r in table_after(md, "### Per-entry NDCG@5 — m")}
    assert per_entry["VidoreArxivQA"]["Queries"] == "19" and per_entry["VidoreDocVQA"]["Queries"] == "20"
    assert "Consistency: for `m` / `q`" in md  # entries.csv averaged 20 queries, the pairs use 19
    order = report_order(base)
    trimmed_b = {**base, e0: base[e0][1:]}
    trimmed_c = {**conf, e0: conf[e0][1:]}
    reps = naive_bootstrap(trimmed_b, trimmed_c, order, N_BOOT, SEED)
    lo, hi = np.percentile(reps.mean(axis=0), [2.5, 97.5])
    plo, phi = nums({r["Configuration"]: r for r in table_after(md, "### Performance — m")}["q"]["95% CI (abs.)"])
    assert close(plo, lo) and close(phi, hi)


# ------------------------------------------------------------------------------------- the published study


def test_section_against_the_published_study(tmp_path):
    """A synthetic run whose numbers are the study's own (8B, seqlen 1024 with the study's nsamples/batch size):
    the section sets them side by side, differences 0, every study number inside our interval; a point with other
    settings is named as not compared, with the reason."""
    from colq_sweep.report.published import published

    ref = published("8b").set_index(["task", "subset"])
    study_params = {"model.id": "TomoroAI/tomoro-colqwen3-embed-8b", "seqlen": "1024", "nsamples": "500",
                    "batch_size": "50", "iters": "1000", "quant.bits": "4", "quant.group_size": "128",
                    "quant.sym": "True", "calib.dataset": "NeelNanda/pile-10k"}  # fmt: skip
    wiggle = np.tile([0.05, -0.05], 15)  # 30 queries whose mean is exactly the published entry score

    def like_study(column):
        return {(t, s): ref.loc[(t, s), column] + wiggle for t, s, _, _ in ENTRIES}

    points = [
        make_point("colqwen3-8b", "original", "baseline", like_study("original"), {"model.id": study_params["model.id"]}),
        make_point("colqwen3-8b", "w4 seqlen=1024", "quantized", like_study("seqlen_1024"), study_params),
        make_point("colqwen3-8b", "w4 seqlen=1024 n=512", "quantized", like_study("seqlen_1024"), {**study_params, "nsamples": "512"}),
    ]
    text = build_report_from_points(points, tmp_path, n_boot=N_BOOT, seed=SEED, plots=False).read_text()
    section = text.split("## Against the published study", 1)[1]
    assert "### `colqwen3-8b` `w4 seqlen=1024` vs the study's 8B seqlen=1024" in section
    assert "### `colqwen3-8b` `original` vs the study's 8B original" in section
    assert section.count(f"{len(ENTRIES)} entries in common of the study's 71; the study's number lies inside our "
                         f"interval on {len(ENTRIES)} of {len(ENTRIES)}") == 2
    hr = ref.loc[("Vidore3HrRetrieval", "german"), "seqlen_1024"]
    assert re.search(rf"\| Vidore3HrRetrieval / german \| {hr:.5f} \| {hr:.5f} \| [+-]0\.00000 \| \[[0-9.]+, [0-9.]+\] \| yes \|", section)
    assert "nsamples=512 where the study used 500: `colqwen3-8b` `w4 seqlen=1024 n=512`" in section


def test_demo_like_report_says_nothing_matches_the_study(tmp_path):
    rng = np.random.default_rng(SEED)
    base = base_scores(rng)
    points = [make_point("tiny", "original", "baseline", base),
              make_point("tiny", "w4 seqlen=32", "quantized", shifted(base, -0.01, rng), {"seqlen": "32"})]
    text = build_report_from_points(points, tmp_path, n_boot=N_BOOT, seed=SEED, plots=False).read_text()
    section = text.split("## Against the published study", 1)[1]
    assert "No configuration of this report matches one of the study's" in section
    assert "is not one of the study's (TomoroAI ColQwen3-Embed 4B/8B)" in section


def test_a_runs_params_read_alike_from_old_and_new_stores():
    """Old stores logged unset settings as 'None' and had no calib.kind / index / vision params; new runs log only
    what is set and applies. Both read the same: unset dropped, the old defaults filled in, calibration defaults
    only where the run calibrated (an RTN point or an original logs no calib.* and gets none)."""
    from colq_sweep.report.load import _params

    old = _params({"seqlen": "512", "calib.source": "hub", "calib.revision": "None", "model.id": "None"})
    assert old == {"index.pool_factor": "1", "index.dtype": "bf16", "quant.vision": "False", "calib.kind": "text",
                   "calib.queries_share": "0.0", "seqlen": "512", "calib.source": "hub"}  # fmt: skip
    rtn = _params({"quant.algorithms": "rtn", "quant.bits": "4"})
    assert not any(k.startswith("calib.") for k in rtn) and rtn["quant.algorithms"] == "rtn"
    assert _params({"calib.kind": "pages", "calib.queries_share": "0.25"})["calib.kind"] == "pages"
