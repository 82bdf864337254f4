"""Quantization methods, schemes and recipes as sweep axes (quantize/methods/autoround/spec.py): each combination the
config accepts gives what auto-round's API gives with the same arguments, keys hash exactly what changes the weights,
every export loads back (a real kernel where one exists, else exactly dequantized), and a methods sweep runs end to
end on the fixture."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import artifact_key, make_point, point_key, quantize_point

ROOT = Path(__file__).resolve().parents[1]
TINY = {"iters": 1, "nsamples": 4, "seqlen": 32, "batch_size": 2}  # the cheapest run that still tunes and calibrates


# ---------------------------------------------------------------------------------------------------------- keys


def test_keys_hash_exactly_what_changes_the_weights(fixture_paths, tmp_path):
    sr = make_point(fixture_paths, tmp_path)
    explicit = make_point(fixture_paths, tmp_path, **{"quant.algorithms": ("signround",)})
    assert artifact_key(sr) == artifact_key(explicit) and point_key(sr, "cpu") == point_key(explicit, "cpu")
    # plain RTN reads no calibration data and does not tune: none of those knobs is in its keys
    rtn = make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["rtn"]})
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "something else entirely"}\n')
    for same in ({"seqlen": 64}, {"nsamples": 8}, {"batch_size": 4}, {"iters": 9}, {"seed": 3}, {"quant.lr": 0.1},
                 {"calib.path": str(other)}):  # fmt: skip
        p = make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["rtn"]}, **same)
        assert artifact_key(p) == artifact_key(rtn) and point_key(p, "cpu") == point_key(rtn, "cpu"), same
    for diff in ({"quant.sym": False}, {"quant.group_size": 64}):
        assert artifact_key(make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["rtn"]}, **diff)) != artifact_key(rtn)
    # optimised RTN calibrates but does not tune: calibration knobs count, iters and lr do not
    opt = make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["opt_rtn"]})
    assert artifact_key(make_point(fixture_paths, tmp_path, iters=9, **{"quant.algorithms": ["opt_rtn"]})) == artifact_key(opt)
    assert artifact_key(make_point(fixture_paths, tmp_path, seqlen=64, **{"quant.algorithms": ["opt_rtn"]})) != artifact_key(opt)
    keys = {artifact_key(p) for p in (sr, rtn, opt, make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["awq", "signround"]}))}
    assert len(keys) == 4
    assert make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["autoround"]}).quant.algorithms == ("signround",)


def test_schemes_recipes_and_labels(fixture_outputs_dir):
    from hydra import compose, initialize_config_dir

    from colq_sweep.config import CONF_DIR, validate

    def point(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return validate(compose(config_name="config", overrides=[f"outputs_dir={fixture_outputs_dir}", *overrides]))

    w8 = point("quant=rtn", "quant.scheme=W8A16").quant
    assert (w8.bits, w8.group_size, w8.format, w8.algorithms) == (8, 128, "auto_round", ("rtn",))
    assert point("quant=rtn", "quant.scheme=W8A16").label == "rtn w8g128"
    g32 = point("quant.scheme=W4A16G32", "quant.sym=false").quant
    assert (g32.bits, g32.group_size, g32.format, g32.sym) == (4, 32, "auto_awq", False)
    # a recipe fills what is left null; what is set explicitly wins; the label names it
    best = point("quant.recipe=best", "quant.algorithms=[awq,signround]")
    assert (best.quant.seqlen, best.quant.nsamples, best.quant.iters, best.quant.batch_size) == (2048, 512, 1000, 8)
    assert best.label == "signround+awq w4g128 best seqlen=2048 bs=8 n=512 iters=1000 seed=42"
    light = point("quant.recipe=light", "seqlen=512").quant
    assert (light.seqlen, light.iters, light.lr) == (512, 50, 5e-3)
    assert point("quant.recipe=rtn").quant.algorithms == ("rtn",)
    assert point().quant.seqlen == 1024 and point().label == "w4g128 seqlen=1024 bs=8 n=512 iters=1000 seed=42"


def test_recipes_are_auto_rounds(monkeypatch):
    """Our table equals auto-round's CLI RECIPES (iters 0 there = an RTN algorithm here)."""
    from auto_round.cli.main import RECIPES as THEIRS

    from colq_sweep.quantize.methods.autoround.spec import RECIPES

    assert set(RECIPES) == set(THEIRS)
    for name, theirs in THEIRS.items():
        ours = dict(RECIPES[name])
        algorithms = ours.pop("algorithms", ("signround",))
        if theirs["iters"] == 0:
            assert algorithms == (("rtn",) if theirs["disable_opt_rtn"] else ("opt_rtn",)) and "iters" not in ours
        assert all(theirs[k] == v for k, v in ours.items()), name


