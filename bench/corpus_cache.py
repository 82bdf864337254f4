"""Corpus cache on a 6-language task: page encodes and wall time of one mteb evaluation with and without it.

    python bench/corpus_cache.py --checkpoint /tmp/rs/4b --pages 48 --queries 16 --device cuda --json out.json
    python bench/corpus_cache.py --fixture --device cpu      # the CPU check: the tiny fixture model, small pages

A ViDoRe v3-shaped task is written to a temporary folder: one corpus of `--pages` synthetic pages (1024x1280, so
1280 visual tokens at Tomoro's cap) and a query subset per language (en, fr, de, es, it, pt), in the format of the
fixture task (`colq_sweep.evaluate.fixture_task`). It is evaluated twice through mteb with `ColQwen3Encoder`:
`corpus_cache=False` (mteb's own behaviour: each language subset encodes the corpus again) and `corpus_cache=True`
(each page once, kept in memory for the task; the on-disk page store is off, so nothing carries over between the
two runs). Scores must agree; the table gives pages encoded, page-encoding seconds and wall seconds.
Targets (real shape): 6x fewer encodes, >= 4x less wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from encode import pages  # noqa: E402  (bench/ is not a package)

LANGS = {"en": "eng-Latn", "fr": "fra-Latn", "de": "deu-Latn", "es": "spa-Latn", "it": "ita-Latn", "pt": "por-Latn"}


def write_task(root: Path, n_pages: int, n_queries: int, size: tuple[int, int], seed: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "corpus").mkdir(parents=True)
    rows = []
    for i, image in enumerate(pages(n_pages, seed, size)):
        image.save(root / "corpus" / f"page-{i:04d}.png")
        rows.append({"id": f"page-{i:04d}", "image": f"corpus/page-{i:04d}.png"})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for lang in LANGS:
        queries = [{"id": f"{lang}-{q:03d}", "text": f"{lang} question {q} about page {rng.randrange(n_pages)}"}
                   for q in range(n_queries)]  # fmt: skip
        qrels = {q["id"]: {rows[rng.randrange(n_pages)]["id"]: 1} for q in queries}
        (root / f"queries-{lang}.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
        (root / f"qrels-{lang}.json").write_text(json.dumps(qrels))
    (root / "task.json").write_text(json.dumps({"name": "VidoreFixtureRetrieval", "languages": LANGS}))
    return root


def run(model, processor, task_dir: Path, cache: bool, args) -> dict:
    import mteb

    from colq_sweep.evaluate import fixture_task
    from colq_sweep.evaluate.encoder import ColQwen3Encoder

    task = fixture_task(task_dir)
    enc = ColQwen3Encoder(model, processor, model_name="bench/corpus", model_revision=f"cache-{cache}",
                          device=args.device, page_batch_size=args.batch, corpus_cache=cache)  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = mteb.evaluate(enc, task, cache=None, encode_kwargs={"batch_size": args.batch, "show_progress_bar": False},
                           co2_tracker=False, show_progress_bar=False, raise_error=True)  # fmt: skip
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    scores = {s["hf_subset"]: s["ndcg_at_10"] for s in result.task_results[0].scores["test"]}
    return {"corpus_cache": cache, "subsets": len(scores), "pages": args.pages, "pages_encoded": int(enc.stats["pages_encoded"]),
            "page_seconds": enc.stats["page_seconds"], "wall_seconds": wall, "scores": scores}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a ColQwen3 checkpoint (real shape: colq_sweep.fixtures.realshape)")
    ap.add_argument("--fixture", action="store_true", help="the tiny fixture model (CPU check)")
    ap.add_argument("--pages", type=int, default=48)
    ap.add_argument("--queries", type=int, default=16, help="per language")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    work = Path(tempfile.mkdtemp(prefix="corpus_cache_"))
    if args.fixture:
        from colq_sweep.fixtures.offline import ensure_fixtures

        checkpoint, tokens, size = ensure_fixtures(work / "fixtures").checkpoint, 64, (256, 320)
    elif args.checkpoint:
        checkpoint, tokens, size = Path(args.checkpoint), 1280, (1024, 1280)
    else:
        ap.error("give --checkpoint or --fixture")
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    model = load_colqwen3(checkpoint, dtype=dtype, device=args.device)
    processor = ColQwen3Processor.from_checkpoint(checkpoint, tokens)
    task_dir = write_task(work / "task", args.pages, args.queries, size)
    run(model, processor, task_dir, True, args)  # warm-up: kernels, allocator, page files in the OS cache
    off = run(model, processor, task_dir, False, args)
    on = run(model, processor, task_dir, True, args)
    same = all(abs(off["scores"][s] - on["scores"][s]) < 1e-6 for s in off["scores"])
    summary = {"checkpoint": str(checkpoint), "device": args.device, "dtype": dtype, "runs": [off, on],
               "encode_ratio": off["pages_encoded"] / on["pages_encoded"], "wall_ratio": off["wall_seconds"] / on["wall_seconds"],
               "scores_equal": same}  # fmt: skip
    print("corpus_cache | subsets | pages | pages encoded | page s | wall s")
    for r in (off, on):
        print(f"{r['corpus_cache']} | {r['subsets']} | {r['pages']} | {r['pages_encoded']} | {r['page_seconds']:.1f} | "
              f"{r['wall_seconds']:.1f}")  # fmt: skip
    print(f"fewer encodes: {summary['encode_ratio']:.2f}x; less wall time: {summary['wall_ratio']:.2f}x; "
          f"scores equal: {same}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
