"""Test support, outside the package: with this folder on PYTHONPATH and COLQ_HOLD_POINT_SECONDS=<s> set, every
Python process of a sweep (Slurm jobs included: sbatch exports the environment) sleeps <s> seconds when a point's
quantize stage starts, i.e. after the point's MLflow run exists. Tests cancel or kill a job there, mid-run.

Python imports `sitecustomize` at start-up; this one wraps the stage function once its module is imported, so
nothing of colq_sweep is imported early and production code carries no testing hook."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time

MODULE, FUNCTION = "colq_sweep.quantize.stage", "quantize"
SECONDS = float(os.environ.get("COLQ_HOLD_POINT_SECONDS") or 0)


def _held(fn):
    def wrapper(*args, **kwargs):
        time.sleep(SECONDS)
        return fn(*args, **kwargs)

    return wrapper


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        setattr(module, FUNCTION, _held(getattr(module, FUNCTION)))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if SECONDS > 0:
    sys.meta_path.insert(0, _Finder())
