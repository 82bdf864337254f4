"""Evaluation stage: the fixture task through mteb with the ColQwen3 encoder, its caches and its entry lists."""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from colq_sweep.config import EncoderSpec, EvalSpec
from colq_sweep.tasks import FIXTURE_TASK, benchmark_tasks

MODEL_NAME = "local/tiny-colqwen3"

# Tomoro's prompts, written out here (not imported) so that the test checks the processor independently.
EOT = "<|endoftext|>"
IMAGE_PROMPT_HEAD = "<|im_start|>user\n<|vision_start|>"
IMAGE_PROMPT_TAIL = "<|vision_end|>Describe the image.<|im_end|><|endoftext|>"


@dataclass
class Recorder:
    """Loads the fixture checkpoint and records what the encoder feeds the model (or fails on demand)."""

    checkpoint: Path
    fail_at_page_batch: int | None = None
    loads: int = 0
    page_batches: int = 0
    inputs: list[dict] = field(default_factory=list)

    def __call__(self):
        from colq_sweep.model import ColQwen3Processor, load_colqwen3

        self.loads += 1
        model = load_colqwen3(self.checkpoint, dtype="float32")
        processor = ColQwen3Processor.from_checkpoint(self.checkpoint, 64)
        original = model.forward

        def forward(**kw):
            is_page = kw.get("pixel_values") is not None
            if is_page:
                self.page_batches += 1
                if self.fail_at_page_batch is not None and self.page_batches >= self.fail_at_page_batch:
                    raise RuntimeError("simulated interruption")
            keep = ("input_ids", "attention_mask", "image_grid_thw")
            self.inputs.append(
                {"kind": "page" if is_page else "query", **{k: kw[k] for k in keep if k in kw}}
            )
            return original(**kw)

        model.forward = forward
        return model, processor


def _never_load():
    raise AssertionError("load_model must not be called")


def _spec(fixture_paths, **kw) -> EvalSpec:
    """The fixture task's EvalSpec; encoder settings (`corpus_cache=False`, ...) go into its EncoderSpec."""
    enc = {k: kw.pop(k) for k in list(kw) if k in EncoderSpec.FIELDS}
    args = dict(tasks=(FIXTURE_TASK,), languages=None, fixture_dir=str(fixture_paths.task))
    args.update(kw)
    return EvalSpec(**args, encoder=EncoderSpec(**{"query_batch_size": 8, "page_batch_size": 4, **enc}))


def _by_subset(entries: list[dict]) -> dict[str, dict]:
    return {e["subset"]: e for e in entries}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def base(fixture_paths, tmp_path_factory):
    """The base checkpoint evaluated once with the corpus cache (shared by several tests)."""
    from colq_sweep.evaluate import evaluate_model

    root = tmp_path_factory.mktemp("eval-base")
    rec = Recorder(fixture_paths.checkpoint)
    result = evaluate_model(rec, _spec(fixture_paths), MODEL_NAME, "base", root / "results", root / "cache")
    return result, rec, root


# ------------------------------------------------------------------------------------------ the fixture run


