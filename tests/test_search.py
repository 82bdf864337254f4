"""Search instead of grids (colq_sweep/search/, hydra_plugins/colq_sweep_plugins/search_sweeper.py): the search space
grammar, the cost prediction against a real build, the tolerance decision, the study's resume rules, the refusals
as typed on the command line, and both searches end to end (the tolerance search killed mid-way and rerun; the
Optuna study on two CPU slots, resumed to more trials), each read back from MLflow and the report."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from colq_sweep import contract as R
from colq_sweep.config.checks import ConfigError
from colq_sweep.search.cost import Cost
from colq_sweep.search.space import parse_space
from colq_sweep.search.tolerance import Candidate, SearchSpec, answer, decide
from tests.test_sweep import ROOT, command, environment, store

RTN = ["quant.algorithms=[rtn]"]  # no calibration, no tuning: seconds per candidate on the fixture


def space(*overrides: str):
    return parse_space(OverridesParser.create().parse_overrides(list(overrides)))


# ------------------------------------------------------------------------------------------------ the space


def test_the_space_reads_hydra_optuna_sweepers_syntax():
    s = space("quant.scheme=choice(W2A16,W4A16)", "quant.group_size=32,128", "iters=int(interval(10,1000))",
              "quant.lr=tag(log,interval(1e-4,1e-2))", "nsamples=range(8,33,8)", "experiment=demo", "quant.algorithms=[rtn]")  # fmt: skip
    kinds = {d.name: (d.kind, d.corners()) for d in s.dims}
    assert kinds == {"quant.scheme": ("choice", ("W2A16", "W4A16")), "quant.group_size": ("choice", (32, 128)),
                     "iters": ("int", (10, 1000)), "quant.lr": ("float", (1e-4, 1e-2)), "nsamples": ("int", (8, 32))}  # fmt: skip
    assert s.fixed == ("experiment=demo", "quant.algorithms=[rtn]") and s.dims[3].log and s.dims[4].step == 8
    assert s.size is None and space("a=1,2,3", "b=range(1,4)").size == 9
    params = {"quant.scheme": "W4A16", "quant.group_size": 32, "iters": 17, "quant.lr": 0.001, "nsamples": 16}
    assert s.overrides(params)[2:] == ["quant.scheme=W4A16", "quant.group_size=32", "iters=17", "quant.lr=0.001", "nsamples=16"]
    corners, full = s.corners()
    assert full and len(corners) == 32 and ["experiment=demo", "quant.algorithms=[rtn]", "quant.scheme=W2A16",
                                             "quant.group_size=32", "iters=10", "quant.lr=0.0001", "nsamples=8"] in corners  # fmt: skip
    lists = space("quant.algorithms=choice([rtn],[awq,rtn])").dims[0]
    assert lists.values == ("[rtn]", "[awq,rtn]") and lists.text("[awq,rtn]") == "[awq,rtn]"


def test_a_large_space_is_checked_one_value_at_a_time():
    s = space(*(f"k{i}=1,2,3,4" for i in range(5)))  # 1024 combinations > MAX_CORNERS
    corners, full = s.corners()
    assert not full and len(corners) == 20 and corners[0] == ["k0=1", "k1=1", "k2=1", "k3=1", "k4=1"]
    assert ["k0=1", "k1=1", "k2=4", "k3=1", "k4=1"] in corners


@pytest.mark.parametrize("override, words", [
    ("a=shuffle(1,2)", "shuffle() has no meaning"),
    ("a=tag(log,interval(0,1))", "a log interval needs low > 0"),
    ("a=interval(2,1)", "needs low < high"),
    ("a=range(5,5)", "the range is empty"),
    ("a=range(0.5,2)", "range(start, stop[, step]) of integers"),
    ("a=choice(1,1)", "listed twice"),
    ("a=choice(true,1)", "compare equal"),
    ("a=tag(log,range(1,9))", "applies to interval"),
])  # fmt: skip
def test_a_space_that_cannot_be_searched_is_one_line(override, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        space(override)
    with pytest.raises(ConfigError, match="searched twice"):
        space("a=1,2", "a=choice(3,4)")


# ------------------------------------------------------------------------------------------------ costs


def test_the_cost_orders_schemes_groups_vision_and_index(fixture_paths):
    from colq_sweep.config.specs import IndexSpec, QuantSpec
    from colq_sweep.quantize.methods.autoround.spec import AutoRoundSpec
    from colq_sweep.search.cost import checkpoint_shapes
    from tests.helpers import make_point

    headers, dim = checkpoint_shapes(make_point(fixture_paths, fixture_paths.root.parent))
    assert dim == 32 and headers["vlm.model.language_model.layers.0.mlp.down_proj.weight"]["shape"] == [128, 256]

    def predict(quant, index, vectors, calib_tokens=0.0):  # on the fixture's headers
        from colq_sweep.search.cost import predict as real

        return real(quant, headers, index, vectors, dim, calib_tokens=calib_tokens)

    def q(scheme: str = "W4A16", **kw):
        return AutoRoundSpec.from_config({"scheme": scheme, "format": "auto", **kw}, {"seqlen": 64, "nsamples": 8,
                                                                                      "batch_size": 4, "iters": 40})  # fmt: skip

    w = {s: predict(q(s), IndexSpec(), None).weights_bytes for s in ("W2A16", "W3A16", "W4A16", "W8A16")}
    base = predict(QuantSpec(), IndexSpec(), None).weights_bytes
    assert w["W2A16"] < w["W3A16"] < w["W4A16"] < w["W8A16"] < base
    # 294,912 decoder weights at 4 bits + one fp16 scale and a 4-bit zero per 128 weights
    assert base - w["W4A16"] == pytest.approx(294912 * 2 - (294912 / 2 + 294912 / 128 * 2.5))
    assert predict(q("W4A16G32"), IndexSpec(), None).weights_bytes > w["W4A16"]
    assert predict(q(vision=True), IndexSpec(), None).weights_bytes < w["W4A16"]
    index = {(k, d): predict(q(), IndexSpec(pool_factor=k, dtype=d), 4152.0).index_bytes
             for k, d in ((1, "bf16"), (1, "int8"), (1, "binary"), (2, "bf16"))}  # fmt: skip
    # the fixture's 32-d vectors: 64 bytes in bf16, 32 + a 2-byte scale in int8, 4 as sign bits; pooling halves them
    assert index == {(1, "bf16"): 4152 * 64, (1, "int8"): 4152 * 34, (1, "binary"): 4152 * 4, (2, "bf16"): 2076 * 64}
    work = [predict(q(algorithms=a), IndexSpec(), None, calib_tokens=512.0).tuning_work
            for a in (["rtn"], ["opt_rtn"], ["signround"], ["awq", "signround"])]  # fmt: skip
    assert work == [0, 512 * 294912, 40 * 512 * 294912, 41 * 512 * 294912]


# ------------------------------------------------------------------------------------------------ the decision


def cand(num: int, loss: float | None, hi: float | None = None, status: str = "FINISHED") -> Candidate:
    c = Candidate(num=num, overrides=f"quant.scheme=W{num}A16", model="tiny", label=f"w{num}", cost=Cost(num * 1e6, None, 0))
    if status != "NOT RUN":
        metrics = {} if loss is None else {R.DELTA5_PCT_ALL: -loss, R.TOTAL_BYTES: num * 1e6 + 5}
        c.record({"status": status, "run_id": f"r{num}", "metrics": metrics, "error": None if loss is not None else "boom"},
                 None if hi is None else {"pct_lo": -hi})  # fmt: skip
    return c


def test_the_first_candidate_within_the_tolerance_is_chosen_and_the_interval_can_require_more():
    cands = [cand(2, 9.0, 12.0), cand(3, 0.8, 1.6), cand(4, 0.2, 0.7), cand(8, None, status="NOT RUN")]
    point = decide(cands, SearchSpec(max_loss_pct=1.0))
    assert point.num == 3 and cands[0].verdict == "fails: loss 9.00 % > 1 %, 95 % upper 12.00 %"
    assert cands[2].verdict.startswith("passes") and cands[3].verdict == "not needed: a cheaper candidate passed"
    strict = SearchSpec(max_loss_pct=1.0, criterion="interval")
    assert decide(cands, strict).num == 4 and "its 95 % upper end 1.60 % > 1 %" in cands[1].verdict
    assert answer(cands, strict).startswith("Chosen: #4 tiny w4 (quant.scheme=W4A16), the cheapest by bytes")
    assert cands[2].measured_bytes == 4e6 + 5  # the checkpoint as built (no index in the prediction)


def test_a_failed_cheaper_candidate_makes_the_answer_conditional_and_none_passing_says_so():
    cands = [cand(2, None, status="FAILED"), cand(3, 0.5, 0.9)]
    assert decide(cands, SearchSpec()).num == 3 and cands[0].verdict == "fails: failed: boom"
    assert "Conditional: cheaper candidate(s) #2 failed to run" in answer(cands, SearchSpec())
    none = [cand(2, 9.0, 12.0), cand(3, 4.0, 6.0)]
    assert decide(none, SearchSpec()) is None
    assert answer(none, SearchSpec()) == ("No candidate is within 1 % (its loss at most that): the least loss was "
                                          "4.00 % (#3 w3).")  # fmt: skip


@pytest.mark.parametrize("bad, field", [({"max_loss_pct": -1}, "search.max_loss_pct"), ({"max_loss_pct": 100}, "search.max_loss_pct"),
                                        ({"criterion": "ci"}, "search.criterion"), ({"cost": "time"}, "search.cost"),
                                        ({"max_loss": 1}, "search.max_loss")])  # fmt: skip
def test_search_settings_are_checked(bad, field):
    with pytest.raises(ConfigError) as err:
        SearchSpec.from_config(bad)
    assert err.value.field == field


def test_the_point_interval_is_the_documented_paired_bootstrap():
    """An independent implementation of report/stats.py's protocol for one configuration and its original."""
    from colq_sweep.report.stats import point_interval

    rng = np.random.default_rng(3)
    entries, base_entries, pq, base_pq, arrays = [], [], [], [], {}
    for task, bench in (("B", "v1"), ("A", "v2")):
        n = 30
        b = rng.uniform(0.3, 0.9, n)
        q = np.clip(b - rng.uniform(0, 0.1, n), 0, 1)
        arrays[task] = (q, b)
        for vals, rows, ents in ((q, pq, entries), (b, base_pq, base_entries)):
            ents.append({"task": task, "subset": "default", "benchmark": bench})
            rows += [{"task": task, "subset": "default", "query_id": f"{i:02d}", "ndcg_at_5": v} for i, v in enumerate(vals)]
    got = point_interval(entries, pq, base_entries, base_pq, n_boot=500, seed=7)
    r = np.random.default_rng(7)
    reps = np.zeros((500, 2))
    for task in ("B", "A"):  # report order: benchmark v1 (task B) before v2 (task A)
        q, b = arrays[task]
        idx = r.integers(0, 30, size=(500, 30))
        reps += np.stack([q[idx].mean(axis=1), b[idx].mean(axis=1)], axis=1) / 2
    pct = 100 * (reps[:, 0] - reps[:, 1]) / reps[:, 1]
    q_avg, b_avg = np.mean([arrays[t][0].mean() for t in arrays]), np.mean([arrays[t][1].mean() for t in arrays])
    assert got["pct"] == pytest.approx(100 * (q_avg - b_avg) / b_avg)
    assert (got["pct_lo"], got["pct_hi"]) == pytest.approx(tuple(np.percentile(pct, [2.5, 97.5])))
    assert got["delta_lo"] < got["delta"] < got["delta_hi"] < 0


