"""Page and query encoding throughput through colq_sweep's evaluation encoder, bf16 and W4A16, on one GPU.

    python bench/encode.py --checkpoint /tmp/rs/4b [--quantized outputs/models/<key>] --pages 64 --batch 8 \
        --json out.json

Pages are synthetic text pages at ViDoRe's sizes (`--page-size vidore`, the default: each public task's average
page size from mteb's own descriptive statistics, in proportion to its page count; or `--page-size 1700x2200`),
stored as PNG bytes and decoded by the encoder's workers as an evaluation's stored pages are (`--stored none`: PIL
images handed over already decoded); queries short sentences. `--pixels pil,cuda` also times the encoder with each
`eval.preprocess_device` and compares its embeddings with the PIL path's (`pixels_<p>_*`). For each
variant: pages/s and queries/s through `ColQwen3Encoder` as an evaluation runs it (decoding/preprocessing in worker
threads ahead of the forward, `pages_per_s`) and with every batch prepared in the calling thread
(`serial_pages_per_s`, the encoder before the pipeline), and with `--process` in worker processes
(`process_pages_per_s`); the same batches through a bare `model(**batch)`
(preprocessed beforehand and already on the GPU: the "plain transformers" figure) and the largest difference of
the encoder's embeddings from the bare forward's; peak GPU memory, weight memory on the GPU, and the linear-layer
floor (2 x Linear parameters x tokens at --tflops). `--profile` splits one bare forward's CUDA time into GEMM,
attention and other kernels. For W4A16 the embeddings are compared with the bf16 ones (cosine).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from colq_sweep.evaluate.encoder import ColQwen3Encoder
from colq_sweep.model import ColQwen3Processor, load_colqwen3


def pages(n: int, seed: int = 0, size: tuple[int, int] = (1024, 1280)) -> list[Image.Image]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        img = Image.new("RGB", size, tuple(rng.randint(200, 255) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for y in range(20, size[1] - 20, 24):
            draw.text((20, y), " ".join(f"w{rng.randint(0, 999)}" for _ in range(12)) + f" p{i}", fill=(0, 0, 0))
        out.append(img)
    return out


def vidore_sizes(n: int) -> list[tuple[int, int]]:
    """n page sizes in ViDoRe's mix: each public task's average page (mteb's descriptive statistics, shipped with
    mteb), in proportion to its number of pages (largest remainders)."""
    import mteb

    from colq_sweep.tasks import CATALOGUE, FIXTURE_TASK

    root = Path(mteb.__file__).parent / "descriptive_stats" / "Image" / "DocumentUnderstanding"
    mix = []
    for task in CATALOGUE:
        if task == FIXTURE_TASK or not (root / f"{task}.json").is_file():
            continue
        st = json.loads((root / f"{task}.json").read_text())["test"]["documents_image_statistics"]
        mix.append(((round(st["average_image_width"]), round(st["average_image_height"])), st["unique_images"]))
    total = sum(c for _, c in mix)
    quota = [(size, n * c / total) for size, c in mix]
    counts = [int(q) for _, q in quota]
    for i in sorted(range(len(quota)), key=lambda i: -(quota[i][1] - counts[i]))[: n - sum(counts)]:
        counts[i] += 1
    out = [size for (size, _), k in zip(quota, counts, strict=True) for _ in range(k)]
    random.Random(0).shuffle(out)
    return out


def page_sizes(spec: str, n: int) -> list[tuple[int, int]]:
    if spec == "vidore":
        return vidore_sizes(n)
    w, _, h = spec.partition("x")
    return [(int(w), int(h))] * n


def text_pages(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """Text pages (a line of words every 24 px) at the given sizes."""
    rng = random.Random(seed)
    out = []
    for i, size in enumerate(sizes):
        img = Image.new("RGB", size, tuple(rng.randint(200, 255) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for y in range(20, size[1] - 20, 24):
            draw.text((20, y), " ".join(f"w{rng.randint(0, 999)}" for _ in range(max(1, size[0] // 80))) + f" p{i}",
                      fill=(0, 0, 0))  # fmt: skip
        out.append(img)
    return out


def stored(images: list[Image.Image], fmt: str) -> list[dict]:
    """Pages as a `datasets.Image` column stores them: {"bytes", "path"} in PNG or JPEG."""
    import io

    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        out.append({"bytes": buf.getvalue(), "path": None})
    return out


def encode_stored(enc: ColQwen3Encoder, items: list[dict], batch: int) -> list:
    """Pages through the encoder's pipeline as an evaluation's stored pages: workers decode and preprocess them."""
    import datasets

    feature = datasets.Image()
    out: list = []
    for embs in enc._page_pipeline((feature, items[i : i + batch]) for i in range(0, len(items), batch)):
        out.extend(embs)
    return out


def pixel_paths(r: dict, name: str, model, processor, items, images, page_embs, args, compiled: bool) -> None:
    """The encoder with each eval.preprocess_device of --pixels: pages/s, and (eager) its embeddings against the
    PIL path's. `compiled`: the model's blocks are compiled already (compile_regions compiles in place). With
    --process, each also with worker processes (`_process`)."""
    runs = [(px, mode) for px in args.pixels.split(",") if px for mode in ("thread", "process")[: 1 + args.process]]
    for px, mode in runs:
        enc = ColQwen3Encoder(model, processor, model_name=f"bench/{name}", model_revision=px, device=args.device,
                              page_batch_size=args.batch, corpus_cache=False, compile=compiled, pixels=px,
                              preprocess_mode=mode, preprocess_workers=args.workers)  # fmt: skip
        run = (lambda e, n: encode_stored(e, items[:n], args.batch)) if items else (lambda e, n: e.encode_pages(images[:n]))  # noqa: E731
        run(enc, args.batch * 2)  # warm-up (and compilation)
        embs: list = []
        t = timed(lambda enc=enc, embs=embs, run=run: embs.extend(run(enc, len(images))))
        tag = f"pixels_{px}" + ("_process" if mode == "process" else "") + ("_compiled" if compiled else "")
        r[f"{tag}_pages_per_s"] = len(images) / t
        if not compiled:
            cos = [torch.nn.functional.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)
                   for a, b in zip(embs, page_embs, strict=True)]  # fmt: skip
            r[f"{tag}_min_cosine_vs_pil"] = min(c.min().item() for c in cos)
            r[f"{tag}_mean_cosine_vs_pil"] = sum(c.mean().item() for c in cos) / len(cos)
            r[f"{tag}_max_abs_diff_vs_pil"] = max_diff(embs, page_embs)
        enc.release()


def loop_profile(r: dict, name: str, model, processor, items, images, args, top: int = 15) -> None:
    """Where the encoder's page loop spends its time with the last --pixels path (eager): the GPU's busy share of
    the wall time (CUDA kernel time / wall) and the host ops with the most self time, all threads together."""
    from torch.profiler import ProfilerActivity, profile

    px = [p for p in args.pixels.split(",") if p][-1]
    enc = ColQwen3Encoder(model, processor, model_name=f"bench/{name}", model_revision=px, device=args.device,
                          page_batch_size=args.batch, corpus_cache=False, pixels=px)  # fmt: skip
    n = min(len(images), args.batch * 4)
    run = (lambda: encode_stored(enc, items[:n], args.batch)) if items else (lambda: enc.encode_pages(images[:n]))  # noqa: E731
    run()  # warm-up
    sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        sync()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 1e6
    host = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in events), key=lambda x: -x[1])[:top]
    r["loop_profile"] = {"pixels": px, "pages": n, "wall_s": wall, "gpu_busy_s": gpu, "gpu_busy_share": gpu / wall,
                         "host_top": [(k[:80], round(t, 4), c) for k, t, c in host]}  # fmt: skip
    enc.release()


def linear_params(model) -> tuple[int, int]:
    """(text decoder + projection, vision tower) parameters held in Linear-like layers (packed ones counted)."""
    text = vision = 0
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if hasattr(mod, "qweight"):
            n = mod.qweight.numel() * 8  # int32 holding 8 int4 values
        elif isinstance(mod, torch.nn.Linear) and w is not None:
            n = w.numel()
        else:
            continue
        if ".visual." in f".{name}.":
            vision += n
        elif "lm_head" not in name:
            text += n
    return text, vision


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def profile_forward(model, batch, top: int = 12) -> dict:
    """CUDA time of one plain forward by kernel class (GEMM, attention, other) and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(**batch)
        torch.cuda.synchronize()
    rows = [(e.key, e.self_device_time_total) for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(t for _, t in rows)
    classes = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for name, t in rows:
        low = name.lower()
        kind = "attention" if ("flash" in low or "attention" in low or "fmha" in low) else (
            "gemm" if any(k in low for k in ("gemm", "cutlass", "sm90", "matmul", "humming", "nvjet", "xmma")) else "other")
        classes[kind] += t
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": total / 1e3, "share": {k: v / total for k, v in classes.items()},
            "top": [(n[:90], t / 1e3) for n, t in rows[:top]]}  # fmt: skip