@pytest.mark.slow
def test_base_checkpoint_evaluates_offline_through_mteb(base, fixture_paths):
    from mteb.cache import ResultCache

    from colq_sweep.contract import ENTRY_COLUMNS as ENTRY_KEYS

    result, rec, root = base
    assert rec.loads == 1 and not result.from_cache
    assert [(e["task"], e["subset"], e["language"]) for e in result.entries] == [
        (FIXTURE_TASK, "en", "en"),
        (FIXTURE_TASK, "fr", "fr"),
    ]
    for e in result.entries:
        assert set(e) == set(ENTRY_KEYS)
        assert e["benchmark"] == "fixture" and e["main_metric"] == "ndcg_at_5"
        assert e["main_score"] == e["ndcg_at_5"] and e["n_queries"] == 40
        assert 0.0 <= e["ndcg_at_5"] <= 1.0 and 0.0 <= e["recall_at_5"] <= 1.0
    # one corpus of 64 pages shared by two subsets: encoded exactly once; 40 queries per subset
    t = result.timing
    assert t["pages_encoded"] == 64 and t["queries_encoded"] == 80
    assert rec.page_batches == 16  # 64 pages at page_batch_size 4
    for k in ("eval_seconds", "pages_per_s", "queries_per_s", "peak_rss_mb", "peak_cuda_mb"):
        assert k in t
    assert t["eval_seconds"] > 0 and t["pages_per_s"] > 0 and t["queries_per_s"] > 0 and t["peak_rss_mb"] > 0
    # mteb's result-cache layout, with the per-query scores beside it
    rev_dir = root / "results" / "results" / "local__tiny-colqwen3" / "base"
    assert (rev_dir / f"{FIXTURE_TASK}.json").is_file()
    assert (rev_dir / f"{FIXTURE_TASK}.per_query.jsonl").is_file()
    from colq_sweep.evaluate.encoder import colqwen3_model_meta

    cached = ResultCache(root / "results").load_task_result(
        FIXTURE_TASK, colqwen3_model_meta(MODEL_NAME, "base")
    )
    assert {s["hf_subset"] for s in cached.scores["test"]} == {"en", "fr"}


@pytest.mark.slow
def test_trained_fixture_retrieves_far_above_chance(base, fixture_paths):
    """The committed fixture checkpoint really retrieves: NDCG@5 >= 0.7 on each held-out subset through the
    evaluation stage (mteb, graded qrels), where a random ranking scores about 0.11; and mteb's numbers are the
    graded NDCG the training run recorded for this checkpoint (a binarised NDCG would differ)."""
    from colq_sweep.fixtures.train import ndcg_at_k, read_record

    result, _, _ = base
    recorded = read_record()["heldout_ndcg_at_5"]
    rng = random.Random(0)
    for e in result.entries:
        qrels = json.loads((fixture_paths.task / f"qrels-{e['subset']}.json").read_text())
        assert any(g == 2 for q in qrels.values() for g in q.values())  # graded relevance reaches mteb
        ids = [r["id"] for r in _read_jsonl(fixture_paths.task / "corpus.jsonl")]
        chance = sum(
            ndcg_at_k([rng.random() for _ in ids], {ids.index(d): g for d, g in q.items()})
            for _ in range(50) for q in qrels.values()
        ) / (50 * len(qrels))
        assert chance < 0.2
        assert e["ndcg_at_5"] >= 0.7 > chance + 0.5
        assert e["ndcg_at_5"] == pytest.approx(recorded[e["subset"]], abs=1e-4)


def test_page_embeddings_do_not_depend_on_batching(fixture_paths):
    """Each page's embedding is the same (to float round-off) whether pages are encoded one at a time, all in
    one batch, or shuffled into batches of another size: pages of different sizes are left-padded in a batch,
    so this checks padding, position ids and the per-image vision attention."""
    from mteb._create_dataloaders import create_dataloader
    from mteb.types import PromptType

    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import ColQwen3Encoder
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    task = fixture_task(fixture_paths.task)
    task.load_data()
    corpus = task.dataset["en"]["test"]["corpus"].select(range(16))
    model = load_colqwen3(fixture_paths.checkpoint, dtype="float32")
    processor = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)

    def encode(dataset, batch_size):
        enc = ColQwen3Encoder(
            model, processor, model_name=MODEL_NAME, model_revision="batching", page_batch_size=batch_size,
            corpus_cache=False,
        )  # fmt: skip
        loader = create_dataloader(
            dataset, task_metadata=task.metadata, prompt_type=PromptType.document, batch_size=batch_size
        )
        out = enc.encode(
            loader, task_metadata=task.metadata, hf_split="test", hf_subset="en", prompt_type=PromptType.document
        )
        assert enc.stats["pages_encoded"] == len(dataset)
        return dict(zip(dataset["id"], out, strict=True))

    order = list(range(len(corpus)))
    random.Random(3).shuffle(order)
    one = encode(corpus, 1)
    whole = encode(corpus, len(corpus))
    shuffled = encode(corpus.select(order), 5)
    assert len({e.shape[0] for e in one.values()}) == 3  # three page sizes: batches really are padded
    for page_id, e in one.items():
        for other in (whole[page_id], shuffled[page_id]):
            assert other.shape == e.shape
            assert torch.allclose(other, e, atol=1e-5, rtol=0), page_id


