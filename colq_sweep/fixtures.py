"""Offline fixtures, built deterministically in seconds: a tiny ColQwen3 checkpoint in the exact Tomoro layout,
a tiny ViDoRe-format retrieval task, and calibration text.

`python -m colq_sweep.fixtures --out outputs/fixtures` builds what is missing; tests and `make demo` call it.
Each fixture is written into a temporary sibling directory and renamed into place when complete, so a killed
build never leaves a half fixture that looks finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from colq_sweep.fsio import atomic_dir, atomic_write_text

log = logging.getLogger(__name__)

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A small vocabulary of themes; pages and queries are built from it so that retrieval is learnable in principle
# (the tiny model has random weights, so scores only need to be deterministic, not good).
TOPICS = {
    "revenue": ("Quarterly revenue grew", "Quelle a ete la croissance du chiffre d'affaires"),
    "safety": ("Reactor safety inspection", "Quels sont les resultats de l'inspection de surete"),
    "hiring": ("Hiring plan for engineers", "Quel est le plan de recrutement des ingenieurs"),
    "energy": ("Energy consumption per site", "Quelle est la consommation d'energie par site"),
    "tax": ("Corporate tax rate changes", "Comment le taux d'impot des societes change"),
    "climate": ("Emissions reduction targets", "Quels sont les objectifs de reduction des emissions"),
    "budget": ("Research budget allocation", "Comment le budget de recherche est reparti"),
    "network": ("Telecom network outages", "Combien de pannes du reseau telecom"),
}
WORDS = (
    "the of and to in for on with as by from at this that model page report data table figure revenue growth "
    "safety energy budget network tax climate hiring engineer site quarter annual result analysis value market "
    "cost risk plan target share total rate change policy system process design review summary section"
).split()


@dataclass(frozen=True)
class FixturePaths:
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "tiny-colqwen3"

    @property
    def task(self) -> Path:
        return self.root / "vidore-fixture"

    @property
    def calibration(self) -> Path:
        return self.root / "calib.jsonl"


def _fixture_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build_tokenizer(out: Path):
    """Byte-level BPE trained on the fixture vocabulary, with Qwen's special tokens; saved as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(WORDS)] + [t for pair in TOPICS.values() for t in pair]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
    )
    fast.save_pretrained(out)
    return fast


def tiny_config(tokenizer) -> dict:
    """Dims chosen so every decoder Linear has in_features divisible by 128 (AutoRound skips others)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return {
        "architectures": ["ColQwen3"],
        "model_type": "colqwen3",
        "embed_dim": 32,
        "padding_side": "left",
        "max_num_visual_tokens": 64,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [12, 10, 10],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "qwen3_vl_vision",
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 128,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
    }


def build_checkpoint(out: Path, seed: int = 0) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from colq_sweep.model import ColQwen3, ColQwen3Config

    tokenizer = build_tokenizer(out)
    config = ColQwen3Config(**tiny_config(tokenizer))
    torch.manual_seed(seed)
    model = ColQwen3(config).to(torch.bfloat16)  # Tomoro ships bf16 weights
    # Random init of a tiny model is near-degenerate; spread the projection so embeddings differ per token.
    with torch.no_grad():
        model.embedding_proj_layer.weight.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64},
    )
    image_processor.save_pretrained(out)


def render_page(title: str, body: str, seed: int) -> Image.Image:
    rng = random.Random(seed)
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (192, 256), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 191, 28], fill=tuple(rng.randint(0, 120) for _ in range(3)))
    draw.text((6, 8), title[:28], fill=(255, 255, 255))
    y = 36
    for i in range(0, len(body), 30):
        draw.text((6, y), body[i : i + 30], fill=(20, 20, 20))
        y += 12
        if y > 240:
            break
    return img


def build_task(out: Path, seed: int = 0) -> None:
    """A ViDoRe-shaped task: one corpus of page images, queries in English and French as separate subsets."""
    rng = random.Random(seed)
    (out / "corpus").mkdir(parents=True)
    corpus, queries, qrels = [], {"en": [], "fr": []}, {"en": {}, "fr": {}}
    for t_idx, (topic, (en_q, fr_q)) in enumerate(TOPICS.items()):
        for p in range(2):
            doc_id = f"{topic}-p{p}"
            page = render_page(f"{en_q} ({p + 1})", _fixture_text(rng, 60), seed * 1000 + t_idx * 10 + p)
            page.save(out / "corpus" / f"{doc_id}.png")
            corpus.append({"id": doc_id, "image": f"corpus/{doc_id}.png"})
        for lang, text in (("en", en_q), ("fr", fr_q)):
            qid = f"{lang}-{topic}"
            queries[lang].append({"id": qid, "text": f"{text}?"})
            qrels[lang][qid] = {f"{topic}-p0": 1, f"{topic}-p1": 1}
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    for lang in queries:
        (out / f"queries-{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries[lang]))
        (out / f"qrels-{lang}.json").write_text(json.dumps(qrels[lang], indent=1, sort_keys=True))
    (out / "task.json").write_text(
        json.dumps({"name": "VidoreFixtureRetrieval", "languages": {"en": "eng-Latn", "fr": "fra-Latn"}}, indent=1)
    )


def build_calibration(path: Path, n: int = 64, words: int = 400, seed: int = 0) -> None:
    rng = random.Random(seed)
    atomic_write_text(path, "".join(json.dumps({"text": _fixture_text(rng, words)}) + "\n" for _ in range(n)))


def ensure_fixtures(root: str | Path) -> FixturePaths:
    """Build whichever fixture is missing under `root`; return their paths."""
    paths = FixturePaths(Path(root).resolve())
    atomic_dir(paths.checkpoint, build_checkpoint)
    atomic_dir(paths.task, build_task)
    if not paths.calibration.exists():
        build_calibration(paths.calibration)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/fixtures", help="directory for the fixtures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from colq_sweep.console import quiet_library_bars

    quiet_library_bars()  # no "Writing model shards" bar for a 1.5 MB fixture
    paths = ensure_fixtures(args.out)
    log.info("fixtures ready: %s", paths.root)


if __name__ == "__main__":
    main()
