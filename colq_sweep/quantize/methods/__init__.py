"""Quantization methods, chosen by name (`quant.method=<name>`): one folder each, found by listing this package.

    <name>/spec.py   SPEC: the method's frozen spec (a `config.specs.QuantizedSpec`), validated in its `check()`
    <name>/build.py  build(job, base_dir, processor, calib, out) -> MethodRun: one run of the method that
                     leaves its export in `out`

The registry imports a method's modules only when it is asked for, so validating a config loads no quantization
library. Adding a method: a folder here and a config file in conf/quant/ (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any


@dataclass
class MethodRun:
    """What a method's run leaves behind for the build to collect."""

    export_dir: Path  # the checkpoint the method wrote
    expected_layers: list[str]  # the Linear layers it must have replaced with packed ones
    quant_seconds: float
    memory: Any  # runtime.PeakMemory of the run (peak_rss, peak_cuda, method)
    load_dtype: str  # the dtype the base checkpoint was loaded in for quantization
    arguments: dict[str, Any]  # what the method's library was called with (recorded)
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)  # what the method saw of the calibration data
    scratch: list[Path] = field(default_factory=list)  # folders of the run to remove afterwards
    layer_overrides: dict[str, dict] = field(default_factory=dict)  # per-layer settings the export config records
    kept_modules: list[str] | None = None  # the 16-bit modules the export's config names (None: export.KEPT_MODULES)


@cache
def names() -> tuple[str, ...]:
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))


def spec_class(name: str) -> type:
    if name not in names():
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}.spec").SPEC


def builder(name: str):
    """The method's `build` function (imports the method's quantization library only now)."""
    return importlib.import_module(f"{__name__}.{name}.build").build


def root_fields() -> tuple[str, ...]:
    """Every top-level config key that some method reads (`seqlen`, `nsamples`, ...)."""
    return tuple(dict.fromkeys(f for n in names() for f in spec_class(n).root_fields()))
