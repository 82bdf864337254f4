"""Page calibration and the vision tower as a target (quantize/pages.py, quantize/methods/autoround/multimodal.py):
the config's refusals as typed, keys, the deepstack carry, and real AutoRound builds on the fixture's pages that see
the pixels, differ from text calibration, equal auto-round's API called directly, and (with quant.vision=true)
quantize exactly the vision blocks and load back strictly."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import artifact_key, make_point, quantize_point

ROOT = Path(__file__).resolve().parents[1]
TINY = {"iters": 2, "nsamples": 4, "seqlen": 64, "batch_size": 2}
BUILD = {**TINY, "iters": 20}  # enough SignRound steps that the calibration set moves the rounding


def pages_calib(fixture_paths, **extra) -> dict:
    return {"calib.kind": "pages", "calib.pages": {"source": "local", "path": str(fixture_paths.calibration_pages)}, **extra}


def test_config_refusals_keys_and_labels(fixture_paths, fixture_outputs_dir, tmp_path):
    from colq_sweep.config import ConfigError

    text = make_point(fixture_paths, tmp_path, **TINY)
    pages = make_point(fixture_paths, tmp_path, **TINY, **pages_calib(fixture_paths))
    assert pages.calib.has_images and not pages.calib.reads_text and pages.calib.counts(8) == (8, 0, 0)
    assert "calib=pages" in pages.label and "calib=" not in text.label
    assert artifact_key(text) != artifact_key(pages)
    mixed = make_point(fixture_paths, tmp_path, **TINY, **pages_calib(fixture_paths, **{"calib.kind": "mixed",
                       "calib.pages_share": 0.5, "calib.queries_share": 0.25}))  # fmt: skip
    assert mixed.calib.counts(8) == (4, 2, 2) and "calib=mixed0.5+q0.25" in mixed.label
    assert len({artifact_key(p) for p in (text, pages, mixed)}) == 3
    vision = make_point(fixture_paths, tmp_path, **TINY, **pages_calib(fixture_paths), **{"quant.vision": True})
    assert artifact_key(vision) != artifact_key(pages) and "+vision" in vision.label
    # a local page folder counts by its content, not its path
    moved = tmp_path / "moved-pages"
    moved.symlink_to(fixture_paths.calibration_pages)
    assert artifact_key(make_point(fixture_paths, tmp_path, **TINY, **{"calib.kind": "pages",
                        "calib.pages": {"source": "local", "path": str(moved)}})) == artifact_key(pages)  # fmt: skip
    for bad, field in (
        ({"quant.vision": True}, "quant.vision"),  # text calibration cannot calibrate a vision tower
        ({"calib.queries_share": 0.25}, "calib.queries_share"),  # text has no queries
        (pages_calib(fixture_paths, **{"calib.pages_share": 0.5}), "calib.pages_share"),  # pages is all pages
        (pages_calib(fixture_paths, **{"calib.kind": "mixed"}), "calib.pages_share"),  # mixed states its ratio
        (pages_calib(fixture_paths, **{"quant.vision": True, "quant.vision_scheme": "W8A16"}), "quant.vision_scheme"),
        ({"calib.kind": "pages", "calib.pages": {"source": "local", "path": str(tmp_path)}}, "calib.pages.path"),
        ({"calib.kind": "pages", "calib.pages": {"revision": "main"}}, "calib.pages.revision"),
    ):
        with pytest.raises(ConfigError) as err:
            make_point(fixture_paths, tmp_path, **TINY, **bad)
        assert err.value.field == field, (bad, str(err.value))
    # plain RTN reads no calibration: a vision tower quantized by RTN needs no images
    assert make_point(fixture_paths, tmp_path, **{"quant.algorithms": ["rtn"], "quant.vision": True}).quant.vision
    # as typed: one line, exit 2, nothing launched
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "colq_sweep", "experiment=demo", "calib=fixture", "quant.vision=true",
                           f"outputs_dir={fixture_outputs_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "quant.vision=True" in lines[0] and "calib=pages" in lines[0], proc.stderr
    # a seqlen with no room for a page after its prompt (23 tokens on the fixture) is refused before the launch
    proc = subprocess.run([sys.executable, "-m", "colq_sweep", "experiment=demo", "calib=pages", "seqlen=16",
                           f"outputs_dir={fixture_outputs_dir}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "seqlen=16" in lines[0] and "23-token prompt" in lines[0], proc.stderr


def test_deepstack_carry_leaves_the_model_exact_and_replays_true_layer_inputs(fixture_paths):
    """Within carry_deepstack the model's output is bit-identical, and replaying layer 0 alone from its captured
    inputs (as auto-round does) gives exactly the hidden state the model feeds layer 1: deepstack included."""
    from PIL import Image

    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.quantize.methods.autoround.multimodal import carry_deepstack

    model = load_colqwen3(fixture_paths.checkpoint, dtype="float32").eval()
    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    pages = sorted(fixture_paths.calibration_pages.glob("*.png"))[:2]
    x = proc.process_images([Image.open(p) for p in pages])
    layers = model.vlm.model.language_model.layers
    seen: dict = {}
    h1 = layers[1].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("l1", a[0] if a else kw["hidden_states"]),
                                             with_kwargs=True)  # fmt: skip
    with torch.no_grad():
        ref = model(**x)
    true_l1 = seen.pop("l1")
    with carry_deepstack(model) as k, torch.no_grad():
        assert k == len(model.config.vision_config.deepstack_visual_indexes) > 0
        h0 = layers[0].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("l0", (a, dict(kw))), with_kwargs=True)
        out = model(**x)
        h0.remove()
        args, kwargs = seen["l0"]
        assert kwargs["colq_deepstack"].shape[:2] == (2, k)
        replayed = layers[0](*args, **kwargs)
    h1.remove()
    assert torch.equal(out, ref)
    assert torch.equal(replayed, true_l1)
    assert not torch.equal(layers[0](*args, **{n: v for n, v in kwargs.items() if n != "colq_deepstack"}), true_l1)
    assert "forward" not in vars(layers[0])  # the carry is gone afterwards
    # a sample without an image (a query, a text row) carries a broadcast zero: the same output, nothing to cache
    q = proc.process_queries(["water cost and staff risk"])
    with torch.no_grad():
        ref = model(**q)
        with carry_deepstack(model) as k:
            h0 = layers[0].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("q", dict(kw)), with_kwargs=True)
            out = model(**q)
            h0.remove()
    assert torch.equal(out, ref) and seen["q"]["colq_deepstack"].shape == (1, k, 1, 1)


def test_page_builds_see_pixels_equal_the_api_and_quantize_the_vision_blocks(fixture_paths, tmp_path):
    from auto_round import AutoRound
    from safetensors.torch import load_file

    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.quantize.load import load_quantized
    from colq_sweep.quantize.methods.autoround.multimodal import carry_deepstack
    from colq_sweep.quantize.sizes import size_report

    text = quantize_point(make_point(fixture_paths, tmp_path, **BUILD), tmp_path / "models")
    page_point = make_point(fixture_paths, tmp_path, **BUILD, **pages_calib(fixture_paths))
    pages = quantize_point(page_point, tmp_path / "models")
    cal = pages.manifest["calibration"]
    assert (cal["pages"], cal["queries"], cal["text_rows"], pages.manifest["samples_used"]) == (4, 0, 0, 4)
    assert cal["pixel_rows"] > 0 and cal["pixel_rows_seen_by_vision_tower"] == cal["pixel_rows"]  # hooked
    assert cal["deepstack_layers_carried"] > 0 and cal["page_visual_tokens"][2] <= cal["page_visual_token_budget"]
    record = [json.loads(line) for line in (pages.path / "calibration_samples.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in record] == ["page"] * 4 and all(r["tokens"] <= 64 for r in record)
    kw = pages.manifest["inputs"]["autoround_kwargs"]
    assert (kw["batch_size"], kw["gradient_accumulate_steps"], kw["nsamples"]) == (1, 2, 4)
    t_ours, p_ours = load_file(str(text.path / "model.safetensors")), load_file(str(pages.path / "model.safetensors"))
    assert any(not torch.equal(t_ours[k], p_ours[k]) for k in p_ours if k.endswith((".qweight", ".scales")))

    # auto-round's API with the same multimodal arguments, on the same samples, gives the same tensors
    from colq_sweep.quantize import pages as page_calib

    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    samples = page_calib.prepare(page_point.calib, proc, seqlen=64, nsamples=4, seed=0, max_visual_tokens=64)
    assert [s.digest() for s in samples.samples] == [r["sha256"] for r in record]
    model = load_colqwen3(fixture_paths.checkpoint, dtype="float32")
    args = {k: v for k, v in kw.items() if k != "dataset"}
    gc.collect()
    gc.freeze()
    try:
        with carry_deepstack(model):
            ar = AutoRound(model, tokenizer=proc.tokenizer, processor=proc, image_processor=proc.image_processor,
                           dataset=[s.inputs for s in samples.samples], **args)  # fmt: skip
            ar.quantize_and_save(str(tmp_path / "direct"), format="auto_awq")
    finally:
        gc.unfreeze()
    (ref_file,) = (tmp_path / "direct").rglob("model.safetensors")
    ref = load_file(str(ref_file))
    for k in ref:
        if k.endswith((".qweight", ".qzeros", ".scales")):
            assert torch.equal(ref[k], p_ours[k]), k

    # the vision blocks as a target: exactly their Linear layers become packed, every other tensor keeps its layout
    vision = quantize_point(make_point(fixture_paths, tmp_path, **BUILD, **pages_calib(fixture_paths),
                                       **{"quant.vision": True}), tmp_path / "models")  # fmt: skip
    v_ours = load_file(str(vision.path / "model.safetensors"))
    added, removed = set(v_ours) - set(p_ours), set(p_ours) - set(v_ours)
    linears = {k.rsplit(".", 1)[0] for k in removed}
    assert linears and all(k.startswith("vlm.model.visual.blocks.") and k.endswith(".weight") for k in removed)
    assert added == {f"{p}.{leaf}" for p in linears for leaf in ("qweight", "qzeros", "scales")}
    base = load_file(str(fixture_paths.checkpoint / "model.safetensors"))
    for k in v_ours:
        if k.startswith("vlm.model.visual.") and k.rsplit(".", 1)[0] not in linears:
            assert torch.equal(v_ours[k], base[k]), k  # patch embedding, mergers, norms, biases: the base's
    # quant.vision_scheme=null: the text group (128) where it divides a layer's input width, else the largest of 64, 32
    widths = {p: int(v_ours[f"{p}.qweight"].shape[0]) for p in linears}  # AWQ packs along the output: rows = inputs
    groups = {p: 128 if w % 128 == 0 else 64 for p, w in widths.items()}
    assert set(widths.values()) == {64, 128} and vision.manifest["calibration"]["vision_layer_groups"] == groups
    cfg = json.loads((vision.path / "config.json").read_text())["quantization_config"]
    assert cfg["extra_config"] == {p: {"group_size": g} for p, g in groups.items() if g != 128}
    assert all(v_ours[f"{p}.scales"].shape[0] == widths[p] // g for p, g in groups.items())
    sizes = size_report(fixture_paths.checkpoint, vision.path)
    assert sizes["vision_tensor_bytes"] < sizes["base_vision_tensor_bytes"] and 0 < sizes["vision_params_quantized_pct"] < 100
    assert sizes["text_tensor_bytes"] == size_report(fixture_paths.checkpoint, pages.path)["text_tensor_bytes"]
    x = proc.process_images([__import__("PIL.Image", fromlist=["Image"]).open(sorted(fixture_paths.calibration_pages.glob("*.png"))[0])])
    ark = load_quantized(vision.path, backend="auto", device="cpu", dtype="float32")  # strict: real kernels only
    exact = load_quantized(vision.path, backend="dequant", device="cpu", dtype="float32")
    assert ark.colq_backend == "ark"
    with torch.no_grad():
        a, b = ark(**x), exact(**x)
    assert torch.nn.functional.cosine_similarity(a.flatten(0, 1), b.flatten(0, 1)).min() > 0.999
