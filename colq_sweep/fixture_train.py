"""Train the tiny ColQwen3 fixture on the synthetic page-retrieval task, deterministically from a seed.

    python -m colq_sweep.fixture_train --out colq_sweep/fixture_data     # rebuild the committed checkpoint
    python -m colq_sweep.fixture_train --check                           # retrain and compare with it

The model is today's fixture architecture (Tomoro layout, `colq_sweep.fixtures.tiny_config`: Qwen3-VL decoder of
2 layers, hidden 128, a 2-block vision tower, a 32-d projection) with a tokenizer trained on the synthetic task's
words. It learns to read the synthetic pages (`colq_sweep.synthetic`) from a random init:

* batches are generated, never reused: batch `step` is `synthetic.training_batch(seed, step, batch_size)`, pages
  and queries of the "train/<step>" streams; the evaluation task is another stream ("heldout");
* the retrieval loss is the evaluation's own scoring, MaxSim over every page token (prompt tokens included), as
  a listwise cross-entropy over the batch's pages with target weights by grade (grade 2 > grade 1 > 0);
* a token loss teaches reading: the last token of each concept's phrase in a query is pulled towards the visual
  tokens of that concept's glyphs in the batch and away from every other visual token. Without it, MaxSim from
  a random init collapses: every query token's best match is a prompt token that all pages share, the scores
  are equal for all pages and the retrieval loss has no gradient left.

Then the decoder gets the activation outliers of real LLMs (`add_activation_outliers`): for half of each
quantized Linear's input channels (drawn from the seed) the activation is made 16x larger and the weight column
16x smaller. This is exact (powers of two: the float model's outputs are unchanged bit for bit), but it is what
makes 4-bit weights lossy: those columns' weights sit far below their group's quantization step. Without it a
tiny model trained for minutes has Gaussian weights on which W4A16 is almost lossless (measured on this fixture:
one SignRound iteration, about round-to-nearest, changed the held-out NDCG@5 by -0.007, 40 iterations by at most
0.002, Gaussian noise of half the weights' own spread by nothing).

Float32 training is reproducible on one machine with one thread count (recorded), not across CPUs (SIMD widths
round differently), so the trained checkpoint is committed (bf16, ~1.6 MB) with `training.json`: the settings,
digests of the training data, the losses of the first steps, the held-out NDCG@5 and the files' sha256. The
tests rebuild the first steps and compare (tests/test_fixture_train.py); `--check` retrains fully.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from colq_sweep import synthetic
from colq_sweep.fixtures import (
    MAX_NUM_VISUAL_TOKENS,
    TRAINED_CHECKPOINT,
    TRAINING_RECORD,
    build_image_processor,
    build_tokenizer,
    heldout_split,
    tiny_config,
)
from colq_sweep.fsio import file_sha256

log = logging.getLogger(__name__)

RECORD_FORMAT = "colq_sweep-fixture-train-v1"
PREFIX_STEPS = 3  # steps whose data digests and losses are recorded for the rebuild test


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 0.05  # of the mean-per-query-token MaxSim in the retrieval loss
    grade_weights: tuple[float, float, float] = (0.0, 1.0, 8.0)  # listwise target weight of grade 0 / 1 / 2
    token_temperature: float = 0.1
    token_loss_weight: float = 1.0
    channel_log2_scales: tuple[int, ...] = (0, 4)  # each channel's activation scale is 2**e, e drawn from these
    threads: int = 1  # one thread: reproducible on a machine, and fair to a shared one


# ------------------------------------------------------------------------------------------------- model


def initial_model(cfg: TrainConfig, out: Path):
    """Tokenizer and image processor written to `out`; a random-init float32 model from `cfg.seed`."""
    from colq_sweep.model import ColQwen3, ColQwen3Config, ColQwen3Processor

    tokenizer = build_tokenizer(out)
    image_processor = build_image_processor(out)
    torch.manual_seed(cfg.seed)
    model = ColQwen3(ColQwen3Config(**tiny_config(tokenizer))).float()
    processor = ColQwen3Processor.build(image_processor, tokenizer, MAX_NUM_VISUAL_TOKENS)
    return model, processor


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def _concept_token(tokenizer, query: synthetic.Query, concept: int) -> int:
    """Index, within the unpadded query input, of the last token of `concept`'s phrase."""
    text = query.text.strip()
    phrase = synthetic.phrase(concept, query.language)
    start = text.index(phrase)
    end = start + len(phrase)
    offsets = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    return max(k for k, (a, b) in enumerate(offsets) if a < end and b > start)