# ------------------------------------------------------------------------------------------------ the study


def test_the_study_resumes_interrupted_trials_and_counts_only_real_ones(tmp_path):
    from optuna.trial import TrialState

    from colq_sweep.search.study import (
        ERROR,
        OWNER,
        SAME_AS,
        StudySettings,
        best_numbers,
        counted,
        open_study,
        owner,
        recover_interrupted,
        tried_configs,
    )

    settings = StudySettings.from_config({"objectives": ["ndcg5", "bytes"], "n_trials": 4})
    assert settings.sampler_name == "nsga2"
    url, text = f"sqlite:///{tmp_path / 'optuna.db'}", "g in {32, 64, 128}"
    study = open_study(settings, url, "s", text)
    dists = {d.name: d.distribution() for d in space("g=choice(32,64,128)").dims}
    a = study.ask(dists)
    study.tell(a, [0.8, 100.0])
    b = study.enqueue_trial({"g": 64 if a.params["g"] != 64 else 128}) or study.ask(dists)
    b.set_user_attr(OWNER, {"host": "elsewhere", "pid": 1, "start": "0"})  # failed in an earlier sweep
    b.set_user_attr(ERROR, "boom")
    study.tell(b, state=TrialState.FAIL)
    c = study.ask(dists)  # left RUNNING: the sweep was killed here
    mine = study.ask(dists)  # RUNNING and owned by a live process on this host (another sweep of the study)
    mine.set_user_attr(OWNER, owner())
    again = open_study(settings, url, "s", text)
    assert recover_interrupted(again) == [c.number] and counted(again) == 2  # the interrupted one does not count
    queued = again.ask(dists)
    assert queued.params == c.params  # its parameters run first
    again.tell(queued, [0.7, 50.0])
    tried = config(tried_configs(again))
    assert b.params["g"] != a.params["g"] and {a.params["g"], queued.params["g"]} <= tried
    assert (b.params["g"] in tried) == (b.params["g"] == queued.params["g"])  # failed in an earlier sweep: retried
    same = again.ask(dists)
    same.set_user_attr(SAME_AS, a.number)
    again.tell(same, [0.8, 100.0])
    assert counted(again) == 3  # the repeat is not counted
    assert set(best_numbers(again)) <= {a.number, queued.number} and best_numbers(again)  # repeats map to their first


