"""Shared test fixtures: the offline fixture set is built once per session into a temporary directory."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def fixture_paths(tmp_path_factory):
    """Tiny Tomoro-layout checkpoint, ViDoRe-format task and calibration .jsonl (colq_sweep.fixtures)."""
    from colq_sweep.fixtures import ensure_fixtures

    # Laid out as <outputs_dir>/fixtures so configs that interpolate ${outputs_dir}/fixtures/... find them.
    return ensure_fixtures(tmp_path_factory.mktemp("outputs") / "fixtures")


@pytest.fixture(scope="session")
def fixture_outputs_dir(fixture_paths):
    """An outputs_dir whose fixtures/ subfolder holds the session fixtures (for composing real configs)."""
    return fixture_paths.root.parent