def test_pipelined_pages_equal_the_plain_forward(fixture_paths, tmp_path):
    """The optimized page path (worker threads preparing batches ahead, pixels cast on the host, one copy back per
    batch, size-sorted batches) against the plain path, `model(**processor.process_images(batch))` batch by batch:
    the same batches give bit-identical bf16 embeddings; size sorting regroups pages into batches with less padding
    and changes them only by float round-off."""
    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import ColQwen3Encoder, PageStore
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    task = fixture_task(fixture_paths.task)
    task.load_data()
    corpus = task.dataset["en"]["test"]["corpus"].select(range(16))
    images = list(corpus["image"])
    processor = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    for dtype in ("bfloat16", "float32"):
        model = load_colqwen3(fixture_paths.checkpoint, dtype=dtype)
        plain = []
        with torch.inference_mode():
            for start in range(0, len(images), 4):
                batch = processor.process_images(images[start : start + 4])
                out = model(**batch)
                plain.extend(out[i][batch["attention_mask"][i].bool()] for i in range(out.shape[0]))
        modes = [(0, "thread"), (3, "thread")] + ([(2, "process")] if dtype == "bfloat16" else [])
        for workers, mode in modes:
            enc = ColQwen3Encoder(
                model, processor, model_name=MODEL_NAME, model_revision=f"pipe{workers}", page_batch_size=4,
                preprocess_workers=workers, preprocess_mode=mode,
            )  # fmt: skip
            got = enc.encode_pages(images)
            assert enc.stats["pages_encoded"] == 16
            assert not any(e.is_inference() for e in got)  # ordinary tensors: callers may modify them in place
            for a, b in zip(got, plain, strict=True):
                assert torch.equal(a, b.float()), (dtype, workers, mode)
            if mode == "process":  # the stored-page path: items decoded in the worker processes
                process_cached = enc._corpus_cached(corpus, task.metadata)[0]
                assert enc.pages._processes is not None
                enc.release()
                assert enc.pages._processes is None
        # the cached corpus path sorts missing pages by size before batching
        padding: list[int] = []
        enc = ColQwen3Encoder(
            model, processor, model_name=MODEL_NAME, model_revision=f"sorted-{dtype}", page_batch_size=4,
            page_store=PageStore(tmp_path / dtype), preprocess_workers=2,
        )  # fmt: skip
        enc.observer = lambda kind, batch, seen=padding: seen.append(int((batch["attention_mask"] == 0).sum()))
        got = enc._corpus_cached(corpus, task.metadata)[0]
        plain_padding = sum(
            int((processor.process_images(images[s : s + 4])["attention_mask"] == 0).sum()) for s in range(0, 16, 4)
        )
        assert len(padding) == 4 and sum(padding) < plain_padding, (padding, plain_padding)
        if dtype == "bfloat16":  # the same size-sorted batches, prepared in worker processes: bit-identical
            assert all(torch.equal(a, b) for a, b in zip(got, process_cached, strict=True))
        # a corpus wholly on disk: served without loading the model or starting workers
        loads: list[int] = []
        again = ColQwen3Encoder(
            model_name=MODEL_NAME, model_revision=f"sorted-{dtype}", loader=lambda seen=loads, m=model: seen.append(1) or (m, processor),
            page_batch_size=4, page_store=PageStore(tmp_path / dtype), preprocess_workers=2,
        )  # fmt: skip
        cached = again._corpus_cached(corpus, task.metadata)[0]
        assert not loads and again.stats["pages_from_disk"] == 16
        assert all(torch.equal(a, b) for a, b in zip(cached, got, strict=True))
        tol = 1e-5 if dtype == "float32" else 2**-6  # bf16: a few steps of its 8-bit mantissa
        for a, b in zip(got, plain, strict=True):
            assert a.shape == b.shape
            assert torch.allclose(a, b.float(), atol=tol, rtol=0), dtype


