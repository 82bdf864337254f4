"""The surface the README promises, as a user types it: every key of its config reference and every option of every
config group goes through the command line's own checks (cli.check_overrides_or_exit: the overrides against the
config tree, outputs_dir and the tracking server), Hydra's composition and the job's validation (cli.validate_or_exit)
with a valid value (accepted) and with an invalid one (exit 2, one line naming the key). The README's tables and the
config tree must agree: a key or option documented but absent, or present but undocumented, fails.

In-process for speed; `test_the_harness_is_the_command_line` runs a few of the same cases through
`python -m colq_sweep` to show the harness says what the real command says."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHA = "6a32fb68598730bf5620fbf18d832c784235c59c"
ENV = {k: v for k, v in {**os.environ, "HF_HUB_OFFLINE": "1"}.items() if k != "MLFLOW_TRACKING_URI"}


# ------------------------------------------------------------------------------------------------ the README


def _reference() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Config reference"): text.index("**CPU numerics.**")]


def _rows(header: str) -> list[list[str]]:
    ref = _reference()
    start = ref.index(header)
    rows = []
    for line in ref[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def readme_top_keys() -> list[str]:
    return [_ticked(r[0])[0] for r in _rows("| key | default | meaning |")]


def readme_groups() -> dict[str, tuple[list[str], list[str]]]:
    """group -> (its options, its keys) as the README's group table lists them."""
    out = {}
    for r in _rows("| group | options | keys | notes |"):
        group = _ticked(r[0])[0]
        options = [o for o in _ticked(r[1]) if " " not in o]
        out[group] = (options, _ticked(r[2]))
    return out


def config_groups() -> dict[str, list[str]]:
    """group -> its option files (conf/<group>/*.yaml), the groups users choose from."""
    skip = {"hydra/job_logging", "hydra/hydra_logging"}  # the console's logging configs, not user choices
    out = {}
    for d in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = d.relative_to(CONF).as_posix()
        if group not in skip and list(d.glob("*.yaml")):
            out[group] = sorted(p.stem for p in d.glob("*.yaml"))
    return out


