"""A helper on an idle GPU slot: rebuild an offered evaluation from its job's resolved config and evaluate the tasks
nobody has claimed yet (evaluate/shards.py), writing into the shared result and page caches; the owner reads them
back and tracks them. Started by the gpu-pool launcher (`share_idle`), never by a user.

    help_evaluate(board_dir) -> exit code (0: done or nothing left; 2: the offer does not rebuild to the same
    evaluation, so nothing was evaluated)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from colq_sweep import contract as R
from colq_sweep.evaluate.shards import SLOT_ENV, Board

log = logging.getLogger("colq_sweep.helper")


def help_evaluate(root: str | os.PathLike) -> int:
    from omegaconf import OmegaConf

    from colq_sweep.config.validate import validate
    from colq_sweep.evaluate.run import evaluate_model
    from colq_sweep.pipeline.plan import resolve
    from colq_sweep.pipeline.point import _load_base, _load_quantized

    board = Board(Path(root), f"helper-{os.environ.get(SLOT_ENV, '?')}-{os.getpid()}")
    offer = board.offer()
    plan = resolve(validate(OmegaConf.create(offer["config_yaml"])))
    if offer["evaluation"] == "baseline":
        plan = plan if plan.role == R.ROLE_BASELINE else plan.baseline
        loader = _load_base(plan)
    else:
        loader = _load_quantized(plan, Path(offer["artifact"])) if offer["artifact"] else _load_base(plan)
    job = plan.eval
    if (job.model_name, job.revision) != (offer["model_name"], offer["revision"]):
        log.error("%s: the offer rebuilds to %s@%s, not %s@%s: not helping", board.root, job.model_name, job.revision,
                  offer["model_name"], offer["revision"])  # fmt: skip
        return 2
    if not board.unclaimed():
        return 0
    log.info("%s helps evaluate %s@%s (%s)", board.who, job.model_name, job.revision, ", ".join(board.unclaimed()))
    evaluate_model(loader, job.spec, model_name=job.model_name, model_revision=job.revision, results_dir=job.results_dir,
                   cache_dir=job.cache_dir, device=job.device, force=job.force, progress=None,
                   page_revision=job.page_revision, pixels=job.pixels, share=board)  # fmt: skip
    log.info("%s evaluated %s", board.who, ", ".join(board.claimed) or "nothing (the owner took the rest)")
    return 0