def test_a_resumed_sampler_does_not_replay_its_samples():
    import optuna
    from optuna.distributions import IntDistribution

    from colq_sweep.search.study import StudySettings

    def first(offset: int) -> list[int]:
        study = optuna.create_study(sampler=StudySettings.from_config({"sampler": "random"}).make_sampler(offset))
        return [study.ask({"x": IntDistribution(0, 10**6)}).params["x"] for _ in range(3)]

    assert first(0) == first(0) and first(3) != first(0)


def config(tried: dict) -> set:
    return {int(dict(k)["g"]) for k in tried}


def test_a_study_made_for_something_else_or_an_unusable_storage_is_one_line(tmp_path):
    from colq_sweep.search.study import StudySettings, open_study

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    one = StudySettings.from_config({"objectives": ["ndcg5"]})
    open_study(one, url, "s", "g in {32, 128}")
    with pytest.raises(ConfigError, match="was made for 1 objective"):
        open_study(StudySettings.from_config({"objectives": ["ndcg5", "bytes"]}), url, "s", "g in {32, 128}")
    with pytest.raises(ConfigError, match="searches another space"):
        open_study(one, url, "s", "g in {32, 64}")
    for bad in ("foo://nowhere", "sqlite:////proc/colq/optuna.db"):
        with pytest.raises(ConfigError) as err:
            open_study(one, bad, "s", "g in {32, 128}")
        assert err.value.field == "hydra.sweeper.storage" and "cannot be opened" in str(err.value)


