"""What auto-round needs to calibrate a ColQwen3 on pages, and to quantize its vision tower.

- Deepstack. Qwen3-VL adds the vision tower's intermediate features ("deepstack") to the visual positions of the
  hidden state after each of its first text decoder layers, in the text model's layer loop. auto-round replays
  decoder blocks one by one from cached inputs, so that addition would be lost from layer 1 on: the later layers
  would be tuned on hidden states the model never produces. `carry_deepstack` moves the addition into the layers
  for the duration of a build: the text model hands each layer a dense `colq_deepstack` tensor (batch, K, seq,
  hidden; zero off the visual positions; a broadcast zero for a sample without an image), which auto-round caches with the other per-sample block inputs, and layer k
  < K adds its slice to its output. The model's output is unchanged, bit for bit (x + 0 = x off the visual
  positions, the same sum on them: tests/test_page_calibration.py).
- `PixelRecorder`: the pixel rows that reach the vision tower during calibration (the page counterpart of the
  build's token-row recorder).
- `vision_groups`: each vision-block Linear layer's group size, or 16-bit where no allowed group divides its input
  width (Qwen3-VL-8B's 4304-wide MLP input is not a multiple of 32).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

VISION_BLOCKS = "vlm.model.visual.blocks"  # quantized with quant.vision=true; merger, patch embed stay 16-bit


@contextlib.contextmanager
def carry_deepstack(model) -> Iterator[int]:
    """Within: deepstack features travel as a layer input (see the module's docstring). Yields K, the number of
    layers that add one."""
    import torch

    lm = model.vlm.model.language_model
    k_layers = len(getattr(model.config.vision_config, "deepstack_visual_indexes", []) or [])
    lm_forward = lm.forward

    def text_forward(*args, deepstack_visual_embeds=None, visual_pos_masks=None, **kwargs):
        # every sample carries the input: auto-round caches a block input per sample and pairs them by position, so
        # a text row or query without it would shift the pages' ones; without an image it is a broadcast zero
        embeds = kwargs["inputs_embeds"]
        if deepstack_visual_embeds is None or visual_pos_masks is None:
            return lm_forward(*args, colq_deepstack=embeds.new_zeros((embeds.shape[0], k_layers, 1, 1)), **kwargs)
        dense = embeds.new_zeros((*embeds.shape[:2], k_layers, embeds.shape[-1]))
        for k, feats in enumerate(deepstack_visual_embeds):
            dense[:, :, k][visual_pos_masks.to(dense.device)] = feats.to(dense.device, dense.dtype)
        return lm_forward(*args, colq_deepstack=dense.transpose(1, 2).contiguous(), **kwargs)

    def layer_forward(orig, k):
        @functools.wraps(orig)  # auto-round maps positional block inputs by the signature it finds
        def forward(*args, colq_deepstack: torch.Tensor | None = None, **kwargs):
            out = orig(*args, **kwargs)
            if colq_deepstack is None or k >= colq_deepstack.shape[1]:
                return out
            return out + colq_deepstack[:, k].to(out.device, out.dtype)

        return forward

    lm.forward = text_forward
    for k, layer in enumerate(lm.layers):
        layer.forward = layer_forward(layer.forward, k)
    try:
        yield k_layers
    finally:
        vars(lm).pop("forward", None)
        for layer in lm.layers:
            vars(layer).pop("forward", None)


class PixelRecorder:
    """The pixel rows (patches) that reach the vision tower while installed."""

    def __init__(self, model):
        self.rows = 0
        self.handle = model.vlm.model.visual.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        if args and hasattr(args[0], "shape"):
            self.rows += int(args[0].shape[0])

    def remove(self) -> None:
        self.handle.remove()


AUTO_GROUPS = (128, 64, 32)  # quant.vision_scheme=null: the text group, else the largest of these that divides


def vision_groups(model, group_size: int, explicit: bool) -> dict[str, int | None]:
    """Each vision-block Linear layer's group size, None where it stays 16-bit. `explicit` (quant.vision_scheme
    set): `group_size` where it divides the layer's input width, else 16-bit; otherwise (null): the text scheme's
    group where it divides, else the largest of AUTO_GROUPS that does (the fixture's 64-wide tower at 32), else
    16-bit. Recorded per layer in the export's extra_config and the manifest."""
    from torch import nn

    out: dict[str, int | None] = {}
    for name, m in sorted(model.named_modules()):
        if isinstance(m, nn.Linear) and name.startswith(VISION_BLOCKS + "."):
            out[name] = vision_group(m.in_features, group_size, explicit)
    return out


def vision_group(in_features: int, group_size: int, explicit: bool) -> int | None:
    """The rule of `vision_groups` for one layer of input width `in_features` (search/cost.py predicts with it)."""
    options = (group_size,) if explicit or group_size == -1 else (group_size, *(g for g in AUTO_GROUPS if g < group_size))
    return next((g for g in options if g == -1 or in_features % g == 0), None)