def composed_group_keys(group: str, options: list[str], base: list[str]) -> set[str]:
    """The keys the group's options put into the composed config (the encoder's: its own file's, within `eval`)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if group == "encoder":
        return {str(k) for o in options for k in OmegaConf.load(CONF / "encoder" / f"{o}.yaml")}
    keys: set[str] = set()
    encoder = composed_group_keys("encoder", ["default"], base)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for option in options:
            node = compose(config_name="config", overrides=base + [f"{group}={option}"])[group]
            keys |= {str(k) for k in node.keys()} - (encoder if group == "eval" else set())
    return keys


# ---------------------------------------------------------------------------------------------- the harness


def as_typed(args: list[str]) -> tuple[int, list[str]]:
    """What `python -m colq_sweep <args>` decides before any work: (exit code, stderr lines); 0: it would run.
    The command line's checks (cli.check_overrides_or_exit: its reading of the overrides composes the config as
    Hydra will), then the job's validation of that config (cli.validate_or_exit)."""
    from colq_sweep.cli import check_overrides_or_exit, validate_or_exit

    err = io.StringIO()
    try:
        with redirect_stderr(err):
            validate_or_exit(check_overrides_or_exit(args).config)
    except SystemExit as e:
        return int(e.code or 0), [ln for ln in err.getvalue().splitlines() if ln.strip()]
    return 0, [ln for ln in err.getvalue().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def env(fixture_paths, tmp_path_factory):
    fx = fixture_paths
    out = fx.root.parent
    base = ["experiment=demo", f"outputs_dir={out}"]
    return {"fx": fx, "base": base, "tmp": tmp_path_factory.mktemp("surface")}


def cases(fx, tmp: Path) -> dict[str, tuple[list[str], list[str], str]]:
    """key -> (overrides with a valid value, overrides with an invalid one, the field the refusal names), on top of
    `experiment=demo` with the fixtures."""
    hub_model = ["model.path=null", "model.id=TomoroAI/tomoro-colqwen3-embed-4b", f"model.revision={SHA}"]
    hub_calib = ["calib=pile10k"]
    w8 = ["quant.scheme=W8A16", "quant.bits=8", "quant.format=auto_round"]  # explicit, as the derived values are
    tol = ["-m", "hydra/sweeper=colq-tolerance"]  # search.* belongs to a tolerance search (a single run refuses it)
    return {
        "seqlen": (["seqlen=48"], ["seqlen=0"], "seqlen"),
        "batch_size": (["batch_size=2"], ["batch_size=0"], "batch_size"),
        "nsamples": (["nsamples=12"], ["nsamples=-1"], "nsamples"),
        "iters": (["iters=3"], ["iters=0"], "iters"),
        "seed": (["seed=1"], ["seed=-1"], "seed"),
        "name": (["name=other"], ["name=a b"], "name"),
        "outputs_dir": ([f"outputs_dir={tmp / 'o'}", f"model.path={fx.checkpoint}", f"calib.path={fx.calibration}",
                         f"eval.fixture_dir={fx.task}"], ["outputs_dir=/proc/colq"], "outputs_dir"),  # fmt: skip
        "device": (["device=cpu"], ["device=gpu"], "device"),
        "force": (["force=true"], ["force=maybe"], "force"),
        "tracking_uri": ([f"tracking_uri=sqlite:///{tmp}/m.db"], ["tracking_uri=mlflow.db"], "tracking_uri"),
        "fail_point": (["fail_point=true"], ["fail_point=maybe"], "fail_point"),
        "system_metrics": (["system_metrics=false"], ["system_metrics=sometimes"], "system_metrics"),
        "search.max_loss_pct": (tol + ["search.max_loss_pct=2.5"], tol + ["search.max_loss_pct=-1"], "search.max_loss_pct"),
        "search.criterion": (tol + ["search.criterion=interval"], tol + ["search.criterion=ci"], "search.criterion"),
        "search.cost": (tol + ["search.cost=quant_time"], ["search.cost=quant_time"], "search.cost"),  # not a search: refused
        "model.name": (["model.name=tiny2"], ["model.name=a b"], "model.name"),
        "model.id": (hub_model, ["model.id=TomoroAI/tomoro-colqwen3-embed-4b"], "model.path"),
        "model.revision": (hub_model, hub_model[:2] + ["model.revision=main"], "model.revision"),
        "model.path": ([f"model.path={fx.checkpoint}"], ["model.path=/nonexistent/ckpt"], "model.path"),
        "model.dtype": (["model.dtype=bfloat16"], ["model.dtype=int8"], "model.dtype"),
        "model.max_num_visual_tokens": (["model.max_num_visual_tokens=128"], ["model.max_num_visual_tokens=0"],
                                        "model.max_num_visual_tokens"),  # fmt: skip
        "quant.method": (["quant=none", "quant.method=none"], ["quant.method=nope"], "quant.method"),
        "quant.algorithms": (["quant.algorithms=[awq,signround]"], ["quant.algorithms=[nope]"], "quant.algorithms"),
        "quant.recipe": (["quant.recipe=light"], ["quant.recipe=fast"], "quant.recipe"),
        "quant.avg_bits": (["quant.avg_bits=null"], ["quant.avg_bits=1"], "quant.avg_bits"),
        "quant.scheme": (["quant.scheme=W8A16"], ["quant.scheme=W4A8"], "quant.scheme"),
        "quant.bits": (w8, ["quant.bits=5"], "quant.bits"),
        "quant.group_size": (["quant.group_size=64"], ["quant.group_size=100"], "quant.group_size"),
        "quant.sym": (["quant.sym=false"], ["quant.sym=maybe"], "quant.sym"),
        "quant.format": (["quant.format=auto_round"], ["quant.scheme=W3A16", "quant.format=auto_awq"], "quant.format"),
        "quant.lr": (["quant.lr=0.01"], ["quant.lr=-1"], "quant.lr"),
        "quant.minmax_lr": (["quant.minmax_lr=0.01"], ["quant.minmax_lr=0"], "quant.minmax_lr"),
        "quant.low_gpu_mem_usage": (["quant.low_gpu_mem_usage=true"], ["quant.low_gpu_mem_usage=maybe"],
                                    "quant.low_gpu_mem_usage"),  # fmt: skip
        "quant.enable_torch_compile": (["quant.enable_torch_compile=true"], ["quant.enable_torch_compile=maybe"],
                                       "quant.enable_torch_compile"),  # fmt: skip
        "quant.backend": (["quant.backend=dequant"], ["quant.backend=marlin"], "quant.backend"),
        "quant.compute": (["quant.compute=auto"], ["quant.compute=fast"], "quant.compute"),
        "quant.allow_fewer_samples": (["quant.allow_fewer_samples=true"], ["quant.allow_fewer_samples=maybe"],
                                      "quant.allow_fewer_samples"),  # fmt: skip
        "calib.source": (["calib.source=hub", "calib.dataset=NeelNanda/pile-10k", "calib.revision=main"],
                         ["calib.source=s3"], "calib.source"),  # fmt: skip
        "calib.dataset": (hub_calib + ["calib.dataset=org/other"], hub_calib + ["calib.dataset=null"], "calib.dataset"),
        "calib.revision": (hub_calib + [f"calib.revision={SHA}"], hub_calib + ["calib.revision=null"], "calib.revision"),
        "calib.split": (hub_calib + ["calib.split=validation"], hub_calib + ["calib.split=5"], "calib.split"),
        "calib.text_field": (["calib.text_field=content"], ["calib.text_field=''"], "calib.text_field"),
        "calib.path": (["calib=local", f"calib.path={fx.calibration}"], ["calib=local", "calib.path=/nope.jsonl"],
                       "calib.path"),  # fmt: skip
        "calib.kind": (["calib.kind=pages"], ["calib.kind=images"], "calib.kind"),
        "calib.pages": (["calib=pages", "calib.pages.source=local", f"calib.pages.path={fx.calibration_pages}"],
                        ["calib=pages", "calib.pages.source=local", f"calib.pages.path={tmp}"], "calib.pages.path"),
        "calib.pages_share": (["calib.kind=mixed", "calib.pages_share=0.25"], ["calib.kind=mixed", "calib.pages_share=1.5"],
                              "calib.pages_share"),  # fmt: skip
        "calib.queries_share": (["calib=pages", "calib.queries_share=0.25"], ["calib.queries_share=0.25"],
                                "calib.queries_share"),  # text calibration has no queries  # fmt: skip
        "quant.vision": (["calib.kind=pages", "quant.vision=true"], ["quant.vision=true"], "quant.vision"),
        "quant.vision_scheme": (["calib.kind=pages", "quant.vision=true", "quant.vision_scheme=W4A16G32"],
                                ["quant.vision_scheme=W8A16G32"], "quant.vision_scheme"),  # fmt: skip
        "eval.tasks": (["eval.tasks=[VidoreArxivQARetrieval]"], ["eval.tasks=[NopeRetrieval]"], "eval.tasks"),
        "eval.languages": (["eval.languages=[fr]"], ["eval.languages=[xx]"], "eval.languages"),
        "eval.entries": (["eval.entries=[VidoreFixtureRetrieval/en]"], ["eval.entries=[VidoreFixtureRetrieval/zz]"],
                         "eval.entries"),  # fmt: skip
        "eval.selected": ([], ["eval.selected=everything"], "eval.selected"),  # derived: refused when set
        "eval.allow_revision_mismatch": (["eval.allow_revision_mismatch=true"], ["eval.allow_revision_mismatch=maybe"],
                                         "eval.allow_revision_mismatch"),  # fmt: skip
        "eval.fixture_dir": ([f"eval.fixture_dir={fx.task}"], ["eval.fixture_dir=/nonexistent"], "eval.fixture_dir"),
        "eval.query_batch_size": (["eval.query_batch_size=16"], ["eval.query_batch_size=0"], "eval.query_batch_size"),
        "eval.page_batch_size": (["eval.page_batch_size=4"], ["eval.page_batch_size=0"], "eval.page_batch_size"),
        "eval.corpus_cache": (["eval.corpus_cache=false"], ["eval.corpus_cache=maybe"], "eval.corpus_cache"),
        "eval.preprocess_workers": (["eval.preprocess_workers=2"], ["eval.preprocess_workers=-1"],
                                    "eval.preprocess_workers"),  # fmt: skip
        "eval.preprocess_mode": (["eval.preprocess_mode=process"], ["eval.preprocess_mode=fork"], "eval.preprocess_mode"),
        "eval.compile": (["eval.compile=true"], ["eval.compile=maybe"], "eval.compile"),
        "eval.preprocess_device": (["eval.preprocess_device=cpu"], ["eval.preprocess_device=gpu"], "eval.preprocess_device"),
        "index.pool_factor": (["index.pool_factor=3"], ["index.pool_factor=0"], "index.pool_factor"),
        "index.dtype": (["index.dtype=binary"], ["index.dtype=int3"], "index.dtype"),
    }


def option_context(group: str, option: str, fx) -> list[str]:
    """What an option needs beside itself to be valid (a mandatory value, its sweep preset)."""
    return {("calib", "local"): [f"calib.path={fx.calibration}"],
            ("experiment", "seed-report"): ["+study=4b-256"]}.get((group, option), [])  # fmt: skip


def _documented_keys() -> list[str]:
    keys = list(readme_top_keys())
    for group, (_, gkeys) in readme_groups().items():
        package = "eval" if group == "encoder" else group
        keys += [f"{package}.{k}" for k in gkeys]
    return keys


# ------------------------------------------------------------------------------------------------ the tests


def test_the_readme_and_the_config_tree_agree(env):
    from omegaconf import OmegaConf

    groups = config_groups()
    documented = readme_groups()
    assert sorted(documented) == sorted(groups), "README group table vs conf/ groups"
    for group, options in groups.items():
        assert sorted(documented[group][0]) == options, f"options of {group}"
    root = OmegaConf.load(CONF / "config.yaml")
    top = sorted(f"{k}.{sub}" if sub else k for k in root if k not in ("defaults", "hydra")  # a block: its keys
                 for sub in (list(root[k]) if OmegaConf.is_dict(root[k]) else [None]))  # fmt: skip
    assert sorted(readme_top_keys()) == top, "README key table vs conf/config.yaml"
    for group in ("model", "quant", "calib", "eval", "encoder"):
        options, keys = documented[group]
        assert composed_group_keys(group, options, env["base"]) == set(keys), f"keys of {group}"
    assert sorted(cases(env["fx"], env["tmp"])) == sorted(_documented_keys()), "every documented key has a case"


@pytest.mark.parametrize("key", sorted(_documented_keys()))
def test_every_documented_key_takes_a_valid_value_and_refuses_a_bad_one(env, key):
    valid, invalid, field = cases(env["fx"], env["tmp"])[key]
    code, lines = as_typed(env["base"] + valid)
    assert code == 0 and not lines, (key, valid, lines)
    code, lines = as_typed(env["base"] + invalid)
    assert code == 2 and len(lines) == 1, (key, invalid, lines)
    assert lines[0].startswith("colq_sweep: ") and f"{field}=" in lines[0], lines[0]


def _choose(group: str, option: str) -> str:
    """How the command line picks an option: `+study=` (not in the defaults list), `encoder@eval=` (its package)."""
    return {"study": f"+study={option}", "encoder": f"encoder@eval={option}"}.get(group, f"{group}={option}")


@pytest.mark.parametrize("group", sorted(config_groups()))
def test_every_group_option_composes_and_a_missing_one_is_one_line(env, group):
    options = config_groups()[group]
    for option in options:
        choose = [_choose(group, option)]
        code, lines = as_typed(env["base"] + choose + option_context(group, option, env["fx"]))
        assert code == 0 and not lines, (group, option, lines)
    code, lines = as_typed(env["base"] + [_choose(group, "nope")])
    assert code == 2 and len(lines) == 1 and "nope" in lines[0] and group.split("/")[-1] in lines[0], lines


@pytest.mark.slow
def test_the_harness_is_the_command_line(env):
    """The same decisions through `python -m colq_sweep ... --cfg job` (which composes without running the job:
    its refusals are the command line's own) and a real run's pre-checks."""
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "colq_sweep", *env["base"], *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=ENV)  # fmt: skip

    fx = env["fx"]
    ok = cli("calib=local", f"calib.path={fx.calibration}", "--cfg", "job")  # a mandatory ??? key, set as typed
    assert ok.returncode == 0 and f"path: {fx.calibration}" in ok.stdout, ok.stderr[-2000:]
    bad = cli("calib.pth=/x", "--cfg", "job")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "colq_sweep: config error: calib.pth=/x: no such key in the config; did you mean calib.path?")
    code, lines = as_typed(env["base"] + ["calib.pth=/x"])
    assert (code, lines) == (2, [bad.stderr.strip()])
    unwritable = cli("outputs_dir=/proc/colq")
    assert unwritable.returncode == 2 and unwritable.stderr.strip() == as_typed(env["base"] + ["outputs_dir=/proc/colq"])[1][0]