def test_compiled_blocks_equal_eager_to_bf16_round_off(fixture_paths, tmp_path):
    """eval.compile: every decoder layer and vision block through torch.compile (Inductor fuses norms, rotary and
    activations). Pages of three sizes in two batch orders (dynamic shapes: no recompilation error) and queries
    agree with the eager bf16 model to a couple of bf16 steps, and the setting is part of the eval revision."""
    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import ColQwen3Encoder
    from colq_sweep.keys import config_hash, eval_revision
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    task = fixture_task(fixture_paths.task)
    task.load_data()
    images = list(task.dataset["en"]["test"]["corpus"].select(range(12))["image"])
    processor = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    queries = ["what is on the first page", "revenue 2021"]
    eager = ColQwen3Encoder(
        load_colqwen3(fixture_paths.checkpoint, dtype="bfloat16"), processor, model_name=MODEL_NAME,
        model_revision="eager", page_batch_size=4,
    )  # fmt: skip
    compiled_model = load_colqwen3(fixture_paths.checkpoint, dtype="bfloat16")
    compiled = ColQwen3Encoder(
        compiled_model, processor, model_name=MODEL_NAME, model_revision="compiled", page_batch_size=4, compile=True
    )
    assert compiled_model.colq_compiled
    step = 2**-8  # bf16 spacing just below 1: embeddings are unit vectors
    for order in (images, images[::-1]):
        for a, b in zip(eager.encode_pages(order), compiled.encode_pages(order), strict=True):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 2 * step
    for a, b in zip(eager.encode_queries(queries), compiled.encode_queries(queries), strict=True):
        assert (a - b).abs().max() <= 2 * step
    from tests.helpers import make_point

    point = make_point(fixture_paths, tmp_path)
    on = make_point(fixture_paths, tmp_path, eval={"compile": True})
    assert eval_revision("abc", on, "float32").endswith("-compiled")
    assert not eval_revision("abc", point, "float32").endswith("compiled")
    assert config_hash(on) != config_hash(point)


@pytest.mark.slow
def test_per_query_scores_average_to_the_entries(base):
    from mteb.cache import ResultCache

    from colq_sweep.evaluate.encoder import colqwen3_model_meta

    result, _, root = base
    mteb_scores = {
        s["hf_subset"]: s
        for s in ResultCache(root / "results")
        .load_task_result(FIXTURE_TASK, colqwen3_model_meta(MODEL_NAME, "base"))
        .scores["test"]
    }
    for e in result.entries:
        rows = [q for q in result.per_query if q["subset"] == e["subset"]]
        assert len(rows) == e["n_queries"] == len({q["query_id"] for q in rows})
        assert all(q["language"] == e["language"] and q["task"] == e["task"] for q in rows)
        for metric in ("ndcg_at_5", "ndcg_at_10"):
            mean = sum(q[metric] for q in rows) / len(rows)
            assert abs(mean - e[metric]) < 1e-6
            # ... and they are mteb's own per-query scores: mteb stores their mean rounded to 5 decimals
            assert abs(mean - mteb_scores[e["subset"]][metric]) <= 1e-5
        assert abs(e["main_score"] - mteb_scores[e["subset"]]["main_score"]) <= 1e-5


