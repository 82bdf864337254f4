"""Offline fixtures, built deterministically in seconds: a tiny ColQwen3 checkpoint in the exact Tomoro layout that
really retrieves, a held-out ViDoRe-format retrieval task, and calibration text.

`python -m colq_sweep.fixtures --out outputs/fixtures` builds what is missing; tests and `make demo` call it.

* The checkpoint is the committed `colq_sweep/fixture_data/tiny-colqwen3/` (bf16 safetensors, config, tokenizer
  and image processor), trained by `python -m colq_sweep.fixture_train` on the synthetic page-retrieval task of
  `colq_sweep.synthetic`; it is copied, not retrained, so every machine evaluates the same weights.
* The task `VidoreFixtureRetrieval` is a held-out split of that synthetic task (pages and queries drawn from a
  stream the training never reads): one corpus of page images, English and French queries as two subsets,
  graded qrels (2 = the page shows both concepts the query names, 1 = one of them).
* The calibration text is generic: the fixture's words of both languages in random order (as the study
  calibrated on pile-10k, generic English, not on ViDoRe queries).

Each fixture is written into a temporary sibling directory and renamed into place when complete, so a killed
build never leaves a half fixture that looks finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from colq_sweep import synthetic
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
# The committed, trained fixture checkpoint (rebuilt by `python -m colq_sweep.fixture_train`).
FIXTURE_DATA = Path(__file__).resolve().parent / "fixture_data"
TRAINED_CHECKPOINT = FIXTURE_DATA / "tiny-colqwen3"
TRAINING_RECORD = FIXTURE_DATA / "training.json"
# The held-out evaluation task: its own stream of the synthetic task (training reads "train/<step>" streams).
TASK_SEED = 0
TASK_STREAM = "heldout"
TASK_PAGES = 64
TASK_QUERIES = 40  # per language (the report warns below 20 queries per entry)
MAX_NUM_VISUAL_TOKENS = 64  # conf/model/tiny.yaml; the largest fixture page has 48 visual tokens


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


def build_tokenizer(out: Path):
    """Byte-level BPE trained on the fixture vocabulary, with Qwen's special tokens; saved as a HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = synthetic.tokenizer_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
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
        "max_num_visual_tokens": MAX_NUM_VISUAL_TOKENS,
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


def build_image_processor(out: Path | None = None, max_visual_tokens: int = MAX_NUM_VISUAL_TOKENS):
    """Qwen3-VL's page processor (16-pixel patches, 2x2 merge) capped at `max_visual_tokens` tokens per page."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * max_visual_tokens},
    )
    if out is not None:
        image_processor.save_pretrained(out)
    return image_processor


def build_checkpoint(out: Path) -> None:
    """Copy the committed trained checkpoint (config, weights, tokenizer, image processor) into `out`."""
    if not (TRAINED_CHECKPOINT / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{TRAINED_CHECKPOINT} is missing; rebuild it with `python -m colq_sweep.fixture_train`"
        )
    for f in sorted(TRAINED_CHECKPOINT.iterdir()):
        if f.is_file():
            shutil.copyfile(f, out / f.name)


def heldout_split() -> synthetic.Split:
    return synthetic.build_split(TASK_SEED, TASK_STREAM, TASK_PAGES, TASK_QUERIES)


def build_task(out: Path) -> None:
    """The held-out split as a ViDoRe-shaped task: one corpus of page images, a query subset per language,
    graded qrels."""
    split = heldout_split()
    (out / "corpus").mkdir(parents=True)
    corpus = []
    for i, page in enumerate(split.pages):
        doc_id = f"page-{i:03d}"
        page.image.save(out / "corpus" / f"{doc_id}.png")
        corpus.append({"id": doc_id, "image": f"corpus/{doc_id}.png"})
    (out / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    for lang in synthetic.LANGUAGES:
        queries, qrels = [], {}
        for n, ((query, _), graded) in enumerate(zip(split.queries[lang], split.qrels(lang), strict=True)):
            qid = f"{lang}-{n:03d}"
            queries.append({"id": qid, "text": query.text})
            qrels[qid] = {corpus[i]["id"]: g for i, g in sorted(graded.items())}
        (out / f"queries-{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
        (out / f"qrels-{lang}.json").write_text(json.dumps(qrels, indent=1, sort_keys=True))
    (out / "task.json").write_text(
        json.dumps({"name": "VidoreFixtureRetrieval", "languages": {"en": "eng-Latn", "fr": "fra-Latn"}}, indent=1)
    )


def build_calibration(path: Path, n: int = 64, words: int = 300, seed: int = 0) -> None:
    texts = synthetic.calibration_texts(seed, n, words)
    atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))


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