@pytest.mark.parametrize("bad, field", [({"n_trials": 0}, "hydra.sweeper.n_trials"), ({"objectives": ["speed"]}, "hydra.sweeper.objectives"),
                                        ({"objectives": ["ndcg5", "ndcg5"]}, "hydra.sweeper.objectives"),
                                        ({"sampler": "cmaes"}, "hydra.sweeper.sampler"), ({"n_jobs": -1}, "hydra.sweeper.n_jobs")])  # fmt: skip
def test_study_settings_are_checked(bad, field):
    from colq_sweep.search.study import StudySettings

    with pytest.raises(ConfigError) as err:
        StudySettings.from_config(bad)
    assert err.value.field == field


# ------------------------------------------------------------------------------------------------ as typed


def layout(outputs: Path, fixtures: Path) -> None:
    """outputs/fixtures -> the session's fixtures (what experiment=demo's paths interpolate)."""
    outputs.mkdir(parents=True, exist_ok=True)
    if not (outputs / "fixtures").exists():
        (outputs / "fixtures").symlink_to(fixtures)


def cli(outputs: Path, fixtures: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m colq_sweep -m experiment=demo outputs_dir=<outputs> ...` as typed, the fixtures under outputs/."""
    layout(outputs, fixtures)
    return subprocess.run([*command(outputs, fixtures)[:3], "-m", "experiment=demo", f"outputs_dir={outputs}", *args],
                          cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize("args, line", [
    (["hydra/sweeper=colq-optuna", "quant.group_size=choice(32,100)"],
     "/outputs quant.group_size=100): config error: quant.group_size=100: allowed: -1, 32, 64, 128, 256 [nothing was launched]"),
    (["hydra/sweeper=colq-tolerance", "search.max_loss_pct=-1", "quant.scheme=W2A16,W4A16"],
     "colq_sweep: config error: search.max_loss_pct=-1: the tolerated loss in percent of the original's avg NDCG@5: "
     "a number from 0 (no loss) to below 100, e.g. search.max_loss_pct=1 [nothing was launched]"),
    (["search.max_loss_pct=3", "quant.scheme=W2A16,W4A16"],
     "colq_sweep: config error: search.max_loss_pct=3: search.* is read only by a tolerance search; add "
     "hydra/sweeper=colq-tolerance (or drop it) [nothing was launched]"),
    (["hydra/sweeper=colq-tolerance", "search.max_loss_pct=1,3", "quant.scheme=W2A16,W4A16"],
     "colq_sweep: config error: search.max_loss_pct='1,3': a search setting takes one value: run one search per tolerance "
     "[nothing was launched]"),
    (["hydra/sweeper=colq-optuna", "hydra.sweeper.storage=foo://nowhere", "quant.scheme=choice(W2A16,W4A16)"],
     "colq_sweep: config error: hydra.sweeper.storage='foo://nowhere': the Optuna storage cannot be opened: "
     "NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:foo [nothing was launched]"),
    (["hydra/sweeper=colq-tolerance", "iters=interval(1,10)"],
     "colq_sweep: config error: iters='interval(1,10)': a tolerance search tries a list of candidates (a,b,c or "
     "choice(a,b,c)); for ranges use hydra/sweeper=colq-optuna [nothing was launched]"),
])  # fmt: skip
def test_a_bad_search_exits_2_with_one_line_before_any_job(args, line, tmp_path, fixture_paths):
    outputs = tmp_path / "outputs"
    proc = cli(outputs, fixture_paths.root, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].endswith(line), proc.stderr
    assert not (outputs / "mlflow.db").exists() and not (outputs / "optuna.db").exists() and not (outputs / "hydra").exists()


# ------------------------------------------------------------------------------------------------ end to end


def mlflow_runs(outputs: Path, role: str) -> list:
    from colq_sweep.track.store import Tracker

    return Tracker(store(outputs), "demo").find(f"tags.`colq.role` = '{role}'", status=None)


@pytest.mark.slow
def test_the_tolerance_search_killed_mid_way_resumes_and_chooses(tmp_path, fixture_paths):
    """W2 < W4 < W8 by predicted bytes, RTN: killed (SIGKILL, the whole process group) once the first candidate has
    finished; the rerun reuses it, tries the next ones in order and stops at the first within 1 %; the parent run,
    the candidates' tags and the report say which was chosen and why the others were not."""
    outputs = tmp_path / "outputs"
    args = ["hydra/sweeper=colq-tolerance", "search.max_loss_pct=1", "search.criterion=interval", *RTN,
            "quant.scheme=W8A16,W2A16,W4A16"]  # fmt: skip
    layout(outputs, fixture_paths.root)
    log = tmp_path / "first.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([*command(outputs, fixture_paths.root)[:3], "-m", "experiment=demo", f"outputs_dir={outputs}", *args],
                                cwd=ROOT, env=environment(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 300
        while not list(outputs.glob("hydra/demo/*/0/colq_status.json")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # candidate #1 has started
        import os

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    first = log.read_text()
    assert "#0 : " in first and "quant.scheme=W2A16" in first.split("#0 : ")[1].splitlines()[0]  # the cheapest first
    again = cli(outputs, fixture_paths.root, *args)
    err = again.stderr
    assert again.returncode == 0, err[-4000:]
    summary = err[err.index("colq_sweep summary"):]
    rows = [ln.split() for ln in summary.splitlines()[3:] if ln[:1].isdigit()]
    assert [(r[0], r[3], r[4]) for r in rows] == [("0", "w2g128", "SKIPPED"), ("1", "w4g128", "FINISHED"),
                                                  ("2", "w8g128", "FINISHED")], summary  # fmt: skip
    search = err[err.index("colq_sweep tolerance search"):]
    assert "#0   quant.scheme=W2A16" in search and "#1   quant.scheme=W4A16" in search and "#2   quant.scheme=W8A16" in search
    assert "fails: loss" in search and "CHOSEN: loss" in search.split("#2 ")[1]
    assert "Chosen: #2 tiny rtn w8g128 (quant.scheme=W8A16), the cheapest by bytes" in search
    parents = [r for r in mlflow_runs(outputs, "sweep") if r.data.tags.get("colq.search.kind") == "tolerance"]
    newest = max(parents, key=lambda r: r.info.start_time)
    assert newest.info.status == "FINISHED" and newest.data.params["search.max_loss_pct"] == "1"
    assert newest.data.tags["mlflow.note.content"].startswith("Chosen: #2") and newest.data.metrics["sweep/points"] == 3
    quantized = {r.data.params["quant.scheme"]: r for r in mlflow_runs(outputs, "quantized") if r.info.status == "FINISHED"}
    assert quantized["W8A16"].data.tags["colq.search.chosen"] == "true"
    assert quantized["W2A16"].data.tags["colq.search.chosen"] == "false" and quantized["W2A16"].data.tags["colq.search.verdict"].startswith("fails")
    from colq_sweep.track.store import Tracker

    record = json.loads(Tracker(store(outputs), "demo").download(newest.info.run_id, "search/search.json", tmp_path).read_text())
    built = {c["overrides"]: c for c in record["candidates"]}
    for c in built.values():  # the prediction is the checkpoint's weight files within 2 %
        run = quantized[c["overrides"].split("=")[1]]
        assert c["cost"]["weights_bytes"] == pytest.approx(run.data.metrics["size/weights_bytes"], rel=0.02)
    assert record["chosen"] == 2 and built["quant.scheme=W8A16"]["loss_hi_pct"] <= 1
    from colq_sweep.report.build import build_report

    report = build_report("demo", outputs_dir=outputs, plots=False).read_text()
    section = report[report.index("### Tolerance search"):]
    assert "Tolerance 1 % loss of avg NDCG@5 (point estimate and 95 % upper end)" in section
    assert "| #2 | quant.scheme=W8A16 | rtn w8g128 |" in section and "**chosen**" in section.split("| #2 |")[1].splitlines()[0]


@pytest.mark.slow
def test_the_optuna_study_runs_on_two_slots_and_resumes_to_more_trials(tmp_path, fixture_paths):
    """Two objectives (NSGA-II) on the gpu-pool launcher with two CPU slots, 2 trials; the same command with
    n_trials=3 resumes the study (sqlite beside the MLflow store) and runs only what is new; a point that fails is a
    FAIL trial with its error (and the sweep exits 1), never a zero."""
    outputs = tmp_path / "outputs"
    args = ["hydra/sweeper=colq-optuna", "hydra.sweeper.objectives=[ndcg5,bytes]", "hydra.sweeper.n_jobs=2",
            "hydra/launcher=gpu-pool", "hydra.launcher.devices=cpu", "hydra.launcher.max_parallel=2",
            "hydra.launcher.share_idle=false", *RTN, "quant.scheme=choice(W2A16,W4A16,W8A16)",
            "quant.group_size=choice(32,128)"]  # fmt: skip
    first = cli(outputs, fixture_paths.root, "hydra.sweeper.n_trials=2", *args)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (outputs / "optuna.db").is_file() and "colq_sweep optuna search" in first.stderr
    second = cli(outputs, fixture_paths.root, "hydra.sweeper.n_trials=3", *args)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "2 trial(s) already done, 1 to run" in second.stderr
    import optuna

    studies = optuna.get_all_study_summaries(f"sqlite:///{outputs / 'optuna.db'}")
    assert len(studies) == 1 and studies[0].study_name.startswith("demo-")
    study = optuna.load_study(study_name=studies[0].study_name, storage=f"sqlite:///{outputs / 'optuna.db'}")
    real = [t for t in study.trials if "colq_same_as" not in t.user_attrs]
    assert len(real) == 3 and all(t.state.name == "COMPLETE" for t in real)
    assert len({tuple(sorted(t.params.items())) for t in real}) == 3  # a repeat is told, never run again
    for t in real:
        run = next(r for r in mlflow_runs(outputs, "quantized") if r.info.run_id == t.user_attrs["colq_run_id"])
        assert t.values[0] == pytest.approx(run.data.metrics["ndcg5/avg_all"])
        assert t.values[1] == run.data.metrics["size/total_bytes"] + run.data.metrics["index/total_bytes"]
        assert run.data.params["quant.scheme"] == t.params["quant.scheme"]
    pareto = {t.user_attrs.get("colq_same_as", t.number) for t in study.best_trials}  # a repeat is its first trial
    tagged = {r.info.run_id for r in mlflow_runs(outputs, "quantized") if r.data.tags.get("colq.search.best") == "true"}
    assert tagged == {t.user_attrs["colq_run_id"] for t in real if t.number in pareto}
    parent = max((r for r in mlflow_runs(outputs, "sweep") if r.data.tags.get("colq.search.kind") == "optuna"),
                 key=lambda r: r.info.start_time)  # fmt: skip
    assert parent.data.params["search.objectives"] == "ndcg5,bytes" and parent.data.params["search.sampler"] == "nsga2"
    assert parent.data.tags["mlflow.note.content"].startswith("Pareto set (")
    from colq_sweep.report.build import build_report

    report = build_report("demo", outputs_dir=outputs, plots=False).read_text()
    section = report[report.index(f"### Optuna study `{studies[0].study_name}`"):]
    assert section.count("**Pareto**") == len(pareto) and "3 finished and 0 failed trial(s) of n_trials=3" in section
    failing = cli(outputs, fixture_paths.root, "hydra.sweeper.n_trials=1", "fail_point=true", *args)
    assert failing.returncode == 1 and "1 of 1 sweep points failed" in failing.stderr, failing.stderr[-3000:]
    other = next(n for n in (x.study_name for x in optuna.get_all_study_summaries(f"sqlite:///{outputs / 'optuna.db'}"))
                 if n != studies[0].study_name)  # fail_point=true is a fixed override: another study  # fmt: skip
    (trial,) = optuna.load_study(study_name=other, storage=f"sqlite:///{outputs / 'optuna.db'}").trials
    assert trial.state.name == "FAIL" and trial.values is None and "fail_point" in trial.user_attrs["colq_error"]