# -------------------------------------------------------------------------------------------------- load-back


def test_three_bit_unpacking_and_where_auto_puts_each_scheme(monkeypatch):
    from colq_sweep.quantize import kernels
    from colq_sweep.quantize.dequant import unpack_bitstream, unpack_int32

    words = torch.randint(-(2**31), 2**31 - 1, (6, 5), dtype=torch.int64).to(torch.int32)
    assert torch.equal(unpack_bitstream(words, 4, 0), unpack_int32(words, 4, 0))
    vals = torch.randint(0, 8, (64, 3))
    packed = torch.zeros(6, 3, dtype=torch.int64)
    for i in range(64):  # GPTQ's 3-bit layout: value i at stream bits [3i, 3i+3), word 0's lowest bit first
        for b in range(3):
            packed[(3 * i + b) // 32] |= ((vals[i] >> b) & 1) << ((3 * i + b) % 32)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    assert torch.equal(unpack_int32(packed, 3, 0), vals.to(torch.int32))
    assert [kernels.resolve_backend("auto", "cpu", b) for b in (2, 3, 4, 8)] == ["ark", "dequant", "ark", "ark"]
    monkeypatch.setattr(kernels, "module_available", lambda name: name == "humming")
    assert kernels.resolve_backend("auto", "cuda", 4) == "humming"
    with pytest.raises(kernels.BackendUnavailableError, match="W3A16 kernels.*gptqmodel"):
        kernels.resolve_backend("auto", "cuda", 3)  # gptqmodel serves 3 bits on CUDA: install it (or dequant)


# ---------------------------------------------------------------------------------------------- the API, exactly

CASES = {  # id: (overrides, what auto-round is called with besides the common arguments, export format)
    "rtn-w4": ({"quant.algorithms": ["rtn"]}, {"alg_configs": ["rtn"], "disable_opt_rtn": True}, "auto_awq"),
    "opt_rtn-w4": ({"quant.algorithms": ["opt_rtn"]}, {"alg_configs": ["rtn"], "disable_opt_rtn": False}, "auto_awq"),
    "awq+signround-w4": ({"quant.algorithms": ["awq", "signround"]}, {"alg_configs": ["awq", "signround"]}, "auto_awq"),
    "signround-w2": ({"quant.scheme": "W2A16", "quant.bits": None, "quant.format": None}, {}, "auto_round"),
    "signround-w3": ({"quant.scheme": "W3A16", "quant.bits": None, "quant.format": None}, {}, "auto_round"),
    "signround-w8": ({"quant.scheme": "W8A16", "quant.bits": None, "quant.format": None}, {}, "auto_round"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_method_and_scheme_equals_autoround_api(case, fixture_paths, tmp_path):
    """Our artifact equals AutoRound called directly on the same model, calibration file and seed, tensor for
    tensor; and it loads back strictly and runs (ark for 2/4/8 bits, exactly dequantized for 3)."""
    from auto_round import AutoRound
    from safetensors.torch import load_file

    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.quantize.load import load_quantized

    overrides, algorithm_args, fmt = CASES[case]
    point = make_point(fixture_paths, tmp_path, **TINY, **overrides)
    q = point.quant
    art = quantize_point(point, tmp_path / "models")
    bits = int(case.rsplit("-w", 1)[1])
    assert (q.bits, q.format) == (bits, fmt)
    calibrates = q.needs_calibration
    kwargs = dict(scheme=f"W{bits}A16", bits=bits, group_size=128, sym=True, seed=0, low_gpu_mem_usage=False,
                  enable_torch_compile=False, amp=False, device_map="cpu", quant_nontext_module=False,
                  to_quant_block_names="vlm.model.language_model.layers", layer_config={"embedding_proj_layer": {"bits": 16}},
                  **algorithm_args)  # fmt: skip
    if q.block == "signround":
        kwargs["iters"] = 1
    if calibrates:
        kwargs.update(nsamples=4, seqlen=32, batch_size=2, dataset=str(fixture_paths.calibration))
    recorded = dict(art.manifest["inputs"]["autoround_kwargs"])
    assert {k: v for k, v in recorded.items() if k != "dataset"} == {k: v for k, v in kwargs.items() if k != "dataset"}
    assert art.manifest["samples_used"] == (4 if calibrates else 0)
    model = load_colqwen3(fixture_paths.checkpoint, dtype="bfloat16")
    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    gc.collect()
    gc.freeze()
    try:
        ar = AutoRound(model, tokenizer=proc.tokenizer, processor=proc, image_processor=proc.image_processor, **kwargs)
        ar.quantize_and_save(str(tmp_path / "direct"), format=fmt)
    finally:
        gc.unfreeze()
    (ref_file,) = (tmp_path / "direct").rglob("model.safetensors")
    ref, ours = load_file(str(ref_file)), load_file(str(art.path / "model.safetensors"))
    assert ref.keys() == ours.keys()
    for k in ref:
        if k.endswith((".qweight", ".qzeros", ".scales")):
            assert ref[k].dtype == ours[k].dtype and torch.equal(ref[k], ours[k]), k
        else:  # 16-bit modules: float32 copies from auto-round, the base's bf16 values (or AWQ's rescaled norms) in ours
            assert torch.equal(ref[k].double(), ours[k].double()), k
    loaded = load_quantized(art.path, backend="auto", device="cpu", dtype="float32")
    assert loaded.colq_backend == ("dequant" if bits == 3 else "ark")
    ids = proc.process_queries(["water cost and staff risk"])
    with torch.no_grad():
        assert torch.isfinite(loaded(**ids)).all()


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_methods_and_models_sweep_end_to_end(fixture_paths, tmp_path, capsys):
    """`model=tiny,small quant=rtn quant.scheme=W3A16,W8A16 seqlen=32,64`: eight jobs, four artifacts (RTN reads no
    calibration, so the seqlen=64 jobs are the seqlen=32 ones and are skipped as such), W3 evaluated through exact
    dequantization and W8 through ark; the report labels them by method and scheme, W8A16 is within the interval of
    the original; across the two fixture models the frontier, a budget query answered through the command line, and
    the mteb export read back by mteb's own ResultCache with the scores the runs logged."""
    import mlflow

    from colq_sweep.report.__main__ import main as report_cli

    fx, outputs = fixture_paths.root, tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "fixtures").symlink_to(fx)  # the configs' own ${outputs_dir}/fixtures/... paths, both models
    cmd = [sys.executable, "-m", "colq_sweep", "-m", "experiment=demo", f"outputs_dir={outputs}", "model=tiny,small",
           "quant=rtn", "quant.scheme=W3A16,W8A16", "seqlen=32,64"]  # fmt: skip
    env = {k: v for k, v in {**os.environ, "HF_HUB_OFFLINE": "1"}.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = proc.stderr[proc.stderr.index("colq_sweep summary"):]
    assert summary.count("FINISHED") == 4 and summary.count("SKIPPED") == 4, summary
    notes = [line for line in proc.stderr.splitlines() if "are the same point as job" in line]  # said before it runs
    assert len(notes) == 4 and all(": seqlen cannot change it" in n for n in notes), notes
    assert {re.search(r"as job #\d+ \((.+?)\):", n).group(1) for n in notes} == {"rtn w3g128", "rtn w8g128"}
    assert len(list((outputs / "models").glob("[0-9a-f]" * 20))) == 4
    uri = f"sqlite:///{outputs}/mlflow.db"
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id], "attributes.status = 'FINISHED'")
    by_label = {(r.data.tags["colq.model"], r.data.tags["colq.label"]): r for r in runs
                if r.data.tags["colq.role"] != "sweep"}
    assert sorted(by_label) == [(m, lb) for m in ("small", "tiny") for lb in ("original", "rtn w3g128", "rtn w8g128")]
    for m in ("small", "tiny"):
        assert by_label[m, "rtn w3g128"].data.tags["colq.kernel_backend"] == "dequant"
        assert by_label[m, "rtn w8g128"].data.tags["colq.kernel_backend"] == "ark"
        w3, w8 = (by_label[m, f"rtn w{b}g128"].data.metrics for b in (3, 8))
        assert w8["size/total_bytes"] > w3["size/total_bytes"]
        assert w3["eval/weights_device_mb"] > 0 and w8["eval/weights_device_mb"] > 0  # the loaded model's tensors (CPU here)
    assert by_label["small", "original"].data.metrics["params/total"] > by_label["tiny", "original"].data.metrics["params/total"]

    out = tmp_path / "report"
    argv = ["--name", "demo", "--outputs-dir", str(outputs), "--out", str(out), "--n-boot", "500", "--no-log"]
    assert report_cli([*argv, "--mteb-export", "--max-memory-gb", "0.0025"]) == 0
    said = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "rtn w8g128" in md and "| dequant |" in md
    from colq_sweep.report import analyze
    from colq_sweep.report.frontier import analyze_across
    from colq_sweep.report.load import load_experiment

    analyses = analyze(load_experiment("demo", uri).points, n_boot=500)
    for ma in analyses:
        w8 = next(c for c in ma.configs if "w8" in c.point.label)
        lo, hi = w8.ci["delta_all"]
        assert lo <= 0 <= hi, (ma.model, lo, hi)  # W8A16 RTN: no significant change on the fixture
    ca = analyze_across(analyses, n_boot=500)
    assert len(ca.candidates) == 6 and len(ca.entries) == 2 and not ca.dropped
    assert ca.shared_label == "rtn" and {c.name for c in ca.candidates} == {  # named by what tells them apart
        f"{m} / {lb}" for m in ("tiny", "small") for lb in ("original", "w3g128", "w8g128")}
    fits = [c for c in ca.candidates if c.memory_bytes <= 0.0025e9]
    best = max(fits, key=lambda c: (c.avg, -c.memory_bytes))
    assert said.startswith(f"Within memory ≤ 0.0025 GB: {best.name}, the highest quality of {len(fits)} "), said
    assert f"**Within memory ≤ 0.0025 GB: `{best.name}`**" in md and "performance_frontier.png" in md
    assert {c.status for c in ca.candidates} <= {"frontier", "tied", "dominated"} and ca.frontier

    import mteb  # the export, read back by mteb's own loader

    loaded = mteb.ResultCache(out / "mteb").load_results(include_remote=False)
    got = {(m.model_name, m.model_revision): {(t.task_name, s["hf_subset"]): s["ndcg_at_5"]
                                              for t in m.task_results for s in t.scores["test"]}
           for m in loaded.model_results}  # fmt: skip
    assert len(got) == 6
    for (m, label), run in by_label.items():
        name = f"colq_sweep/{m}" if label == "original" else f"colq_sweep/{m}-{label.replace(' ', '-')}"
        revs = [rev for (n, rev) in got if n == name]
        assert len(revs) == 1, (name, sorted(got))
        logged = {(e["task"], e["subset"]): e["ndcg_at_5"] for e in _entries_of(client, run)}
        assert got[name, revs[0]] == pytest.approx(logged, abs=5e-6), name  # mteb's JSON keeps 5 decimals
        folder = next((out / "mteb" / "results").glob(f"{name.replace('/', '__')}/*"))
        meta = json.loads((folder / "model_meta.json").read_text())
        assert meta["n_parameters"] == int(run.data.metrics.get("params/total"))
        assert meta["embed_dim"] == 32 and meta["similarity_fn_name"] == "MaxSim"
        if label != "original":
            assert meta["adapted_from"] == f"colq_sweep/{m}"
            assert meta["loader_kwargs"]["colq_sweep"]["quantization"]["quant.scheme"] in ("W3A16", "W8A16")
            assert meta["memory_usage_mb"] == pytest.approx(run.data.metrics["size/weights_bytes"] / 2**20, abs=1e-3)


def _entries_of(client, run) -> list[dict]:
    import tempfile

    from colq_sweep.contract import ENTRIES_ARTIFACT, read_csv

    with tempfile.TemporaryDirectory() as tmp:
        return read_csv(client.download_artifacts(run.info.run_id, ENTRIES_ARTIFACT, tmp))
