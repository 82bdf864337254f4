"""The tags every point run carries besides its results: who it is (role, model, label, run key, entries asked
for), which code made it (package versions, git commit), and where it ran (device)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from colq_sweep import contract as R

if TYPE_CHECKING:
    from colq_sweep.pipeline.plan import PointPlan

VERSIONED_PACKAGES = ("torch", "transformers", "auto-round", "mteb", "mlflow", "hydra-core")


def point_tags(plan: PointPlan) -> dict[str, str]:
    from colq_sweep import __version__

    return {
        R.ROLE: plan.role,
        R.MODEL: plan.model,
        **method_tags(plan.point.quant),
        R.LABEL: plan.label,
        R.RUN_KEY: plan.run_key,
        R.EVAL_HASH: plan.eval_hash,
        R.VERSION: __version__,
        **environment_tags(),
    }


def label_head(label: str) -> list[str]:
    """A point label's leading words, before its knobs: `w4g128`, `rtn w8g128`, `original` (run and model names)."""
    head: list[str] = []
    for t in label.split():
        if "=" in t or len(head) == 2:
            break
        head.append(t)
    return head


def method_tags(quant) -> dict[str, str]:
    """`colq.method` and `colq.scheme` of a point's quantization, for grouping runs in the UI."""
    if not quant.enabled:
        return {R.METHOD: "none", R.SCHEME: "original"}
    label = getattr(quant, "method_label", None)
    scheme = f"W{quant.bits}A16G{quant.group_size}" if hasattr(quant, "bits") else quant.method
    return {R.METHOD: label() if label else quant.method, R.SCHEME: scheme}


def environment_tags() -> dict[str, str]:
    import importlib.metadata as md
    import subprocess

    tags = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            tags[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            tags[f"version.{pkg}"] = "missing"
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            tags[R.GIT_COMMIT] = sha.stdout.strip()
            tags[R.GIT_DIRTY] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def device_tags(device: str) -> dict[str, str]:
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if device.startswith("cuda") and torch.cuda.is_available():
        uuid = str(torch.cuda.get_device_properties(torch.device(device)).uuid)
        return {R.DEVICE: device, R.DEVICE_NAME: torch.cuda.get_device_name(), R.CUDA_VISIBLE: visible, R.GPU_UUID: uuid}
    return {R.DEVICE: device, R.DEVICE_NAME: "cpu", R.CUDA_VISIBLE: visible}