def batch_losses(model, processor, cfg: TrainConfig, pages, queries) -> tuple[torch.Tensor, torch.Tensor]:
    """(retrieval loss, token loss) of one batch."""
    from colq_sweep.model import maxsim

    pb = processor.process_images([p.image for p in pages])
    qb = processor.process_queries([q.text for q in queries])
    P = model(**pb)  # (pages, tokens, dim), zero at padding
    Q = model(**qb)
    n_query_tokens = qb["attention_mask"].sum(-1, keepdim=True)
    scores = maxsim(Q, P) / n_query_tokens
    grades = torch.tensor([[synthetic.grade(q, p) for p in pages] for q in queries])
    target = torch.tensor(cfg.grade_weights)[grades]
    target = target / target.sum(-1, keepdim=True)
    retrieval = -(target * torch.log_softmax(scores / cfg.temperature, -1)).sum(-1).mean()

    # token loss: concept phrase (last token) <-> visual tokens of that concept's glyphs
    q_vecs, q_labels = [], []
    for i, q in enumerate(queries):
        pad = int((qb["attention_mask"][i] == 0).sum())
        for c in q.concepts:
            q_vecs.append(Q[i, pad + _concept_token(processor.tokenizer, q, c)])
            q_labels.append(c)
    visual = pb["mm_token_type_ids"].bool()
    v_vecs = P[visual]
    v_labels = torch.full((v_vecs.shape[0],), -1)
    offset = 0
    for j, page in enumerate(pages):
        for k, c in enumerate(page.concepts):
            v_labels[offset + page.token_index(k)] = c
        offset += int(visual[j].sum())
    positive = (torch.tensor(q_labels)[:, None] == v_labels[None, :]).float()
    logp = torch.log_softmax(torch.stack(q_vecs) @ v_vecs.T / cfg.token_temperature, -1)
    token = -((logp * positive).sum(-1) / positive.sum(-1)).mean()
    return retrieval, token


