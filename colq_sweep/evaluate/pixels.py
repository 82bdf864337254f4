"""Page pixels as tensor work (`eval.preprocess_device` cpu | cuda): the Qwen2-VL image processor's resize, rescale,
normalise and patchify written with torch ops, so they run where the tensors are, on the GPU next to the forward
instead of in the host's PIL threads. The host keeps what it must: decoding each page (the same decoder as the PIL
path, so the decoded pixels are identical) and the text side (the prompt's image tokens, whose count follows from
the page's size alone).

The one numeric difference from the PIL processor is the bicubic resize: torch's antialiased bicubic (the kernel
PIL uses, a = -0.5) computed in float32 and rounded to uint8 as PIL's is, where PIL computes in fixed point. Pages
that need no resize get the PIL path's pixel values to float32 round-off; resized ones differ by a uint8 level here
and there (tests/test_pixels.py measures it; README "Preprocessing" has the numbers at real page sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from colq_sweep.model import ColQwen3Processor

PIXELS = ("pil", "cpu", "cuda")  # the resolved `eval.preprocess_device`: the PIL processor, or tensor work there
HOST_KEY = "colq_pages"  # a host batch's uint8 pages (C, H, W), one tensor each, before `finish` makes pixel_values


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's target size: both sides multiples of `factor`, the area within [min_pixels, max_pixels],
    the aspect ratio kept as closely as that allows (Qwen2-VL's rule, as transformers implements it)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class PixelSpec:
    """What the image processor does to a page, read off the checkpoint's processor (its preprocessor_config.json
    and the visual-token cap the processor was built with)."""

    patch: int
    merge: int
    temporal: int
    min_pixels: int
    max_pixels: int
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, image_processor: Any) -> PixelSpec:
        ip = image_processor
        if getattr(ip, "resample", 3) != 3 or not (ip.do_resize and ip.do_rescale and ip.do_normalize):
            raise ValueError("the tensor page path implements bicubic resize + rescale + normalise only; "
                             f"this image processor has resample={ip.resample}, do_resize={ip.do_resize}, "
                             f"do_rescale={ip.do_rescale}, do_normalize={ip.do_normalize}: use eval.preprocess_device=pil")  # fmt: skip
        triple = lambda v: tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))  # noqa: E731
        return cls(int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size),
                   int(ip.size["shortest_edge"]), int(ip.size["longest_edge"]), float(ip.rescale_factor),
                   triple(ip.image_mean), triple(ip.image_std))  # fmt: skip

    def target(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch * self.merge, self.min_pixels, self.max_pixels)


def as_uint8(image: Any) -> torch.Tensor:
    """A decoded page as a (3, H, W) uint8 tensor of its RGB values (what the PIL processor starts from too)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def host_batch(processor: ColQwen3Processor, images: Sequence[Any], pin: bool = False) -> dict[str, Any]:
    """The host's half of a page batch: every page as uint8 (page-locked when `pin`), its grid, and the prompt's
    tokens with each page's image tokens (count = grid / merge², known from the size alone). `finish` adds
    pixel_values on whatever device it is given."""
    from colq_sweep.model import IMAGE_PROMPT

    spec = PixelSpec.of(processor.image_processor)
    pages = [as_uint8(im) for im in images]
    if pin:
        pages = [p.pin_memory() for p in pages]
    grids = []
    for p in pages:
        h, w = spec.target(p.shape[1], p.shape[2])
        grids.append([1, h // spec.patch, w // spec.patch])
    token = processor.image_token
    texts = [IMAGE_PROMPT.replace(token, token * (gh * gw // spec.merge**2)) for _, gh, gw in grids]
    text = processor.tokenizer(texts, padding="longest", return_tensors="pt", return_token_type_ids=False)
    ids = text["input_ids"]
    return {
        "input_ids": ids,
        "attention_mask": text["attention_mask"],
        "mm_token_type_ids": (ids == processor.image_token_id).to(ids.dtype),
        "image_grid_thw": torch.tensor(grids, dtype=torch.int64),
        HOST_KEY: pages,
    }


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's bicubic resize of a uint8 image, in float: separable, the width first, each pass rounded and clipped
    to uint8 as PIL stores its intermediate image (clipping the first pass's overshoot at sharp edges matters:
    resizing both sides at once differs from PIL by up to 12 levels at text edges, two passes by one)."""
    interp = torch.nn.functional.interpolate
    if x.shape[3] != w:
        x = interp(x, size=(x.shape[2], w), mode="bicubic", antialias=True, align_corners=False).round_().clamp_(0, 255)
    if x.shape[2] != h:
        x = interp(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).round_().clamp_(0, 255)
    return x


def page_pixels(page: torch.Tensor, grid: Sequence[int], spec: PixelSpec) -> torch.Tensor:
    """One uint8 (3, H, W) page, wherever it is, to its flat patches (gh * gw, C * T * P * P) in float32."""
    _, gh, gw = (int(g) for g in grid)
    h, w = gh * spec.patch, gw * spec.patch
    x = _resize(page.unsqueeze(0).float(), h, w)
    x = x[0] * spec.rescale
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    x = (x - mean) / std
    m, p, t = spec.merge, spec.patch, spec.temporal
    x = x.reshape(3, gh // m, m, p, gw // m, m, p).permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, P, P)
    x = x.unsqueeze(5).expand(*x.shape[:5], t, p, p)  # the still page repeated over the temporal patch
    return x.reshape(gh * gw, 3 * t * p * p)


def finish(batch: dict[str, Any], processor: ColQwen3Processor, device: str | torch.device,
           dtype: torch.dtype | None) -> dict[str, Any]:
    """The device's half: `host_batch`'s pages moved to `device` (asynchronously when page-locked) and made into
    pixel_values there, cast to the vision tower's dtype. Returns the model inputs."""
    spec = PixelSpec.of(processor.image_processor)
    out = {k: v for k, v in batch.items() if k != HOST_KEY}
    pages = [p.to(device, non_blocking=p.is_pinned()) for p in batch[HOST_KEY]]
    flat = torch.cat([page_pixels(p, g, spec) for p, g in zip(pages, out["image_grid_thw"].tolist(), strict=True)])
    out["pixel_values"] = flat.to(dtype) if dtype is not None else flat
    return out
