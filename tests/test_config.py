"""The Hydra config tree composes for every option and experiment, and bad values stop at the edge."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from colq_sweep.config import ConfigError, validate
from colq_sweep.pipeline.job import validate_or_exit
from colq_sweep.tasks import CATALOGUE, DATASETS, FIXTURE_TASK

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(overrides: list[str], outputs_dir: Path | None = None):
    extra = [f"outputs_dir={outputs_dir}"] if outputs_dir else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides + extra, return_hydra_config=True)


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("quant", options("quant"))
def test_every_model_and_quant_option_validates(model, quant, fixture_outputs_dir):
    point = validate(composed([f"model={model}", f"quant={quant}", "calib=fixture"], fixture_outputs_dir))
    assert point.model.name == model
    assert point.quant.enabled == (quant != "none")


@pytest.mark.parametrize("calib", options("calib"))
def test_every_calib_option_validates(calib, fixture_outputs_dir, fixture_paths):
    extra = [f"calib.path={fixture_paths.calibration}"] if calib == "local" else []
    point = validate(composed([f"calib={calib}"] + extra, fixture_outputs_dir))
    kind = {"pages": "pages", "mixed": "mixed"}.get(calib, "text")
    assert point.calib.kind == kind
    if kind != "pages":  # the text part: pile10k's (mixed takes it too), or a .jsonl
        assert point.calib.source == ("hub" if calib in ("pile10k", "mixed") else "jsonl")
    if kind != "text":  # the pinned Hub page source
        assert point.calib.pages.dataset == "vidore/colpali_train_set" and len(point.calib.pages.revision) == 40


@pytest.mark.parametrize(
    "option, n_tasks, n_entries",
    [("vidore", 22, 71), ("vidore-v1", 10, 10), ("vidore-v2", 4, 13), ("vidore-v3", 8, 48), ("fixture", 1, 2)],
)
def test_eval_options_select_the_right_entries(option, n_tasks, n_entries, fixture_outputs_dir):
    point = validate(composed([f"eval={option}"], fixture_outputs_dir))
    assert len(point.eval.tasks) == n_tasks
    assert len(point.eval.entries()) == n_entries
    if option == "vidore-v3":  # the two private v3 tasks are left out, each with a one-line notice
        assert len(point.eval.notices) == 2 and all("private" in n for n in point.eval.notices)


def test_language_filter_keeps_only_those_subsets(fixture_outputs_dir):
    point = validate(composed(["eval=vidore", "eval.languages=[en]"], fixture_outputs_dir))
    entries = point.eval.entries()
    # 10 v1 + ESGReportsHL + 3 v2 english subsets + 8 v3 english subsets
    assert len(entries) == 22
    assert {s for _, s in entries} == {"default", "english"}


def test_demo_experiment(fixture_outputs_dir):
    cfg = composed(["experiment=demo"], fixture_outputs_dir)
    point = validate(cfg)
    assert (point.model.name, point.eval.tasks, point.device) == ("tiny", (FIXTURE_TASK,), "cpu")
    assert point.calib.source == "jsonl" and point.quant.iters <= 50 and point.quant.nsamples <= 16
    # one point by itself: the axes come from the command line (`make demo` gives seqlen=32,64,128), so a methods
    # matrix on it (`quant.algorithms=[rtn],[signround] quant.scheme=W4A16,W8A16`) is 4 points, not 12
    assert not cfg.hydra.sweeper.params and point.quant.seqlen == 64
    assert "AXES ?= seqlen=32,64,128" in (ROOT / "Makefile").read_text()


def test_seed_report_matrix_matches_the_study(fixture_outputs_dir):
    """Every study point composes with the study's own settings, as shipped in the reference data (which cites the
    study's reports): nsamples / batch size per model and seqlen, iters, bits, group, sym, pile-10k, and the model
    revision behind its published original numbers."""
    from colq_sweep.report.published import settings

    cfg = composed(["experiment=seed-report"], fixture_outputs_dir)
    studies = str(cfg.hydra.sweeper.params["+study"]).split(",")
    ref = settings().set_index(["model", "seqlen"])
    assert sorted(studies) == sorted(f"{m}-{sl}" for m, sl in ref.index)
    assert ("8b", "512") in ref.index and ref.loc[("8b", "512"), ["nsamples", "batch_size"]].tolist() == ["300", "150"]
    assert ref.loc[("8b", "1024"), ["nsamples", "batch_size"]].tolist() == ["500", "50"]
    for study in studies:
        size, seqlen = study.split("-")
        want = ref.loc[(size, seqlen)]
        point = validate(composed(["experiment=seed-report", f"+study={study}"], fixture_outputs_dir))
        assert point.model.name == f"colqwen3-{size}" and point.model.id == want["model_id"]
        assert point.model.revision == want["base_revision"]
        assert (point.quant.seqlen, point.quant.nsamples, point.quant.batch_size, point.quant.iters) == (
            int(seqlen), int(want["nsamples"]), int(want["batch_size"]), int(want["iters"]))
        assert (point.quant.bits, point.quant.group_size, point.quant.sym) == (4, 128, True)
        assert point.calib.dataset == want["calibration"] and len(point.eval.entries()) == 71
    for f in (ROOT / "conf" / "study").glob("*.yaml"):  # every number carries its source
        numbers = [ln for ln in f.read_text().splitlines() if re.match(r"^\s*(seqlen|nsamples|batch_size|revision):", ln)]
        assert numbers and all("#" in ln or "revision" in ln for ln in numbers), f


def test_study_4b_preset_is_exactly_the_reports_41_entries(fixture_outputs_dir):
    from colq_sweep.report.published import published

    point = validate(composed(["eval=study-4b"], fixture_outputs_dir))
    assert sorted(point.eval.entries()) == sorted(zip(published("4b")["task"], published("4b")["subset"], strict=True))
    assert len(point.eval.entries()) == 41
    assert len(published("8b")) == 71 and sorted(
        zip(published("8b")["task"], published("8b")["subset"], strict=True)
    ) == sorted(validate(composed(["eval=vidore"], fixture_outputs_dir)).eval.entries())


def test_catalogue_matches_mteb():
    mteb = pytest.importorskip("mteb")
    for bench in ("ViDoRe(v1)", "ViDoRe(v2)", "ViDoRe(v3)"):
        for task in mteb.get_benchmark(bench).tasks:
            info = CATALOGUE[task.metadata.name]
            assert info.benchmark == bench
            assert info.main_score == task.metadata.main_score
            langs = task.metadata.eval_langs
            assert info.subsets == (tuple(langs) if isinstance(langs, dict) else ("default",))
            assert info.public == task.metadata.is_public
            assert DATASETS[task.metadata.name] == (task.metadata.dataset["path"], task.metadata.dataset["revision"])


BAD = [
    (["quant.bits=5"], "quant.bits"),
    (["quant.bits=8"], "quant.bits"),  # scheme W4A16 says 4
    (["quant.group_size=100"], "quant.group_size"),
    (["seqlen=0"], "seqlen"),
    (["batch_size=-1"], "batch_size"),
    (["nsamples=0"], "nsamples"),
    (["iters=0"], "iters"),
    (["nsamples=4", "batch_size=8"], "nsamples"),
    (["nsamples=10", "batch_size=4"], "nsamples"),  # partial last calibration batch
    (["quant.scheme=W8A16", "quant.format=auto_awq"], "quant.format"),  # AWQ holds 4-bit only
    (["quant.scheme=W3A16", "quant.format=auto_awq"], "quant.format"),
    (["quant.algorithms=[nope]"], "quant.algorithms"),
    (["quant.algorithms=[hadamard,signround]"], "quant.algorithms"),  # a rotation: needs online transforms
    (["quant.algorithms=[awq]"], "quant.algorithms"),  # a preprocessor alone: no block algorithm
    (["quant.algorithms=[rtn,signround]"], "quant.algorithms"),  # two block algorithms
    (["quant.avg_bits=1"], "quant.avg_bits"),
    (["quant.recipe=fast"], "quant.recipe"),
    (["quant.scheme=W3A16", "quant.backend=ark"], "quant.backend"),  # ark has no 3-bit kernels
    (["quant.scheme=W4A16G32", "quant.group_size=64"], "quant.group_size"),
    (["quant.scheme=W4A8"], "quant.scheme"),
    (["quant.backend=cuda"], "quant.backend"),
    (["quant.compute=int8"], "quant.compute"),
    (["quant.backend=dequant", "quant.compute=auto"], "quant.compute"),  # only ark has an auto mode
    (["quant.sym=maybe"], "quant.sym"),
    (["eval.tasks=[VidoreNoSuchRetrieval]"], "eval.tasks"),
    (["eval.languages=[xx]"], "eval.languages"),
    (["eval=vidore-v1", "eval.languages=[fr]"], "eval.languages"),
    (["model.path=/no/such/dir"], "model.path"),
    (["calib=local", "calib.path=/no/such.jsonl"], "calib.path"),
    (["calib=local"], "calib.path"),  # mandatory ??? left unset
    (["model=colqwen3-8b", "model.revision=null"], "model.revision"),
    (["model=colqwen3-4b", "model.revision=main"], "model.revision"),
    (["device=gpu7"], "device"),
    (["+quant.bitz=4"], "quant.bitz"),
    (["model.dtype=int8"], "model.dtype"),
    (["eval=vidore", "eval.entries=[VidoreArxivQARetrieval/english]"], "eval.entries"),  # v1 tasks have `default`
    (["eval=vidore", "eval.entries=[NoSuchTask/default]"], "eval.entries"),
    (["eval=vidore-v1", "eval.entries=[Vidore3HrRetrieval/english]"], "eval.entries"),  # not among eval.tasks
    (["eval.preprocess_workers=-1"], "eval.preprocess_workers"),
    (["eval.preprocess_workers=many"], "eval.preprocess_workers"),
    (["eval.compile=maybe"], "eval.compile"),
    (["eval.preprocess_mode=fork"], "eval.preprocess_mode"),
]


@pytest.mark.parametrize("overrides, field", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_exits_2_with_one_line_naming_the_field(overrides, field, fixture_outputs_dir, capsys):
    cfg = composed(["experiment=demo"] + overrides, fixture_outputs_dir)
    with pytest.raises(SystemExit) as exc:
        validate_or_exit(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"colq_sweep: config error: {field}=")


def test_config_error_names_field_value_and_fix():
    err = ConfigError("seqlen", -5, "must be a positive integer")
    assert str(err) == "config error: seqlen=-5: must be a positive integer"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "colq_sweep", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_bad_seqlen_exits_2_with_one_line():
    proc = _cli("experiment=demo", "seqlen=-5")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["colq_sweep: config error: seqlen=-5: must be a positive integer"]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_prints_composed_config():
    proc = _cli("experiment=seed-report", "--cfg", "job", "--resolve")
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.name == "seed-report" and cfg.iters == 1000 and len(cfg.eval.tasks) == 22
    assert cfg.eval.selected.startswith("22 tasks, 71 entries: VidoreArxivQARetrieval/default,")
    assert cfg.eval.selected.count("/") == 71 and cfg.eval.entries is None


def test_entries_follow_the_language_filter(fixture_outputs_dir):
    cfg = composed(["eval=vidore-v3", "eval.languages=[en,fr]"], fixture_outputs_dir)
    assert cfg.eval.selected.startswith("8 tasks, 16 entries: ")  # the 2 private v3 tasks are not counted
