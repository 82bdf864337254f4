"""Page pixels as tensor ops (`eval.preprocess_device`, evaluate/pixels.py): the same tokens as the PIL processor
exactly, pixels within two uint8 levels at ViDoRe's common page sizes, the cpu and the device path identical, the fixture's
scores unchanged; the setting in the keys, and refused in one line where it cannot run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from colq_sweep.evaluate import pixels as px
from tests.helpers import make_plan, make_point, point_key

LEVEL = 1 / 127.5  # one uint8 step on the processor's [-1, 1] scale


def text_page(width: int, height: int, seed: int):
    """A page of sharp-edged coloured blocks on white (text-like edges: where a bicubic resize overshoots)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    for _ in range(300):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x, y, x + int(rng.integers(4, 60)), y + int(rng.integers(2, 12))]  # (clipped at the page's edge)
        draw.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return im


@pytest.mark.parametrize("cap, sizes", [
    (1280, [(1700, 2200), (2480, 3508), (2667, 1500)]),  # ViDoRe v3's typical pages, A4 at 300 dpi: shrunk
    (1280, [(1024, 1280), (640, 480)]),  # already on the 32-pixel grid within the cap: no resize / a small one
    (64, [(300, 200), (120, 500), (40, 40)]),  # the fixture's cap: shrunk, and enlarged to the minimum area
])  # fmt: skip
def test_tensor_pixels_are_the_pil_processors_to_two_levels(fixture_paths, cap, sizes):
    from colq_sweep.model import ColQwen3Processor

    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, cap)
    pages = [text_page(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    ref = proc.process_images(pages)
    got = px.finish(px.host_batch(proc, pages), proc, "cpu", None)
    assert sorted(got) == sorted(ref)
    for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(got[k], ref[k]), k  # the text side and the grid: exactly the processor's
    assert got["pixel_values"].dtype == ref["pixel_values"].dtype == torch.float32
    diff = (got["pixel_values"] - ref["pixel_values"]).abs()
    # measured over 12 such pages: 1 or 2 levels at most (each of the two resize passes rounds; resizing both sides
    # at once: 12), and 3e-6 to 5e-5 of the values differ at all
    assert diff.max().item() <= 2 * LEVEL + 1e-6
    assert (diff > 1e-6).float().mean().item() < 2e-4
    start = 0
    for (w, h), (_, gh, gw) in zip(sizes, ref["image_grid_thw"].tolist(), strict=True):
        n = gh * gw
        if (h, w) == (gh * 16, gw * 16):  # no resize: the PIL path's values to float round-off
            assert diff[start : start + n].max().item() < 1e-6
        start += n


def test_the_encoder_gives_pil_scores_and_one_result_on_either_side(fixture_paths, tmp_path):
    """The fixture's pages through the encoder: pixels computed in the workers (cpu) and on the model's device
    (the cuda path, here with the model on the CPU) are bit-identical; against PIL, float round-off."""
    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import ColQwen3Encoder
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    task = fixture_task(fixture_paths.task)
    task.load_data()
    images = list(task.dataset["en"]["test"]["corpus"].select(range(12))["image"])
    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    model = load_colqwen3(fixture_paths.checkpoint, dtype="float32")
    out = {}
    for pixels, workers in (("pil", 1), ("cpu", 1), ("cuda", 2), ("cuda", 0)):
        enc = ColQwen3Encoder(model, proc, model_name="t", model_revision=pixels, page_batch_size=4,
                              preprocess_workers=workers, pixels=pixels)  # fmt: skip
        out[pixels, workers] = enc.encode_pages(images)
    for a, b, c in zip(out["cpu", 1], out["cuda", 2], out["cuda", 0], strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    for a, b in zip(out["cpu", 1], out["pil", 1], strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5  # measured 2.6e-7
    with pytest.raises(ValueError, match="pixels must be one of pil, cpu, cuda"):
        ColQwen3Encoder(model, proc, model_name="t", model_revision="x", pixels="gpu")


@pytest.mark.slow
def test_the_fixture_evaluation_scores_the_same(fixture_paths, tmp_path):
    """NDCG@5 of every fixture query with pixels=cpu equals pixels=pil's (the fixture's pages are on the grid)."""
    from colq_sweep.config import EncoderSpec, EvalSpec
    from colq_sweep.evaluate import evaluate_model
    from colq_sweep.model import ColQwen3Processor, load_colqwen3
    from colq_sweep.tasks import FIXTURE_TASK

    def load():
        return load_colqwen3(fixture_paths.checkpoint, dtype="float32"), ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)

    spec = EvalSpec(tasks=(FIXTURE_TASK,), languages=None, fixture_dir=str(fixture_paths.task),
                    encoder=EncoderSpec(page_batch_size=4))  # fmt: skip
    res = {p: evaluate_model(load, spec, "local/tiny", f"r-{p}", tmp_path / "results", tmp_path / "cache", pixels=p)
           for p in ("pil", "cpu")}  # fmt: skip
    q = {p: {(r["subset"], r["query_id"]): r["ndcg_at_5"] for r in res[p].per_query} for p in res}
    assert len(q["pil"]) == 80 and q["cpu"] == pytest.approx(q["pil"], abs=1e-9)


def test_the_setting_is_keyed_where_it_changes_pixels(fixture_paths, tmp_path):
    auto, pil, cpu = (make_point(fixture_paths, tmp_path, **{"eval.preprocess_device": v}) for v in ("auto", "pil", "cpu"))
    # auto is pil on a CPU and cuda on CUDA: the device type is in the run key already, so auto's key is the old one
    assert auto.eval.encoder.pixels("cpu") == "pil" and auto.eval.encoder.pixels("cuda:0") == "cuda"
    assert len({point_key(p, "cpu") for p in (auto, pil, cpu)}) == 3
    plans = {v: make_plan(fixture_paths, tmp_path, **{"eval.preprocess_device": v, "device": "cpu"}) for v in ("auto", "pil", "cpu")}
    revs = {v: (p.eval.revision, p.eval.page_revision, p.eval.pixels) for v, p in plans.items()}
    assert revs["auto"] == revs["pil"] and "-px" not in revs["auto"][1]  # the same pages and results: caches shared
    assert revs["cpu"][1] == revs["auto"][1] + "-pxcpu" and revs["cpu"][2] == "cpu"
    assert revs["cpu"][0].startswith(revs["cpu"][1])
