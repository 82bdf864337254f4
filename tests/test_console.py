"""The console's rules (what a person sees, what only the log file gets) and the evaluation progress bar."""

from __future__ import annotations

import logging
import os

from colq_sweep import console


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_the_console_filter_keeps_third_party_chatter_off_unless_verbose(monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "0")  # and undone after the test, whatever -v sets below
    job = {"info": ["colq_sweep.console"], "warn": ["colq_sweep", "hydra"]}
    quiet = console.ConsoleFilter(False, **job)
    passes = {(n, lvl): quiet.filter(_record(n, lvl)) for n, lvl in [
        ("colq_sweep.console", logging.INFO), ("colq_sweep.evaluate.run", logging.INFO),
        ("colq_sweep.quantize.stage", logging.WARNING), ("mteb.evaluate", logging.INFO),
        ("transformers.modeling_utils", logging.WARNING), ("autoround", logging.WARNING),
        ("py.warnings", logging.WARNING), ("mlflow.store", logging.ERROR)]}  # fmt: skip
    assert passes == {
        ("colq_sweep.console", logging.INFO): True, ("colq_sweep.evaluate.run", logging.INFO): False,
        ("colq_sweep.quantize.stage", logging.WARNING): True, ("mteb.evaluate", logging.INFO): False,
        ("transformers.modeling_utils", logging.WARNING): False, ("autoround", logging.WARNING): False,
        ("py.warnings", logging.WARNING): False, ("mlflow.store", logging.ERROR): True,
    }  # fmt: skip
    # hydra.verbose=true, or a list of loggers (hydra.verbose=[mteb]), or -v: everything
    for verbose in (True, ["mteb"]):
        assert console.ConsoleFilter(verbose, **job).filter(_record("mteb.evaluate", logging.INFO))
    assert console.take_verbose_flag(["colq_sweep", "-m", "-v", "seqlen=32"]) == ["colq_sweep", "-m", "seqlen=32"]
    assert os.environ[console.VERBOSE_ENV] == "1"
    assert console.ConsoleFilter(False, **job).filter(_record("autoround", logging.INFO))


def test_the_job_logging_config_follows_hydra_verbose():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from colq_sweep.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides, want in (([], False), (["hydra.verbose=true"], True), (["hydra.verbose=[mteb]"], ["mteb"])):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
            for group in ("job_logging", "hydra_logging"):
                flt = cfg.hydra[group].filters.console
                assert flt["()"] == "colq_sweep.console.ConsoleFilter"
                got = flt.verbose
                assert (list(got) if not isinstance(got, bool) else got) == want
            raw = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
            assert raw["handlers"]["file"]["filename"] == "${hydra.runtime.output_dir}/${hydra.job.name}.log"


def test_the_progress_bar_counts_cached_items_and_corrects_its_estimate():
    bar = console.EvalProgress("evaluate", total=30)
    bar.begin_task(20)  # a task estimated at 20 items
    bar.advance(8)  # encoded
    bar.advance(4)  # served from the page cache: done at once
    bar.end_task()  # the rest (a subset served from the result cache) counts as done
    assert (bar.bar.n, bar.bar.total) == (20, 30)
    bar.begin_task(10)  # estimated 10, needs 13: the total grows, the bar never runs past it
    bar.advance(13)
    bar.end_task()
    assert (bar.bar.n, bar.bar.total) == (33, 33)
    bar.close()
