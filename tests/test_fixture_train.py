"""The trained fixture: the synthetic task it learns, the committed checkpoint against its training record, a
rebuild's first steps against that record, and the exact activation-outlier rescaling."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from PIL import Image, ImageDraw

from colq_sweep.fixtures import synthetic as S
from colq_sweep.fixtures import train as T
from colq_sweep.fixtures.offline import (
    MAX_NUM_VISUAL_TOKENS,
    SIZES,
    TRAINED_CHECKPOINT,
    checkpoint_of,
    heldout_split,
    record_of,
    tiny_config,
)
from colq_sweep.fsio import file_sha256


@pytest.fixture(scope="module")
def record():
    return T.read_record()


@pytest.fixture(scope="module")
def processor():
    from colq_sweep.model import ColQwen3Processor

    return ColQwen3Processor.from_checkpoint(TRAINED_CHECKPOINT, MAX_NUM_VISUAL_TOKENS)


# ------------------------------------------------------------------------------------------ synthetic task


def test_synthetic_task_is_deterministic_and_graded():
    a, b = heldout_split(), heldout_split()
    queries = [q for lang in S.LANGUAGES for q, _ in a.queries[lang]]
    assert S.digest(a.pages, queries) == S.digest(b.pages, [q for lang in S.LANGUAGES for q, _ in b.queries[lang]])
    for lang in S.LANGUAGES:
        qrels = a.qrels(lang)
        assert len(qrels) == 40
        for (query, source), graded in zip(a.queries[lang], qrels, strict=True):
            assert query.language == lang
            assert graded[source] == 2  # the page it was drawn from shows both concepts
            for i, g in graded.items():
                assert g == len(set(query.concepts) & set(a.pages[i].concepts)) > 0
        grades = [g for q in qrels for g in q.values()]
        assert grades.count(1) > grades.count(2) > len(qrels) - 1  # partial matches outnumber full ones
    # the training stream never yields a held-out page
    held = {p.image.tobytes() for p in a.pages}
    assert not any(p.image.tobytes() in held for s in range(3) for p in S.training_batch(0, s, 16)[0])


def test_phrases_differ_by_binding_only():
    """Crossed compounds use the same words: only which modifier goes with which noun tells them apart."""
    water_cost, energy_risk = S.CONCEPTS.index(("water cost", "cout de l'eau")), S.CONCEPTS.index(("energy risk", "risque de l'energie"))
    water_risk, energy_cost = S.CONCEPTS.index(("water risk", "risque de l'eau")), S.CONCEPTS.index(("energy cost", "cout de l'energie"))
    def words(concepts, lang):
        return sorted(" ".join(S.phrase(c, lang) for c in concepts).split())

    for lang in S.LANGUAGES:
        assert words((water_cost, energy_risk), lang) == words((water_risk, energy_cost), lang)
    assert len(set(S.GLYPHS)) == len(S.CONCEPTS)


def test_glyph_cell_is_the_visual_token_the_training_aligns(processor):
    """`Page.token_index` (used by the token loss) names the merged visual token that sees the cell: the
    processor's patch order is row-major over 2x2 merge blocks."""
    for width, height in S.PAGE_SIZES:
        cols = width // S.CELL
        for c, r in ((0, 1), (cols - 1, 2), (1, height // S.CELL - 1)):
            img = Image.new("RGB", (width, height), "white")
            ImageDraw.Draw(img).rectangle([c * S.CELL + 8, r * S.CELL + 8, c * S.CELL + 23, r * S.CELL + 23], fill="black")
            page = S.Page((0,), ((c, r),), img)
            patches = processor.process_images([img])["pixel_values"]  # (4 patches per visual token, features)
            inked = sorted({i // 4 for i in range(patches.shape[0]) if patches[i].min() < 0})
            assert inked == [page.token_index(0)], (width, height, c, r)


# ------------------------------------------------------------------------------------- committed checkpoint


@pytest.mark.parametrize("size", sorted(SIZES))
def test_committed_checkpoint_is_the_recorded_one(size):
    """The committed files of each fixture size are those its training run wrote, with the script's current settings;
    the larger model retrieves better than the tiny one (what makes the demo's cross-model decision a real one)."""
    record, ckpt = T.read_record(record_of(size)), checkpoint_of(size)
    assert record["format"] == T.RECORD_FORMAT
    assert {f.name: file_sha256(f) for f in ckpt.iterdir() if f.is_file()} == record["files"]
    assert record["config"] == json.loads(json.dumps(dataclasses.asdict(T.default_config(size))))
    assert min(record["heldout_ndcg_at_5"].values()) >= 0.7
    assert sum(ckpt.joinpath(f).stat().st_size for f in record["files"]) < 10 * 2**20
    committed = json.loads((ckpt / "config.json").read_text())
    assert committed["text_config"]["hidden_size"] == SIZES[size][2]
    if size != "tiny":
        tiny = T.read_record(record_of("tiny"))["heldout_ndcg_at_5"]
        assert all(v > tiny[k] for k, v in record["heldout_ndcg_at_5"].items())


def test_committed_checkpoint_carries_the_activation_outliers(record):
    """Each quantized Linear's input columns fall into the recorded two scales, 2**4 apart."""
    from safetensors.torch import load_file

    state = load_file(TRAINED_CHECKPOINT / "model.safetensors")
    chosen = T.add_activation_outliers({k: v.clone().float() for k, v in state.items()}, T.TrainConfig())
    assert {k: sum(v) for k, v in chosen.items()} == record["channel_log2_scales"]
    for layer in (0, 1):
        p = f"vlm.model.language_model.layers.{layer}."
        scaled = torch.tensor(chosen[p + "input_layernorm"]) > 0
        assert 0.3 < scaled.float().mean() < 0.7
        col = state[p + "self_attn.q_proj.weight"].float().pow(2).mean(0).sqrt()
        ratio = col[~scaled].median() / col[scaled].median()
        assert 8 < ratio < 32  # the small columns belong to the large activations
        gain = state[p + "input_layernorm.weight"].float().abs()
        assert 8 < gain[scaled].median() / gain[~scaled].median() < 32


@pytest.mark.parametrize("size", sorted(SIZES))
def test_activation_outliers_leave_the_model_output_unchanged(processor, size):
    """At every size: the small model's grouped-query attention (4 heads reading 2 kv heads) maps o_proj's columns to
    kv heads otherwise than the tiny model's single kv head does."""
    from colq_sweep.model import load_colqwen3

    model = load_colqwen3(checkpoint_of(size), dtype="float32")
    split = heldout_split()
    pages = processor.process_images([p.image for p in split.pages[:3]])
    queries = processor.process_queries([q.text for q, _ in split.queries["fr"][:4]])
    with torch.no_grad():
        before = model(**pages), model(**queries)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        chosen = T.add_activation_outliers(state, dataclasses.replace(T.TrainConfig(), seed=7))
        assert any(e for v in chosen.values() for e in v)
        assert not torch.equal(state["vlm.model.language_model.layers.1.mlp.down_proj.weight"],
                               model.state_dict()["vlm.model.language_model.layers.1.mlp.down_proj.weight"])
        model.load_state_dict(state)
        after = model(**pages), model(**queries)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)  # powers of two: every product, hence every sum, is the same


# ------------------------------------------------------------------------------------------------- rebuild


@pytest.mark.parametrize("size", sorted(SIZES))
def test_rebuild_starts_as_recorded(size, tmp_path):
    """Rebuilding from the seed reproduces the recorded start of training: the tokenizer and image processor
    files byte for byte, the training batches bit for bit, and the first steps' losses and weight updates to
    float round-off (float32 on other SIMD widths rounds differently, so bitwise equality is not expected on
    another CPU; a changed seed, init, data, loss, learning rate or schedule moves them far more)."""
    record, ckpt = T.read_record(record_of(size)), checkpoint_of(size)
    cfg = T.default_config(size)
    assert T.prefix_digests(cfg) == record["prefix"]["data_sha256"]
    model, processor = T.initial_model(cfg, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (tmp_path / name).read_bytes() == (ckpt / name).read_bytes(), name
    committed = json.loads((ckpt / "config.json").read_text())
    for key, value in tiny_config(processor.tokenizer, size).items():  # the fixture's dimensions and special tokens
        if isinstance(value, dict):
            assert {k: committed[key][k] for k in value} == value, key
        else:
            assert committed[key] == value, key
    history = T.train(model, processor, cfg, steps=T.PREFIX_STEPS)
    want = record["prefix"]["losses"]
    assert len(history) == len(want) == T.PREFIX_STEPS
    for got, exp in zip(history, want, strict=True):
        for key in ("loss", "retrieval", "token", "update_norm"):
            assert got[key] == pytest.approx(exp[key], rel=1e-3), (got["step"], key)
    assert history[-1]["update_norm"] > 0


def test_prefix_check_can_fail(record, tmp_path):
    """The same comparison after a 20% change of the learning rate does not pass (another seed already fails on
    the data digests)."""
    changed = dataclasses.replace(T.TrainConfig(), lr=1.2e-3)
    model, processor = T.initial_model(changed, tmp_path)
    last = T.train(model, processor, changed, steps=T.PREFIX_STEPS)[-1]
    assert last["update_norm"] != pytest.approx(record["prefix"]["losses"][-1]["update_norm"], rel=1e-3)
    assert T.prefix_digests(dataclasses.replace(changed, seed=1)) != record["prefix"]["data_sha256"]


def test_ndcg_is_trec_evals_graded_ndcg():
    """ndcg_at_k (the training record's held-out score) uses the grades as gains, like pytrec_eval."""
    import pytrec_eval

    rng = random.Random(0)
    for _ in range(20):
        qrel = {j: rng.choice((1, 2)) for j in rng.sample(range(30), rng.randint(1, 8))}
        scores = [rng.random() for _ in range(30)]
        ev = pytrec_eval.RelevanceEvaluator({"q": {f"d{j}": g for j, g in qrel.items()}}, {"ndcg_cut.5"})
        want = ev.evaluate({"q": {f"d{j}": s for j, s in enumerate(scores)}})["q"]["ndcg_cut_5"]
        assert T.ndcg_at_k(scores, qrel) == pytest.approx(want, abs=1e-9)
    assert T.ndcg_at_k([3, 2, 1], {0: 1, 1: 2}) < 1.0 == T.ndcg_at_k([2, 3, 1], {0: 1, 1: 2})  # grade 2 first
