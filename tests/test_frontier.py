"""Across models: shared entries, one paired bootstrap over every configuration, recovery, the Pareto frontier with
statistical ties, and budget questions answered (through Python and through the command line on a hand-built
MLflow store)."""

from __future__ import annotations

import numpy as np
import pytest

from colq_sweep.report import analyze
from colq_sweep.report.__main__ import main as cli_main
from colq_sweep.report.budget import Budget, answer, tradeoff
from colq_sweep.report.frontier import analyze_across
from tests.test_report import ENTRIES, _log_point, base_scores, make_point, report_order, table_after

N_BOOT = 400
DROPPED = (ENTRIES[1][0], ENTRIES[1][1])  # the small model's original has no score on it
H200 = "NVIDIA H200"


def _wiggle(v: np.ndarray, amp: float) -> np.ndarray:
    """+amp, -amp, +amp, ... per query: the mean is unchanged exactly (even query counts), the pairs are not."""
    return v + amp * np.where(np.arange(len(v)) % 2 == 0, 1.0, -1.0)


def scenario() -> list:
    """Two models. big: original (4 GB, 10 pages/s), W4 (-0.005 everywhere, 1.2 GB, 12 pages/s), W2 (-0.15, 0.7 GB,
    12 pages/s). small: original (-0.06 vs big's, 2 GB, 20 pages/s), W4 (-0.065, 0.6 GB, 25 pages/s), and a second
    W4 seed (W4 - 0.0005 with a +-0.01 wiggle per query: tied with W4 in quality, same memory and speed)."""
    rng = np.random.default_rng(3)
    b = base_scores(rng, n_q=30)
    shift = lambda d: {e: v + d for e, v in b.items()}  # noqa: E731
    small_w4 = shift(-0.065)
    mk = lambda model, label, role, sc, m, **kw: make_point(  # noqa: E731
        model, label, role, sc, params={"model.name": model, "quant.method": "none" if role == "baseline" else "autoround",
                                        "quant.bits": label[1] if role != "baseline" else "16", "seed": kw.pop("seed", "0")},
        metrics=m, **kw)  # fmt: skip
    big = {"base_total_bytes": 4e9}
    return [
        mk("big", "original", "baseline", b, {"total_bytes": 4e9, "pages_per_s": 10.0}),
        mk("big", "w4", "quantized", shift(-0.005), {**big, "quant_total_bytes": 1.2e9, "pages_per_s": 12.0}),
        mk("big", "w2", "quantized", shift(-0.15), {**big, "quant_total_bytes": 0.7e9, "pages_per_s": 12.0}),
        mk("small", "original", "baseline", shift(-0.06), {"total_bytes": 2e9, "pages_per_s": 20.0}, drop=(DROPPED,)),
        mk("small", "w4", "quantized", small_w4, {"base_total_bytes": 2e9, "quant_total_bytes": 0.6e9, "pages_per_s": 25.0}),
        mk("small", "w4 seed=1", "quantized", {e: _wiggle(v - 0.0005, 0.01) for e, v in small_w4.items()},
           {"base_total_bytes": 2e9, "quant_total_bytes": 0.6e9, "pages_per_s": 25.0}, seed="1"),
    ]


@pytest.fixture(scope="module")
def across():
    points = scenario()
    for p in points:
        p.device = H200
    return analyze_across(analyze(points, n_boot=N_BOOT, seed=1), n_boot=N_BOOT, seed=1), points


def _by_label(ca):
    return {(c.model, c.config.point.label): c for c in ca.candidates}


def test_shared_entries_recovery_and_pairs(across):
    ca, points = across
    assert len(ca.entries) == len(ENTRIES) - 1 and DROPPED not in ca.entries
    assert ca.dropped == [(DROPPED, ["small"])]  # listed with the model that lacks it, never silently dropped
    c = _by_label(ca)
    shared = report_order({e: None for e in ca.entries})
    avg = {k: np.mean([points_of(points, *k).entries.set_index(["task", "subset"]).at[e, "ndcg_at_5"] for e in shared])
           for k in c}
    for k, cand in c.items():
        assert cand.avg == pytest.approx(avg[k], abs=1e-12)
    w4 = c[("big", "w4")]
    assert w4.recovery == pytest.approx(avg[("big", "w4")] / avg[("big", "original")], rel=1e-12)
    lo, hi = w4.recovery_ci
    assert lo < w4.recovery < hi and hi - lo < 0.005  # the ratio varies with the resampled original's average
    d, dlo, dhi = ca.diff(w4, c[("big", "original")])  # a constant shift: a zero-width paired interval
    assert d == pytest.approx(-0.005, abs=1e-12) and dlo == pytest.approx(-0.005, abs=1e-9) == dhi
    d, lo, hi = ca.diff(w4, c[("small", "original")])  # the larger model quantized vs the smaller original
    assert d == pytest.approx(0.055, abs=1e-9) and lo > 0
    assert ca.speed_device == H200


def points_of(points, model, label):
    return next(p for p in points if p.model == model and p.label == label)


