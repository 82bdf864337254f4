"""What a candidate costs, predicted before it is built: the order a tolerance search tries candidates in.

`bytes` (the default): the deployed footprint, weights + index.
- Weights, from the base checkpoint's safetensors headers (no weight is read): every 2-D weight of the decoder
  blocks (and of the vision blocks with quant.vision=true, at the group each layer gets) at `bits` per weight plus
  a 16-bit scale and a `bits`-wide zero point per group; every other tensor at its own width (the fixture's W4A16
  weight files: 1.158 MB predicted, 1.169 MB written; a checkpoint's config and tokenizer files add about the same
  to every candidate). The summary shows the prediction beside the checkpoint as built.
- Index: the original's stored vectors (from its finished evaluation in the store) at the candidate's index dtype,
  divided by its pool factor (Ward pooling keeps ceil(n / k) of a page's n vectors). When the candidates differ in
  index settings and no evaluation of the original is stored, the search evaluates the original first.
`quant_time`: the tuning work, calibration tokens x tuning steps x quantized weights (signround: iters steps;
  opt_rtn and the awq preprocessor: one calibrated pass each; rtn: none), a proxy for GPU time that orders a
  model's candidates the way their measured quantization times do; ties go to the smaller footprint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from colq_sweep import contract as R

COSTS = ("bytes", "quant_time")


@dataclass(frozen=True)
class Cost:
    weights_bytes: float
    index_bytes: float | None  # None: unknown (no stored evaluation of the original)
    tuning_work: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + (self.index_bytes or 0.0)

    def sort_key(self, kind: str) -> tuple:
        return (self.total_bytes, self.tuning_work) if kind == "bytes" else (self.tuning_work, self.total_bytes)

    def describe(self, kind: str) -> str:
        """`1.57 MB (1.31 MB weights + 0.266 MB index)`; quant_time: `work 6.04e+09, 1.31 MB`."""
        size = _mb(self.total_bytes)
        if self.index_bytes is not None:
            size += f" ({_mb(self.weights_bytes)} weights + {_mb(self.index_bytes)} index)"
        return size if kind == "bytes" else f"work {self.tuning_work:.3g}, {size}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.3g} MB" if n < 1e9 else f"{n / 1e9:.3g} GB"


def checkpoint_shapes(point) -> tuple[dict[str, dict], int]:
    """The base checkpoint's tensor headers (name -> dtype, shape) and its embedding width, without reading a
    weight: a local checkpoint's files, the Hub snapshot in the cache, or else the safetensors headers read from
    the Hub (range requests: nothing is downloaded but the headers and config.json)."""
    from colq_sweep.quantize.tensors import read_safetensors_header, safetensors_files

    model = point.model
    ckpt = Path(model.path) if model.path else None
    if ckpt is None:
        from huggingface_hub import snapshot_download

        try:
            ckpt = Path(snapshot_download(repo_id=model.id, revision=model.revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: read the headers from the Hub
            ckpt = None
    if ckpt is not None:
        headers: dict[str, dict] = {}
        for f in safetensors_files(ckpt):
            headers.update(read_safetensors_header(f))
        return headers, int(json.loads((ckpt / "config.json").read_text()).get("embed_dim") or 0)
    from huggingface_hub import get_safetensors_metadata, hf_hub_download

    meta = get_safetensors_metadata(model.id, revision=model.revision)
    headers = {name: {"dtype": t.dtype, "shape": list(t.shape)} for f in meta.files_metadata.values()
               for name, t in f.tensors.items()}  # fmt: skip
    config = json.loads(Path(hf_hub_download(model.id, "config.json", revision=model.revision)).read_text())
    return headers, int(config.get("embed_dim") or 0)




def _group(quant, name: str, in_features: int) -> int | None:
    """The group a 2-D weight gets (-1: per row), None when it stays 16-bit: the rule of the build
    (quantize/methods/autoround/multimodal.py vision_groups for the vision blocks)."""
    from colq_sweep.quantize.export import QUANT_BLOCKS
    from colq_sweep.quantize.methods.autoround.multimodal import VISION_BLOCKS

    if name.startswith(QUANT_BLOCKS + "."):
        return quant.group_size
    if name.startswith(VISION_BLOCKS + ".") and getattr(quant, "vision", False):
        from colq_sweep.quantize.methods.autoround.multimodal import vision_group

        return vision_group(in_features, quant.vision_group_size, quant.vision_scheme is not None)
    return None


def predict(quant, headers: dict[str, dict], index, vectors: float | None, embed_dim: int, calib_tokens: float = 0.0) -> Cost:
    """The cost of a point with quantization `quant` (a QuantSpec) and index `index` (an IndexSpec) on a checkpoint
    of these tensor `headers` (checkpoint_shapes); `vectors`: the original's stored vectors over the evaluation
    (None: unknown)."""
    from colq_sweep.evaluate.index import stored_bytes
    from colq_sweep.quantize.sizes import DTYPE_BITS

    weights = 0.0
    quantized = 0.0
    for name, meta in headers.items():
        n = math.prod(meta["shape"])
        width = DTYPE_BITS.get(meta["dtype"], 16)
        group = _group(quant, name, meta["shape"][1]) if quant.enabled and len(meta["shape"]) == 2 else None
        if group is None:
            weights += n * width / 8
            continue
        rows, cols = meta["shape"]
        groups = rows * (1 if group == -1 else math.ceil(cols / group))
        weights += n * quant.bits / 8 + groups * (16 + quant.bits) / 8
        quantized += n
    index_bytes = None
    if vectors is not None:
        index_bytes = float(stored_bytes(math.ceil(vectors / index.pool_factor), embed_dim, index.dtype))
    return Cost(weights, index_bytes, calib_tokens * _steps(quant) * quantized)


def _steps(quant) -> float:
    """Calibrated passes over the calibration set (see the module docstring)."""
    if not quant.enabled or not getattr(quant, "needs_calibration", False):
        return 0.0
    algorithms = getattr(quant, "algorithms", ())
    steps = float(quant.iters) if quant.block == "signround" else 1.0
    return steps + sum(1.0 for a in algorithms[:-1])  # awq's smoothing search: one pass


def calibration_tokens(point) -> float:
    """Tokens auto-round runs through the model per pass: nsamples x seqlen (the longest sample)."""
    q = point.quant
    if not getattr(q, "needs_calibration", False):
        return 0.0
    return float(q.nsamples * q.seqlen)


def built_bytes(metrics: dict[str, float]) -> float | None:
    """A finished point's checkpoint on disk, from its metrics (any role: `size/total_bytes`)."""
    v = R.tracked(metrics).get(R.TOTAL_BYTES)
    return None if v is None else float(v)