def train(model, processor, cfg: TrainConfig, steps: int | None = None, on_step=None) -> list[dict]:
    """Train in place for `steps` (default cfg.steps) of the schedule of cfg.steps; return per-step records."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    start = [p.detach().clone() for p in model.parameters()]
    history = []
    for step in range(cfg.steps if steps is None else steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(cfg, step)
        pages, queries = synthetic.training_batch(cfg.seed, step, cfg.batch_size)
        retrieval, token = batch_losses(model, processor, cfg, pages, queries)
        loss = retrieval + cfg.token_loss_weight * token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        rec = {"step": step, "loss": loss.item(), "retrieval": retrieval.item(), "token": token.item(),
               "grad_norm": grad_norm.item()}  # fmt: skip
        if step < PREFIX_STEPS:  # how far the optimizer has moved the weights (checks lr, schedule, clipping)
            with torch.no_grad():
                moved = sum(float((p - p0).pow(2).sum()) for p, p0 in zip(model.parameters(), start, strict=True))
            rec["update_norm"] = math.sqrt(moved)
        history.append(rec)
        if on_step is not None:
            on_step(rec)
    model.eval()
    return history


def add_activation_outliers(state: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, list[int]]:
    """Spread the activation scales of every decoder Linear's input channels the way trained LLMs have them, in
    place and exactly: each channel draws an exponent e from `cfg.channel_log2_scales`; its activation is
    multiplied by 2**e and its weight column divided by 2**e (powers of two: every product, hence the float
    model's output, stays the same). Returns each rescaled module's exponents.

    * input_layernorm gain x s, q/k/v_proj columns / s; post_attention_layernorm gain x s, gate/up_proj columns / s;
    * v_proj rows x s, o_proj columns / s (for each query head that shares the kv head);
    * up_proj rows x s, down_proj columns / s (the SwiGLU product is linear in up).
    """
    rng = random.Random(f"colq-fixture-outliers/{cfg.seed}")
    prefix = "vlm.model.language_model.layers."
    layers = sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})
    chosen: dict[str, list[int]] = {}

    def scales(name: str, n: int) -> torch.Tensor:
        chosen[name] = [rng.choice(cfg.channel_log2_scales) for _ in range(n)]
        return torch.tensor([2.0**e for e in chosen[name]])

    for layer in layers:
        p = f"{prefix}{layer}."
        attn, mlp = p + "self_attn.", p + "mlp."
        for norm, linears in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):  # fmt: skip
            gain = state[f"{p}{norm}.weight"]
            s = scales(p + norm, gain.numel()).to(gain.dtype)
            gain *= s
            for m in linears:
                state[f"{p}{m}.weight"] /= s[None, :]
        v, o = state[attn + "v_proj.weight"], state[attn + "o_proj.weight"]
        s = scales(attn + "v_proj", v.shape[0]).to(v.dtype)
        v *= s[:, None]
        o /= s.repeat(o.shape[1] // v.shape[0])[None, :]
        up, down = state[mlp + "up_proj.weight"], state[mlp + "down_proj.weight"]
        s = scales(mlp + "up_proj", up.shape[0]).to(up.dtype)
        up *= s[:, None]
        down /= s[None, :]
    return chosen


# -------------------------------------------------------------------------------------------- evaluation


def ndcg_at_k(scores: list[float], qrel: dict[int, int], k: int = 5) -> float:
    """trec_eval's ndcg_cut (linear gains, log2 discount), as mteb computes it through pytrec_eval."""
    order = sorted(range(len(scores)), key=lambda j: -scores[j])[:k]
    dcg = sum(qrel.get(j, 0) / math.log2(r + 2) for r, j in enumerate(order))
    ideal = sorted(qrel.values(), reverse=True)[:k]
    return dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal))


@torch.no_grad()
def heldout_ndcg(model, processor, batch_size: int = 16) -> dict[str, float]:
    """Mean NDCG@5 per language on the held-out task (the quick in-training view of what mteb reports)."""
    from colq_sweep.model import maxsim

    split = heldout_split()
    pages = []
    for i in range(0, len(split.pages), batch_size):
        batch = processor.process_images([p.image for p in split.pages[i : i + batch_size]])
        out = model(**batch)
        pages += [o[m.bool()] for o, m in zip(out, batch["attention_mask"], strict=True)]
    padded = torch.nn.utils.rnn.pad_sequence(pages, batch_first=True)
    result = {}
    for lang in synthetic.LANGUAGES:
        batch = processor.process_queries([q.text for q, _ in split.queries[lang]])
        scores = maxsim(model(**batch).float(), padded)
        qrels = split.qrels(lang)
        result[lang] = sum(ndcg_at_k(scores[i].tolist(), qrels[i]) for i in range(len(qrels))) / len(qrels)
    return result


# ------------------------------------------------------------------------------------------------ build


def prefix_digests(cfg: TrainConfig, steps: int = PREFIX_STEPS) -> list[str]:
    return [synthetic.digest(*synthetic.training_batch(cfg.seed, s, cfg.batch_size)) for s in range(steps)]