def test_frontier_marks_ties_not_dominance(across):
    ca, _ = across
    status = {k: (c.status, c.relation.config.point.label if c.relation else None) for k, c in _by_label(ca).items()}
    assert status == {
        ("big", "original"): ("frontier", None),  # the best quality
        ("big", "w4"): ("frontier", None),
        ("big", "w2"): ("dominated", "w4"),  # small W4: better, smaller, faster (0.085, well outside the interval)
        ("small", "original"): ("frontier", None),  # faster than big W4
        ("small", "w4"): ("frontier", None),
        ("small", "w4 seed=1"): ("tied", "w4"),  # beaten by 0.0005 only, within the interval
    }
    assert [c.config.point.label for c in ca.frontier] == ["w4", "w4", "original", "original"]


def test_budget_answers(across):
    ca, _ = across
    a = answer(ca, Budget(max_memory_gb=1.5))
    assert a.chosen.name == "big / w4" and a.chosen.config.point.label == "w4" and ca.shared_label == ""
    a = answer(ca, Budget(min_pages_per_s=15, prefer="memory"))
    assert (a.chosen.model, a.chosen.config.point.label) == ("small", "w4")
    a = answer(ca, Budget(max_memory_gb=1.5, max_loss_pct=0.1))  # every small one loses ~1%, every lossless one is big
    assert a.chosen is None
    assert sorted(opt for opt, _ in a.binding) == ["--max-loss-pct", "--max-memory-gb"]
    assert "No configuration satisfies memory ≤ 1.5 GB and loss ≤ 0.1% of its original" in a.lines[0]
    a = answer(ca, Budget(min_ndcg=0.99))
    assert a.chosen is None and [o for o, _ in a.binding] == ["--min-ndcg"] and len(a.binding[0][1]) == 6
    assert any("From `small / " in line for line in tradeoff(ca))  # the frontier's steps, smallest first
    with pytest.raises(ValueError, match="--max-loss-pct"):
        Budget(max_loss_pct=-1)


def test_budget_query_through_the_command_line(tmp_path, monkeypatch, capsys):
    """A hand-built MLflow store, the documented command, the answer on stdout and in report.md's decision."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("decide", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"colq.role": "sweep"}, run_name="sweep").info.run_id
    for p in scenario():
        rid = _log_point(client, exp, tmp_path, p, parent, eval_hash=f"ev-{p.model}")
        client.set_tag(rid, "colq.device_name", H200)
    client.set_terminated(parent, "FINISHED")
    out = tmp_path / "report"
    argv = ["--name", "decide", "--tracking-uri", uri, "--out", str(out), "--no-log", "--n-boot", "200"]
    assert cli_main([*argv, "--max-memory-gb", "1.5", "--max-loss-pct", "1"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("Within memory ≤ 1.5 GB and loss ≤ 1% of its original: big / ")
    md = (out / "report.md").read_text()
    assert "### Decision" in md and "**Within memory ≤ 1.5 GB and loss ≤ 1% of its original: `big / " in md
    rows = {r["Configuration"]: r for r in table_after(md, "## Across models: the frontier and the decision")}
    assert len(rows) == 6 and sum(r["Status"] == "**frontier**" for r in rows.values()) == 4
    assert (out / "performance_frontier.png").stat().st_size > 10_000
    assert cli_main([*argv, "--no-plots", "--min-ndcg", "0.99"]) == 0
    assert "No configuration satisfies avg NDCG@5 ≥ 0.99" in capsys.readouterr().out
    for bad in (["--max-loss-pct", "-1"], ["--pages", "0"], ["--min-ndcg", "2"]):
        assert cli_main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("colq_sweep.report: --"), err


def test_a_bad_budget_is_one_line_as_typed(tmp_path):
    """`python -m colq_sweep.report ... --max-memory-gb -8`: one line naming the option, exit 2, before any store is
    opened (there is none here)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "colq_sweep.report", "--name", "x", "--outputs-dir", str(tmp_path),
                           "--max-memory-gb", "-8"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "colq_sweep.report: --max-memory-gb must be a number >= 0, got -8.0"
    assert not (tmp_path / "mlflow.db").exists()


def test_a_point_beaten_only_off_the_frontier_is_still_related():
    """Dominance with a 10 % speed tolerance is not transitive: A (speed 10) beats B (10.5) beats C (11.5), but A is
    'slower' than C. C is beaten by B alone, which is off the frontier: the frontier used to crash on it (an empty
    min(), seen once in a `make demo` whose measured speeds fell that way)."""
    from types import SimpleNamespace

    from colq_sweep.report.frontier import _pareto

    def cand(name: str, q: float, speed: float):
        return SimpleNamespace(name=name, avg=q, memory_bytes=1e6, pages_per_s=speed, status="", relation=None,
                               relation_diff=None)  # fmt: skip

    a, b, c = cand("A", 0.80, 10.0), cand("B", 0.79, 10.5), cand("C", 0.78, 11.5)
    ca = SimpleNamespace(candidates=[a, b, c], speed_device="GPU",
                         diff=lambda x, y: (x.avg - y.avg, x.avg - y.avg - 0.001, x.avg - y.avg + 0.001))  # fmt: skip
    _pareto(ca)
    assert (a.status, b.status, c.status) == ("frontier", "dominated", "dominated")
    assert b.relation is a and c.relation is b and c.relation_diff[0] == pytest.approx(0.01)