def plain_forward(model, batches) -> list:
    out_embs: list = []
    with torch.inference_mode():
        for b in batches:
            out = model(**b)
            out_embs.extend(out[i][b["attention_mask"][i].bool()] for i in range(out.shape[0]))
    return out_embs


def max_diff(embs, ref) -> float:
    return max((a.float().cpu() - b.float().cpu()).abs().max().item() for a, b in zip(embs, ref, strict=False))


def compiled_variant(r, encoder, model, images, queries, batches, page_embs, args, procs=None) -> None:
    comp = encoder(None, compile=True)
    t0 = time.perf_counter()
    comp.encode_pages(images[: args.batch * 2])  # compiles (dynamic shapes: once)
    comp.encode_queries(queries[: args.qbatch])
    r["compile_s"] = time.perf_counter() - t0
    reset_peak()
    comp_embs: list = []
    t_comp = timed(lambda: comp_embs.extend(comp.encode_pages(images)))
    r["compiled_peak_gib"] = peak_gib()
    r["compiled_pages_per_s"] = len(images) / t_comp
    r["compiled_queries_per_s"] = len(queries) / timed(lambda: comp.encode_queries(queries))
    r["compiled_plain_pages_per_s"] = sum(int(b["input_ids"].shape[0]) for b in batches) / timed(
        lambda: plain_forward(model, batches)
    )
    r["compiled_max_abs_diff_vs_eager"] = max_diff(comp_embs, page_embs)
    r["compiled_mean_cosine_vs_eager"] = sum(
        torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(comp_embs, page_embs, strict=True)
    ) / len(page_embs)  # fmt: skip
    if procs is not None:  # the same worker processes feeding the compiled blocks
        r["compiled_process_pages_per_s"] = len(images) / timed(lambda: procs.encode_pages(images))
    if args.profile:
        r["compiled_profile"] = profile_forward(model, batches[0])


