"""Test helpers shared by test modules: a valid sweep point on the offline fixtures, with overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from colq_sweep.config import SweepPoint, validate


def point_dict(fixture_paths, tmp: str | Path) -> dict[str, Any]:
    """A plain config dict for the tiny fixture model, fixture calibration text and fixture retrieval task,
    with the smallest AutoRound settings that still exercise everything (iters=2, nsamples=4, seqlen=32)."""
    return {
        "model": {
            "name": "tiny",
            "id": None,
            "revision": None,
            "path": str(fixture_paths.checkpoint),
            "dtype": "float32",
            "max_num_visual_tokens": 64,
        },
        "quant": {
            "method": "autoround",
            "scheme": "W4A16",
            "bits": 4,
            "group_size": 128,
            "sym": True,
            "format": "auto_awq",
            "lr": None,
            "minmax_lr": None,
            "low_gpu_mem_usage": False,
            "enable_torch_compile": False,
            "backend": "auto",
            "allow_fewer_samples": False,
        },
        "calib": {
            "source": "jsonl",
            "dataset": None,
            "revision": None,
            "split": None,
            "text_field": "text",
            "path": str(fixture_paths.calibration),
        },
        "eval": {
            "tasks": ["VidoreFixtureRetrieval"],
            "languages": None,
            "query_batch_size": 8,
            "page_batch_size": 4,
            "corpus_cache": True,
            "fixture_dir": str(fixture_paths.task),
        },
        "seqlen": 32,
        "batch_size": 2,
        "nsamples": 4,
        "iters": 2,
        "seed": 0,
        "name": "t",
        "outputs_dir": str(tmp),
        "device": "cpu",
        "force": False,
        "fail_point": False,
        "tracking_uri": None,
    }


def apply_overrides(d: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `d` with overrides applied. Keys are top-level (`seqlen`), dotted (`quant.format`), or a
    group name with a dict value, which is merged into the group (`quant={"format": "auto_round"}`)."""
    d = copy.deepcopy(d)
    for key, value in overrides.items():
        parts = key.split(".")
        target = d
        for p in parts[:-1]:
            if not isinstance(target.get(p), dict):
                target[p] = {}
            target = target[p]
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(target.get(leaf), dict):
            target[leaf] = {**target[leaf], **value}
        else:
            target[leaf] = value
    return d


def make_point(fixture_paths, tmp: str | Path, **overrides: Any) -> SweepPoint:
    """A validated `SweepPoint` for the fixtures. Python keywords cannot hold dots, so pass dotted overrides
    with `**{"quant.format": "auto_round"}`, or as group dicts: `make_point(fx, tmp, quant={"format": ...})`."""
    return validate(apply_overrides(point_dict(fixture_paths, tmp), overrides))


def make_plan(fixture_paths, tmp: str | Path, **overrides: Any):
    """The resolved plan (pipeline/plan.py) of `make_point(...)`."""
    from colq_sweep.pipeline.plan import resolve

    return resolve(make_point(fixture_paths, tmp, **overrides))


def artifact_key(point: SweepPoint, calib_rev: str | None = None) -> str:
    """The artifact key the plan gives `point` (with `calib_rev` standing in for the calibration set's pin)."""
    from colq_sweep import keys
    from colq_sweep.quantize import pages
    from colq_sweep.runtime import resolve_device

    rev = pages.pin(point.calib) if calib_rev is None else calib_rev
    return keys.artifact_key(point, rev, pages.semantics(point.calib), resolve_device(point.device).split(":")[0])


def point_key(point: SweepPoint, device: str) -> str:
    """The run key the plan gives `point` on `device`."""
    from colq_sweep import keys
    from colq_sweep.quantize import pages

    return keys.point_key(point, device, pages.pin(point.calib) if point.quant.enabled else None)


def quantize_point(point: SweepPoint, models_dir: str | Path):
    """The quantize stage on `point`'s plan, building into `models_dir`."""
    import dataclasses

    from colq_sweep.pipeline.plan import resolve
    from colq_sweep.quantize.stage import quantize

    return quantize(dataclasses.replace(resolve(point).quant, models_dir=Path(models_dir).resolve()))
