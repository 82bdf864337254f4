"""What a finished point is found by (its run key) and what a quantized artifact is cached by: content, not
spelling. Editing a file the point reads changes the key; moving or re-spelling a path does not."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from colq_sweep.config import ConfigError, QuantSpec
from tests.helpers import artifact_key, make_point, point_key


def test_respelled_or_moved_paths_keep_the_key(fixture_paths, tmp_path):
    p = make_point(fixture_paths, tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(fixture_paths.checkpoint, moved / "ckpt")
    shutil.copy(fixture_paths.calibration, moved / "calib.jsonl")
    rel = os.path.relpath(fixture_paths.calibration)
    q = make_point(fixture_paths, tmp_path, **{"model.path": str(moved / "ckpt"), "calib.path": str(moved / "calib.jsonl")})
    r = make_point(fixture_paths, tmp_path, **{"calib.path": rel})
    assert point_key(p, "cpu") == point_key(q, "cpu") == point_key(r, "cpu")
    assert artifact_key(p) == artifact_key(q) == artifact_key(r)


def test_edited_calibration_or_weights_change_the_keys(fixture_paths, tmp_path):
    p = make_point(fixture_paths, tmp_path)
    calib = tmp_path / "calib.jsonl"
    calib.write_text(fixture_paths.calibration.read_text() + '{"text": "one more line"}\n')
    edited_calib = make_point(fixture_paths, tmp_path, **{"calib.path": str(calib)})
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture_paths.checkpoint, ckpt)
    (ckpt / "tokenizer_config.json").write_text((ckpt / "tokenizer_config.json").read_text() + "\n")
    edited_model = make_point(fixture_paths, tmp_path, **{"model.path": str(ckpt)})
    keys = {point_key(x, "cpu") for x in (p, edited_calib, edited_model)}
    assert len(keys) == 3
    assert len({artifact_key(x) for x in (p, edited_calib, edited_model)}) == 3
    # the baseline does not read the calibration text: its key ignores it
    base = dataclasses.replace(p, quant=QuantSpec())
    base2 = dataclasses.replace(edited_calib, quant=base.quant)
    assert point_key(base, "cpu") == point_key(base2, "cpu")


def test_device_type_and_result_settings_change_the_key_bookkeeping_does_not(fixture_paths, tmp_path):
    p = make_point(fixture_paths, tmp_path)
    assert point_key(p, "cpu") != point_key(p, "cuda:0")
    assert point_key(p, "cuda:0") == point_key(p, "cuda:1")
    same = [
        make_point(fixture_paths, tmp_path / "other", name="renamed", force=True, **{"eval.page_batch_size": 2}),
        make_point(fixture_paths, tmp_path, **{"eval.tasks": ["VidoreFixtureRetrieval", "VidoreFixtureRetrieval"][:1]}),
        make_point(fixture_paths, tmp_path, **{"quant.low_gpu_mem_usage": True}),  # speed and memory only
    ]
    assert {point_key(x, "cpu") for x in same} == {point_key(p, "cpu")}
    different = [
        make_point(fixture_paths, tmp_path, seqlen=64),
        make_point(fixture_paths, tmp_path, seed=1),
        make_point(fixture_paths, tmp_path, **{"quant.backend": "dequant"}),
        make_point(fixture_paths, tmp_path, **{"model.max_num_visual_tokens": 16}),
        make_point(fixture_paths, tmp_path, **{"eval.languages": ["fr"]}),
    ]
    assert len({point_key(x, "cpu") for x in different} | {point_key(p, "cpu")}) == len(different) + 1


@pytest.mark.parametrize("override, field", [
    ({"quant.bits": 4.0}, "quant.bits"),
    ({"model.id": "TomoroAI/tomoro-colqwen3-embed-4b", "model.revision": "6a32fb68598730bf5620fbf18d832c784235c59c"}, "model.path"),
    ({"tracking_uri": "mlflow.db"}, "tracking_uri"),
])  # fmt: skip
def test_values_that_would_mislabel_results_are_refused(fixture_paths, tmp_path, override, field):
    with pytest.raises(ConfigError, match=rf"^config error: {field}="):
        make_point(fixture_paths, tmp_path, **override)


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    from colq_sweep.track.store import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("outputs", "sqlite:///rel/m.db") == f"sqlite:///{tmp_path.resolve()}/rel/m.db"