def build(out: Path, cfg: TrainConfig = TrainConfig(), log_every: int = 100) -> dict:
    """Train and write `out/tiny-colqwen3/` (Tomoro layout, bf16) and `out/training.json`; return the record."""
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fixture-train.", dir=out))  # renamed into place when complete
    try:
        ckpt = tmp / "tiny-colqwen3"
        ckpt.mkdir()
        t0 = time.perf_counter()
        model, processor = initial_model(cfg, ckpt)

        def on_step(rec):
            if log_every and (rec["step"] % log_every == log_every - 1 or rec["step"] == cfg.steps - 1):
                log.info("step %d/%d  loss %.4f (retrieval %.4f, token %.4f)  %.0fs", rec["step"] + 1, cfg.steps,
                         rec["loss"], rec["retrieval"], rec["token"], time.perf_counter() - t0)  # fmt: skip

        history = train(model, processor, cfg, on_step=on_step)
        train_seconds = time.perf_counter() - t0
        state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        outliers = add_activation_outliers(state, cfg)
        model.load_state_dict(state)
        model.to(torch.bfloat16).save_pretrained(ckpt, safe_serialization=True)
        from colq_sweep.model import load_colqwen3

        saved = load_colqwen3(ckpt, dtype="float32")
        ndcg = heldout_ndcg(saved, processor)
        log.info("held-out NDCG@5 %s after %.0fs of training", {k: round(v, 4) for k, v in ndcg.items()},
                 train_seconds)  # fmt: skip
        record = {
            "format": RECORD_FORMAT,
            "config": dataclasses.asdict(cfg),
            "prefix": {
                "steps": PREFIX_STEPS,
                "data_sha256": prefix_digests(cfg),
                "losses": [
                    {k: history[s][k] for k in ("loss", "retrieval", "token", "update_norm")}
                    for s in range(PREFIX_STEPS)
                ],
            },
            "loss_every_100": [round(h["loss"], 5) for h in history[99::100]],
            "heldout_ndcg_at_5": ndcg,
            "channel_log2_scales": {k: sum(v) for k, v in outliers.items()},
            "train_seconds": round(train_seconds, 1),
            "machine": {"torch": torch.__version__, "threads": cfg.threads, "python": platform.python_version(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability()},  # fmt: skip
            "files": {f.name: file_sha256(f) for f in sorted(ckpt.iterdir()) if f.is_file()},
        }
        (tmp / "training.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(out / "tiny-colqwen3", ignore_errors=True)
        (ckpt).rename(out / "tiny-colqwen3")
        os.replace(tmp / "training.json", out / "training.json")
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_record(path: Path = TRAINING_RECORD) -> dict:
    return json.loads(Path(path).read_text())


def check(committed: Path = TRAINED_CHECKPOINT.parent) -> bool:
    """Retrain from the committed record's settings and compare with the committed checkpoint: True when the files
    are identical (expected on the machine and thread count that trained it) or, on another CPU, when the rebuilt
    model's held-out NDCG@5 is within 0.03 of the committed one's on both subsets."""
    from safetensors.torch import load_file

    recorded = read_record(committed / "training.json")
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded["config"].items()})
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(Path(tmp) / "fixture_data", cfg)
        a = load_file(committed / "tiny-colqwen3" / "model.safetensors")
        b = load_file(Path(tmp) / "fixture_data" / "tiny-colqwen3" / "model.safetensors")
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        identical = fresh["files"] == recorded["files"]
    ndcg_diff = max(abs(fresh["heldout_ndcg_at_5"][k] - v) for k, v in recorded["heldout_ndcg_at_5"].items())
    log.info("rebuild: files %s; max |weight diff| %.3g; held-out NDCG@5 %s vs committed %s (max diff %.4f)",
             "identical" if identical else "differ", diff, fresh["heldout_ndcg_at_5"],
             recorded["heldout_ndcg_at_5"], ndcg_diff)  # fmt: skip
    return identical or ndcg_diff <= 0.03


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/fixture_train",
                        help="folder for tiny-colqwen3/ and training.json (colq_sweep/fixture_data to update the "
                             "committed checkpoint)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--check", action="store_true", help="retrain and compare with the committed checkpoint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        raise SystemExit(0 if check() else 1)
    cfg = dataclasses.replace(TrainConfig(), seed=args.seed, steps=args.steps, threads=args.threads)
    record = build(Path(args.out), cfg)
    log.info("wrote %s (trained in %.0fs)", Path(args.out) / "tiny-colqwen3", record["train_seconds"])


if __name__ == "__main__":
    main()
