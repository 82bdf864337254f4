"""Random-weight ColQwen3 checkpoints of the exact 4B and 8B shapes, for timing and sizing on a GPU without Hub
access: every Linear, norm, embedding and the vision tower have the real dimensions (Qwen3-VL-4B/8B text and
vision configs, 320-d projection), so quantization, kernels, memory and throughput are those of the real models;
only the weights (hence accuracy) are not.

    python -m colq_sweep.realshape --size 4b --out /tmp/rs/4b [--layers 36] [--device cuda]

The checkpoint is in Tomoro's layout with the fixture's small tokenizer (its ids index the real 151,936-row
embedding) and a processor capped at 1280 visual tokens. Point a config at it with
`model=colqwen3-4b model.id=null model.revision=null model.path=/tmp/rs/4b`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Qwen3-VL text decoder and vision tower of TomoroAI/tomoro-colqwen3-embed-{4b,8b} (FACTS.md; Qwen3-VL configs)
SHAPES = {
    "4b": {
        "text": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                   "out_hidden_size": 2560, "deepstack_visual_indexes": [5, 11, 17]},
        "tie_word_embeddings": True,
    },
    "8b": {
        "text": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128},
        "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                   "out_hidden_size": 4096, "deepstack_visual_indexes": [8, 16, 24]},
        "tie_word_embeddings": False,
    },
}  # fmt: skip
VOCAB = 151936
EMBED_DIM = 320


def real_shape_config(size: str, tokenizer, layers: int | None = None) -> dict:
    from colq_sweep.fixtures import tiny_config

    cfg = tiny_config(tokenizer)  # a new dict on every call
    shape = SHAPES[size]
    cfg["embed_dim"] = EMBED_DIM
    cfg["max_num_visual_tokens"] = 1280
    cfg["tie_word_embeddings"] = shape["tie_word_embeddings"]
    cfg["text_config"].update(shape["text"], vocab_size=VOCAB, max_position_embeddings=262144,
                              tie_word_embeddings=shape["tie_word_embeddings"])  # fmt: skip
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [24, 20, 20]  # sums to head_dim / 2
    if layers:
        cfg["text_config"]["num_hidden_layers"] = layers
    cfg["vision_config"].update(shape["vision"], num_position_embeddings=2304)
    return cfg


def build(size: str, out: Path, layers: int | None = None, device: str = "cuda", seed: int = 0) -> Path:
    """Write a random-weight checkpoint of `size` (bf16, Tomoro layout) to `out`."""
    from colq_sweep.fixtures import build_image_processor, build_tokenizer
    from colq_sweep.model import ColQwen3, ColQwen3Config

    if out.exists():  # a leftover of another shape (say a single-file checkpoint) would shadow the new shards
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    tokenizer = build_tokenizer(out)
    config = ColQwen3Config(**real_shape_config(size, tokenizer, layers))
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device):
        model = ColQwen3(config).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True, max_shard_size="4GB")
    build_image_processor(out, max_visual_tokens=1280)
    log.info("random-weight %s checkpoint (%d layers, %.2fB parameters) written to %s in %.1f s", size,
             config.text_config.num_hidden_layers, n / 1e9, out, time.perf_counter() - t0)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SHAPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the real 36)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build(args.size, Path(args.out), args.layers, args.device)


if __name__ == "__main__":
    main()
