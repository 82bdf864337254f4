"""OmegaConf resolvers the config tree uses: registered when colq_sweep.config is imported, before Hydra composes."""

from __future__ import annotations

from typing import Any

from colq_sweep.tasks import CATALOGUE, select_entries


def entries_line(tasks: Any, languages: Any = None, only: Any = None) -> str:
    """`${colq_entries:${eval.tasks},${eval.languages},${eval.entries}}`: the (task, subset) entries a config
    selects, as one line (OmegaConf cannot resolve an interpolation into a list), so that `--cfg job --resolve`
    shows them. Private and unknown tasks are skipped here; validation reports them."""
    langs = [str(x) for x in languages] if languages else None
    known = [str(t) for t in tasks if str(t) in CATALOGUE and CATALOGUE[str(t)].public]
    entries = select_entries(known, langs)
    if only:
        wanted = {str(x) for x in only}
        entries = [(t, s) for t, s in entries if f"{t}/{s}" in wanted]
    n_tasks = len({t for t, _ in entries})
    return f"{n_tasks} tasks, {len(entries)} entries: " + ", ".join(f"{t}/{s}" for t, s in entries)


def run_stamp() -> str:
    """`2026-12-02_00-32-31-9f3ab2`: the local time to the second plus 24 random bits, so two sweeps started in the
    same second (on one host or several sharing outputs/) never share a folder, a sweep id or a parent run."""
    import datetime as dt
    import secrets

    return f"{dt.datetime.now():%Y-%m-%d_%H-%M-%S}-{secrets.token_hex(3)}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("colq_entries", entries_line, replace=True)
    # cached like ${now:}: Hydra copies the resolver cache into every job it re-composes (load_sweep_config), so
    # all jobs of a sweep, on this host or a Slurm node, resolve the same folder
    OmegaConf.register_new_resolver("colq_stamp", run_stamp, replace=True, use_cache=True)
