"""Test support that lives outside the package (production code never imports it)."""

from __future__ import annotations

import os
from pathlib import Path

HOLD_DIR = Path(__file__).resolve().parent / "hold"


def hold_env(seconds: float) -> dict[str, str]:
    """Environment for a sweep whose points wait `seconds` once their run exists (hold/sitecustomize.py)."""
    path = os.pathsep.join(p for p in (str(HOLD_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"COLQ_HOLD_POINT_SECONDS": str(seconds), "PYTHONPATH": path}