@pytest.mark.slow
def test_inputs_match_tomoro_prompts_token_for_token(base, fixture_paths):
    from transformers import AutoTokenizer

    _, rec, _ = base
    tok = AutoTokenizer.from_pretrained(fixture_paths.checkpoint)
    queries = [
        q["text"] for lang in ("en", "fr") for q in _read_jsonl(fixture_paths.task / f"queries-{lang}.jsonl")
    ]
    expected_queries = [tok(q.strip() + EOT * 10)["input_ids"] for q in queries]

    fed_queries, fed_pages = [], []
    for b in rec.inputs:
        mask = b["attention_mask"]
        for i in range(mask.shape[0]):
            row = mask[i].tolist()
            n_pad = row.index(1)
            assert all(row[n_pad:]) and not any(row[:n_pad]), "padding must be on the left"
            ids = b["input_ids"][i][n_pad:].tolist()
            if b["kind"] == "query":
                fed_queries.append(ids)
            else:
                fed_pages.append((ids, int(b["image_grid_thw"][i].prod()) // 4))
    assert fed_queries == expected_queries  # no task instruction, stripped text + 10 end-of-text tokens
    assert len(fed_pages) == 64
    for ids, n_visual in fed_pages:
        assert ids == tok(IMAGE_PROMPT_HEAD + "<|image_pad|>" * n_visual + IMAGE_PROMPT_TAIL)["input_ids"]


@pytest.mark.slow
def test_corpus_cache_gives_the_scores_of_an_uncached_run(base, fixture_paths, tmp_path):
    from colq_sweep.evaluate import evaluate_model

    cached, _, _ = base
    rec = Recorder(fixture_paths.checkpoint)
    plain = evaluate_model(
        rec,
        _spec(fixture_paths, corpus_cache=False),
        MODEL_NAME,
        "base",
        tmp_path / "results",
        tmp_path / "cache",
    )
    assert plain.timing["pages_encoded"] == 128  # mteb alone encodes the corpus once per subset
    assert not list((tmp_path / "cache").rglob("*.safetensors"))
    assert plain.entries == cached.entries
    assert plain.per_query == cached.per_query


@pytest.mark.slow
def test_reevaluation_is_served_from_the_cache(base, fixture_paths):
    from colq_sweep.evaluate import evaluate_model

    first, _, root = base
    again = evaluate_model(
        _never_load, _spec(fixture_paths), MODEL_NAME, "base", root / "results", root / "cache"
    )
    assert again.from_cache
    assert again.timing["pages_encoded"] == 0 and again.timing["queries_encoded"] == 0
    assert again.entries == first.entries
    assert again.per_query == first.per_query


@pytest.mark.slow
def test_force_recomputes_despite_every_cache(base, fixture_paths):
    from colq_sweep.evaluate import evaluate_model

    first, _, root = base
    rec = Recorder(fixture_paths.checkpoint)
    again = evaluate_model(rec, _spec(fixture_paths), MODEL_NAME, "base", root / "results", root / "cache", force=True)
    assert not again.from_cache
    assert again.timing["pages_encoded"] == 64 and again.timing["pages_from_disk"] == 0
    assert again.entries == first.entries and again.per_query == first.per_query


@pytest.mark.slow
def test_other_model_key_and_language_filter(base, fixture_paths):
    """languages=("fr",) runs only the fr subset; another revision shares no cached page or result."""
    from colq_sweep.evaluate import evaluate_model

    first, _, root = base
    rec = Recorder(fixture_paths.checkpoint)
    other = evaluate_model(
        rec,
        _spec(fixture_paths, languages=("fr",)),
        MODEL_NAME,
        "other-key",
        root / "results",
        root / "cache",
    )
    assert rec.loads == 1 and not other.from_cache
    assert [e["subset"] for e in other.entries] == ["fr"]
    assert {q["subset"] for q in other.per_query} == {"fr"}
    assert other.timing["pages_encoded"] == 64 and other.timing["queries_encoded"] == 40
    assert other.timing["pages_from_disk"] == 0
    # same weights under another key: same numbers
    assert other.entries[0] == _by_subset(first.entries)["fr"]


def test_changed_image_never_hits_a_stale_page_embedding(fixture_paths, tmp_path):
    from datasets import Dataset
    from mteb._create_dataloaders import create_dataloader
    from mteb.types import PromptType
    from PIL import Image, ImageDraw

    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import ColQwen3Encoder, PageStore
    from colq_sweep.keys import fixture_revision
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    task = fixture_task(fixture_paths.task)
    task.load_data()
    corpus = task.dataset["en"]["test"]["corpus"].select(range(4))
    changed_png = tmp_path / "changed.png"
    img = Image.open(fixture_paths.task / "corpus" / f"{corpus[1]['id']}.png").convert("RGB")
    ImageDraw.Draw(img).rectangle([20, 60, 170, 200], fill=(0, 0, 0))
    img.save(changed_png)
    paths = [str(fixture_paths.task / "corpus" / f"{i}.png") for i in corpus["id"]]
    paths[1] = str(changed_png)
    changed = Dataset.from_dict({"id": corpus["id"], "image": paths}, features=corpus.features)

    model = load_colqwen3(fixture_paths.checkpoint, dtype="float32")
    processor = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    store = PageStore(tmp_path / "pages")

    def encode(dataset, revision="rev"):
        enc = ColQwen3Encoder(
            model,
            processor,
            model_name=MODEL_NAME,
            model_revision=revision,
            page_store=store,
            page_batch_size=4,
        )
        loader = create_dataloader(
            dataset, task_metadata=task.metadata, prompt_type=PromptType.document, batch_size=4
        )
        out = enc.encode(
            loader,
            task_metadata=task.metadata,
            hf_split="test",
            hf_subset="en",
            prompt_type=PromptType.document,
        )
        return out, enc.stats

    before, stats = encode(corpus)
    assert stats["pages_encoded"] == 4
    after, stats = encode(changed)  # same task, same dataset revision, one image's bytes differ
    assert stats["pages_encoded"] == 1 and stats["pages_from_disk"] == 3
    assert not torch.equal(before[1], after[1])
    assert all(torch.equal(before[i], after[i]) for i in (0, 2, 3))
    _, stats = encode(corpus, revision="another-checkpoint")  # another model key: nothing reused
    assert stats["pages_encoded"] == 4 and stats["pages_from_disk"] == 0

    # the fixture's dataset revision covers its image bytes, so mteb's result cache cannot go stale either
    copy = tmp_path / "fixture-copy"
    shutil.copytree(fixture_paths.task, copy)
    assert fixture_revision(copy) == fixture_revision(fixture_paths.task)
    shutil.copy(changed_png, copy / "corpus" / f"{corpus[1]['id']}.png")
    assert fixture_revision(copy) != fixture_revision(fixture_paths.task)


@pytest.mark.slow
def test_interrupted_evaluation_resumes_without_reencoding_finished_pages(base, fixture_paths, tmp_path):
    from colq_sweep.evaluate import evaluate_model

    first, _, _ = base
    spec = _spec(fixture_paths, languages=("en",))
    crashing = Recorder(fixture_paths.checkpoint, fail_at_page_batch=3)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        evaluate_model(crashing, spec, MODEL_NAME, "base", tmp_path / "results", tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 8  # two finished batches of 4
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    rec = Recorder(fixture_paths.checkpoint)
    resumed = evaluate_model(rec, spec, MODEL_NAME, "base", tmp_path / "results", tmp_path / "cache")
    assert resumed.timing["pages_from_disk"] == 8 and resumed.timing["pages_encoded"] == 56
    assert rec.page_batches == 14
    assert resumed.entries == [_by_subset(first.entries)["en"]]


# ------------------------------------------------------------------------------------------ task selection


def test_fixture_language_filter_selects_only_that_subset(fixture_paths):
    from colq_sweep.evaluate import build_tasks, task_entries

    tasks = build_tasks(_spec(fixture_paths, languages=("fr",)))
    assert task_entries(tasks) == [(FIXTURE_TASK, "fr")]
    assert not tasks[0].data_loaded


def test_all_public_vidore_tasks_give_71_entries_without_downloading():
    from colq_sweep.evaluate import build_tasks, task_entries

    names = [t for b in ("ViDoRe(v1)", "ViDoRe(v2)", "ViDoRe(v3)") for t in benchmark_tasks(b)]
    assert len(names) == 22
    spec = EvalSpec(tasks=tuple(names))
    tasks = build_tasks(spec)
    assert len(tasks) == 22 and not any(t.data_loaded for t in tasks)
    entries = task_entries(tasks)
    assert len(entries) == 71 and entries == spec.entries()
    assert all(re.fullmatch(r"[0-9a-f]{40}", t.metadata.revision) for t in tasks)  # mteb's pinned revisions

    french = task_entries(build_tasks(EvalSpec(tasks=tuple(names), languages=("fr",))))
    assert len(french) == 11 and {s for _, s in french} == {"french"}


@pytest.mark.slow
def test_cached_result_without_per_query_scores_is_evaluated_again(base, fixture_paths, tmp_path):
    from colq_sweep.evaluate import evaluate_model

    first, _, root = base
    shutil.copytree(root / "results", tmp_path / "results")
    rev_dir = tmp_path / "results" / "results" / "local__tiny-colqwen3" / "base"
    (rev_dir / f"{FIXTURE_TASK}.per_query.jsonl").unlink()
    rec = Recorder(fixture_paths.checkpoint)
    again = evaluate_model(
        rec, _spec(fixture_paths), MODEL_NAME, "base", tmp_path / "results", root / "cache"
    )
    assert rec.loads == 1 and not again.from_cache
    assert again.timing["pages_encoded"] == 0 and again.timing["pages_from_disk"] == 64  # pages still cached
    assert again.entries == first.entries and again.per_query == first.per_query


# ---------------------------------------------------------------------------------------------- unit tests


def test_page_key_changes_with_every_component():
    from colq_sweep.evaluate.encoder import page_key

    base_args = ("org/model@rev", "Task", "dataset-rev", "ab" * 32)
    keys = {page_key(*base_args)}
    for i in range(4):
        args = list(base_args)
        args[i] = args[i] + "x"
        keys.add(page_key(*args))
    assert len(keys) == 5
    assert page_key(*base_args) == page_key(*base_args)


def test_page_store_round_trip_and_damaged_entries(tmp_path):
    from colq_sweep.evaluate.encoder import PageStore

    store = PageStore(tmp_path)
    emb = torch.randn(7, 32).to(torch.bfloat16)
    key = "f" * 64
    assert store.get(key) is None and key not in store
    store.put(key, emb)
    assert key in store and torch.equal(store.get(key), emb)
    assert not list(tmp_path.rglob("*.tmp"))
    store.path(key).write_bytes(b"truncated")  # a damaged file is a miss, and is removed
    assert store.get(key) is None and key not in store


def test_image_digests_hash_file_bytes_without_decoding(fixture_paths):
    import hashlib

    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import image_index

    def image_digests(dataset):
        return [digest for digest, _ in image_index(dataset)]

    task = fixture_task(fixture_paths.task)
    task.load_data()
    corpus = task.dataset["en"]["test"]["corpus"]
    expected = [
        hashlib.sha256((fixture_paths.task / "corpus" / f"{i}.png").read_bytes()).hexdigest()
        for i in corpus["id"]
    ]
    assert image_digests(corpus) == expected
    assert image_digests(corpus.select([3, 1])) == [expected[3], expected[1]]


def test_model_names_and_revisions_name_folders():
    from colq_sweep.evaluate.encoder import colqwen3_model_meta, mteb_model_name

    assert mteb_model_name("colqwen3-4b") == "colq_sweep/colqwen3-4b"
    assert mteb_model_name("TomoroAI/tomoro-colqwen3-embed-4b") == "TomoroAI/tomoro-colqwen3-embed-4b"
    meta = colqwen3_model_meta("tiny", "0123abcd")
    assert meta.model_name_as_path() == "colq_sweep__tiny" and meta.revision == "0123abcd"
    assert meta.similarity_fn_name.value == "MaxSim"
    for bad in ("", "a/b", "..", "has space"):
        with pytest.raises(ValueError):
            colqwen3_model_meta("tiny", bad)