def run_variant(name, model, processor, images, queries, args, floor_pages_per_s=None) -> dict:
    def encoder(workers, compile=False, mode="thread"):
        return ColQwen3Encoder(model, processor, model_name=f"bench/{name}", model_revision="bench", device=args.device,
                               page_batch_size=args.batch, query_batch_size=args.qbatch, corpus_cache=False,
                               preprocess_workers=workers, compile=compile, preprocess_mode=mode)  # fmt: skip

    fast, serial = encoder(args.workers), encoder(0)
    items = stored(images, args.stored) if args.stored != "none" else None
    encode = (lambda e, ims: encode_stored(e, items[: len(ims)], args.batch)) if items else (lambda e, ims: e.encode_pages(ims))  # noqa: E731
    encode(fast, images[: args.batch * 2])  # warm-up (kernel JIT, allocator, threads)
    fast.encode_queries(queries[: args.qbatch])
    reset_peak()
    page_embs: list = []
    t_pages = timed(lambda: page_embs.extend(encode(fast, images)))
    peak = peak_gib()
    few = images[: args.serial_pages]
    t_serial = timed(lambda: serial.encode_pages(few))
    t_queries = timed(lambda: fast.encode_queries(queries))
    batches = [processor.process_images(few[i : i + args.batch]) for i in range(0, len(few), args.batch)]
    batches = [{k: v.to(args.device) for k, v in b.items()} for b in batches]
    plain_embs: list = []
    t_plain = timed(lambda: plain_embs.extend(plain_forward(model, batches)))
    procs = None
    if args.process:  # preprocess_mode=process: worker processes (started and warmed up outside the timing)
        procs = encoder(None, mode="process")
        procs.encode_pages(images[: args.batch * 2])
        proc_embs: list = []
        t_proc = timed(lambda: proc_embs.extend(procs.encode_pages(images)))
    tokens = int(batches[0]["attention_mask"][0].sum())
    text_p, vis_p = linear_params(model)
    vis_tokens = tokens * 4  # patches before the 2x2 merge
    floor_s = 2 * (text_p * tokens + vis_p * vis_tokens) / (args.tflops * 1e12)
    if floor_pages_per_s:  # a packed model: the same FLOPs as its bf16 original (kernels repack qweight)
        floor_s = 1 / floor_pages_per_s
    r = {
        "variant": name, "pages": len(images), "batch": args.batch, "tokens_per_page": tokens,
        "preprocess_workers": fast.pages.workers,
        "pages_per_s": len(images) / t_pages, "serial_pages_per_s": len(few) / t_serial,
        "plain_pages_per_s": len(few) / t_plain, "max_abs_diff_vs_plain": max_diff(page_embs, plain_embs),
        "queries_per_s": len(queries) / t_queries, "peak_gib": peak,
        **({"process_pages_per_s": len(images) / t_proc, "process_max_abs_diff": max_diff(proc_embs, page_embs)}
           if procs else {}),
        "weight_gib": weight_bytes(model) / 2**30, "floor_pages_per_s": 1 / floor_s,
        "kernel": type(model.get_submodule("vlm.model.language_model.layers.0.mlp.down_proj")).__name__,
    }  # fmt: skip
    if args.profile:
        r["profile"] = profile_forward(model, batches[0])
    if args.pixels:  # before compiling: compile_regions compiles the model's blocks in place
        pixel_paths(r, name, model, processor, items, images, page_embs, args, compiled=False)
    if args.loop_profile and args.pixels:
        loop_profile(r, name, model, processor, items, images, args)
    if args.compile:  # eval.compile=true: the same model with its blocks compiled in place
        try:
            compiled_variant(r, encoder, model, images, queries, batches, page_embs, args, procs)
            if args.pixels:
                pixel_paths(r, name, model, processor, items, images, page_embs, args, compiled=True)
        except Exception as e:  # noqa: BLE001  (a kernel that dynamo cannot trace: report it, keep the eager figures)
            r["compile_error"] = repr(e)[:400]
            print(name, "compile failed:", r["compile_error"])
    if procs is not None:
        procs.release()
    best = max(r[k] for k in ("pages_per_s", "compiled_pages_per_s", "process_pages_per_s", "compiled_process_pages_per_s") if k in r)
    r["pct_of_floor"] = 100 * best / r["floor_pages_per_s"]
    r["plain_pct_of_floor"] = 100 * r["plain_pages_per_s"] / r["floor_pages_per_s"]
    if "loop_profile" in r:
        lp = r["loop_profile"]
        print(name, f"loop profile ({lp['pixels']}, {lp['pages']} pages): wall {lp['wall_s']:.2f} s, GPU busy {lp['gpu_busy_s']:.2f} s "
              f"({100 * lp['gpu_busy_share']:.0f}%)")  # fmt: skip
        for k, t, c in lp["host_top"]:
            print(f"  {t:8.3f} s  x{c:<6d} {k}")
    for key in ("profile", "compiled_profile"):
        if key in r:
            print(name, key, json.dumps(r[key]["share"]), f"{r[key]['total_ms']:.1f} ms/batch")
            for n, ms in r[key]["top"]:
                print(f"  {ms:8.2f} ms  {n}")
    return r, page_embs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--fixture", action="store_true", help="the tiny fixture model and small pages (a CPU check)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quantized", default=None)
    ap.add_argument("--pages", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--qbatch", type=int, default=64)
    ap.add_argument("--tflops", type=float, default=790.0, help="measured bf16 matmul rate of the card")
    ap.add_argument("--serial-pages", type=int, default=64, help="pages for the serial and bare-forward figures")
    ap.add_argument("--compile", action="store_true", help="also eval.compile=true (blocks compiled in place)")
    ap.add_argument("--process", action="store_true", help="also eval.preprocess_mode=process (worker processes)")
    ap.add_argument("--profile", action="store_true", help="CUDA time of one plain forward by kernel class")
    ap.add_argument("--page-size", default="vidore", help="vidore (ViDoRe's size mix) or WxH, e.g. 1700x2200")
    ap.add_argument("--stored", default="png", choices=("png", "jpeg", "none"),
                    help="pages as stored bytes the workers decode (an evaluation's path), or none: decoded images")
    ap.add_argument("--pixels", default="", help="also time these eval.preprocess_device paths, e.g. pil,cuda")
    ap.add_argument("--workers", type=int, default=None, help="eval.preprocess_workers (default auto)")
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (the GIL's hand-over)")
    ap.add_argument("--loop-profile", action="store_true", help="profile the encoder's page loop (last --pixels path)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.switch_interval:
        import sys

        sys.setswitchinterval(args.switch_interval)
    tokens = 1280
    if args.fixture:
        from colq_sweep.fixtures.offline import ensure_fixtures

        args.checkpoint, tokens = str(ensure_fixtures(tempfile.mkdtemp(prefix="encode_")).checkpoint), 64
    elif not args.checkpoint:
        ap.error("give --checkpoint or --fixture")
    processor = ColQwen3Processor.from_checkpoint(args.checkpoint, tokens)
    sizes = page_sizes(args.page_size, args.pages)
    images = text_pages(sizes, 0)
    print("page sizes:", sorted(set(sizes)) if len(set(sizes)) < 8 else f"{len(set(sizes))} sizes, mean "
          f"{sum(w for w, _ in sizes) / len(sizes):.0f}x{sum(h for _, h in sizes) / len(sizes):.0f}")
    queries = [f"What does section {i} report about revenue growth in {2000 + i % 25}?" for i in range(args.queries)]
    results = []
    model = load_colqwen3(args.checkpoint, dtype="bfloat16", device=args.device)
    r, base = run_variant("bf16", model, processor, images, queries, args)
    results.append(r)
    del model
    torch._dynamo.reset()  # compiled blocks keep the bf16 model's tensors alive otherwise (the W4A16 peak counted them)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if args.quantized:
        from colq_sweep.quantize.load import load_quantized

        model = load_quantized(args.quantized, backend="auto", device=args.device, dtype="bfloat16")
        r, q = run_variant(f"w4a16-{model.colq_backend}", model, processor, images, queries, args,
                           floor_pages_per_s=results[0]["floor_pages_per_s"])  # fmt: skip
        cos = [torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(base, q, strict=True)]
        r["cosine_to_bf16"] = sum(cos) / len(cos)
        r["throughput_vs_bf16"] = r["pages_per_s"] / results[0]["pages_per_s"]
        if "compiled_pages_per_s" in r and "compiled_pages_per_s" in results[0]:
            r["compiled_throughput_vs_bf16"] = r["compiled_pages_per_s"] / results[0]["compiled_pages_per_s"]
        r["weights_vs_bf16"] = r["weight_gib"] / results[0]["weight_gib"]
        results.append(r)
    cols = ["variant", "kernel", "pages_per_s", "serial_pages_per_s", "process_pages_per_s", "plain_pages_per_s",
            "compiled_pages_per_s", "compiled_process_pages_per_s", "compiled_plain_pages_per_s", "floor_pages_per_s", "pct_of_floor", "max_abs_diff_vs_plain",
            "compiled_max_abs_diff_vs_eager", "compile_s", "queries_per_s", "compiled_queries_per_s", "peak_gib",
            "weight_gib"]  # fmt: skip
    cols = [c for c in cols if any(c in r for r in results)]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
