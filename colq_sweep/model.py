"""ColQwen3 in TomoroAI's checkpoint layout, without their remote code.

Tomoro's remote code breaks on transformers 5.x and `trust_remote_code=True` runs arbitrary code, so this is
our own small `PreTrainedModel` whose module tree matches their weight names exactly (`vlm.*` is a
Qwen3-VL `ForConditionalGeneration`, `embedding_proj_layer` a hidden->embed_dim Linear with bias). Loading is
strict: any missing, unexpected or mis-shaped tensor is an error, never a silent random init (colpali-engine's
ColQwen3 loads these checkpoints with random weights and no error).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

log = logging.getLogger(__name__)

# Tomoro's prompts (their processor, verbatim semantics): one page image per prompt; queries are augmented
# with ten end-of-text tokens, which act as extra query vectors in late interaction.
IMAGE_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
)
QUERY_AUGMENTATION_TOKEN = "<|endoftext|>"
QUERY_AUGMENTATION_LENGTH = 10
PATCH_SIZE = 16
MERGE_SIZE = 2


class ColQwen3Config(Qwen3VLConfig):
    """Qwen3-VL config plus the late-interaction head (`embed_dim`), saved as `model_type: colqwen3`."""

    model_type = "colqwen3"
    embed_dim: int = 320
    padding_side: str = "left"
    max_num_visual_tokens: int = 1280


class ColQwen3PreTrainedModel(PreTrainedModel):
    config_class = ColQwen3Config
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True


class ColQwen3(ColQwen3PreTrainedModel):
    """Qwen3-VL backbone -> last hidden state -> Linear(hidden, embed_dim) -> L2 normalise -> x attention mask."""

    def __init__(self, config: ColQwen3Config):
        super().__init__(config)
        self.vlm = Qwen3VLForConditionalGeneration(config)
        self.embedding_proj_layer = nn.Linear(config.text_config.hidden_size, config.embed_dim, bias=True)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only reached for modules a checkpoint does not cover (fixtures); strict loading rejects gaps anyway.
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear) and module is self.embedding_proj_layer:
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Return (batch, tokens, embed_dim) unit vectors, exactly zero at padding positions."""
        kwargs.pop("labels", None)
        kwargs.pop("use_cache", None)
        outputs = self.vlm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        proj = self.embedding_proj_layer(hidden.to(self.embedding_proj_layer.weight.dtype))
        proj = proj / proj.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return proj * attention_mask.unsqueeze(-1).to(proj.dtype)


AutoConfig.register("colqwen3", ColQwen3Config, exist_ok=True)
AutoModel.register(ColQwen3Config, ColQwen3, exist_ok=True)


class ColQwen3Processor(Qwen3VLProcessor):
    """Qwen3-VL processor that needs no video processor (hence no torchvision) and builds Tomoro's inputs."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, max_num_visual_tokens: int, revision: str | None = None
    ) -> ColQwen3Processor:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False)
        tokenizer.padding_side = "left"
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, revision=revision)
        return cls.build(image_processor, tokenizer, max_num_visual_tokens)

    @classmethod
    def build(cls, image_processor, tokenizer, max_num_visual_tokens: int) -> ColQwen3Processor:
        max_pixels = max_num_visual_tokens * (PATCH_SIZE * MERGE_SIZE) ** 2
        # The cap goes into `size` only: min/max_pixels attributes are a deprecated alias that would override it.
        image_processor.min_pixels = None
        image_processor.max_pixels = None
        image_processor.size = {
            "shortest_edge": min(image_processor.size.get("shortest_edge", max_pixels), max_pixels),
            "longest_edge": max_pixels,
        }
        tokenizer.padding_side = "left"
        return cls(image_processor=image_processor, tokenizer=tokenizer)

    def process_queries(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [q.strip() + QUERY_AUGMENTATION_TOKEN * QUERY_AUGMENTATION_LENGTH for q in queries]
        return self.tokenizer(texts, padding="longest", return_tensors="pt", return_token_type_ids=False)

    def process_images(self, images: Sequence) -> dict[str, torch.Tensor]:
        rgb = [im.convert("RGB") for im in images]
        return self(
            text=[IMAGE_PROMPT] * len(rgb),
            images=rgb,
            padding="longest",
            return_tensors="pt",
        )


@dataclass(frozen=True)
class LoadInfo:
    """What a strict load saw: the empty lists are the proof that every tensor came from the checkpoint."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


class StrictLoadError(RuntimeError):
    pass


def _check_load_info(info: dict, source: str) -> LoadInfo:
    missing = sorted(info.get("missing_keys", []) or [])
    unexpected = sorted(info.get("unexpected_keys", []) or [])
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys", []) or []))
    if missing or unexpected or mismatched:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {head(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} mis-shaped: {head(mismatched)}")
        raise StrictLoadError(
            f"{source} is not a complete ColQwen3 (Tomoro layout) checkpoint; refusing to run on random weights: "
            + "; ".join(parts)
        )
    return LoadInfo(missing, unexpected, mismatched)


def resolve_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def load_colqwen3(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: str = "bfloat16",
    device: str | torch.device = "cpu",
    **from_pretrained_kwargs,
) -> ColQwen3:
    """Load a 16-bit (or quantized, via `quantization_config=`) Tomoro-format checkpoint strictly."""
    model, info = ColQwen3.from_pretrained(
        str(path_or_id),
        revision=revision,
        dtype=resolve_dtype(dtype),
        trust_remote_code=False,
        output_loading_info=True,
        **from_pretrained_kwargs,
    )
    _check_load_info(info, str(path_or_id))
    model.eval()
    if device is not None and "device_map" not in from_pretrained_kwargs:
        model.to(device)
    return model


def compile_regions(model: ColQwen3) -> int:
    """`torch.compile` every text decoder layer and vision block in place (regional compilation: the blocks share
    one compiled graph, so compiling costs about one block, not the model). Inductor fuses what eager runs as
    separate kernels (RMSNorm's float32 round trip, rotary embeddings, activations, residual adds); the matmuls and
    attention stay library calls. Dynamic shapes: batches of other lengths do not recompile. Returns the count."""
    inner = model.vlm.model
    blocks = [*inner.language_model.layers, *inner.visual.blocks]
    for block in blocks:
        block.compile(dynamic=True)
    model.colq_compiled = True
    return len(blocks)


def maxsim(query_embeddings: torch.Tensor, doc_embeddings: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Late-interaction scores: for each query token, its best document token; summed over query tokens.

    (Q, Lq, D) x (N, Ld, D) -> (Q, N). Padding vectors are zero: a padded query token adds nothing, and a
    padded document token scores 0 (it wins a max only when every real similarity is negative — the same
    zero-padding convention as Tomoro's and mteb's scoring, so scores stay comparable with theirs).
    """
    q = query_embeddings.float()
    scores = []
    for start in range(0, doc_embeddings.shape[0], batch_size):
        d = doc_embeddings[start : start + batch_size].float().to(q.device)
        sim = torch.einsum("qid,njd->qnij", q, d)
        scores.append(sim.max(dim=-1).values.sum(dim=-1))
    return torch.cat(scores, dim=1)


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(path).iterdir() if p.is_file())


def resolve_checkpoint_dir(source: str, revision: str | None = None) -> Path:
    """A local directory holding the checkpoint: itself if local, else the Hub snapshot at `revision`.

    Offline (HF_HUB_OFFLINE=1) this only succeeds if the snapshot is already in the local HF cache.
    """
    p = Path(source)
    if p.is_dir():
        return p.resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=source, revision=revision))
