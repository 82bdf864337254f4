"""A method's export turned into a Tomoro-layout checkpoint: found in its subfolder, config named with Tomoro
module names, every kept tensor byte-identical to the base's, packed tensors for exactly the decoder Linear
layers, and the base's tokenizer + image processor files copied in (the artifact is self-contained).

auto-round upcasts the whole model to float32 on a CPU and exports those float32 copies of the modules it keeps;
the export gets the base tensors back after checking that every one is a plain cast of the base's."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from colq_sweep.quantize.errors import QuantizationError
from colq_sweep.quantize.tensors import (
    is_quant_tensor,
    quant_prefixes,
    read_safetensors_header,
    safetensors_files,
)

log = logging.getLogger(__name__)

QUANT_BLOCKS = "vlm.model.language_model.layers"  # what is quantized: the Qwen3-VL text decoder blocks
KEPT_MODULES = ["vlm.model.visual", "vlm.lm_head", "embedding_proj_layer"]  # Tomoro names, stay 16-bit
# with quant.vision=true: of the vision tower, its patch and position embeddings and mergers stay 16-bit
KEPT_MODULES_VISION = [f"vlm.model.visual.{m}" for m in ("patch_embed", "pos_embed", "merger", "deepstack_merger_list")]
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)


def checkpoint_dtype(ckpt_dir: str | os.PathLike) -> str:
    """The float dtype the checkpoint was saved in (config `dtype`/`torch_dtype`), default bfloat16."""
    try:
        cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "bfloat16"
    for d in (cfg, cfg.get("text_config") or {}):
        for k in ("dtype", "torch_dtype"):
            if d.get(k) in ("bfloat16", "float16", "float32"):
                return d[k]
    return "bfloat16"


def decoder_linears(model) -> list[str]:
    """The names of the Linear layers a quantization of `model` must replace: every one in the decoder blocks."""
    from torch import nn

    return sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(QUANT_BLOCKS + "."))


def kept_modules(vision: bool, vision_kept: list[str] = ()) -> list[str]:
    """The modules an export keeps 16-bit, as its config's `modules_to_not_convert` names them."""
    if not vision:
        return list(KEPT_MODULES)
    return KEPT_MODULES_VISION + sorted(vision_kept) + [m for m in KEPT_MODULES if m != "vlm.model.visual"]


def find_export_dir(raw_dir: Path, result: Any) -> Path:
    """`quantize_and_save` writes into a subfolder (`<model>-w4g128/`); find it (exactly one checkpoint)."""
    found = sorted({p.parent.resolve() for p in raw_dir.rglob("config.json")})
    if len(found) != 1:
        raise QuantizationError(
            f"expected one checkpoint under {raw_dir}, auto-round wrote {len(found)}: {found}"
        )
    named = [
        Path(x).resolve()
        for x in (result if isinstance(result, (tuple, list)) else ())
        if isinstance(x, (str, os.PathLike))
    ]
    if named and named[0] != found[0]:
        log.warning("auto-round reported %s but wrote %s", named[0], found[0])
    return found[0]


def postprocess_export(out: Path, base_dir: Path, expected: list[str], kept: list[str] | None = None,
                       overrides: dict[str, dict] | None = None) -> dict:  # fmt: skip
    """Tomoro-layout config, kept modules restored to the base dtype, layout check, processor files. `overrides`:
    per-layer settings that differ from the config's (the vision blocks' own group size), written as the
    `extra_config` auto-round's loader reads per layer (its AWQ export does not write one)."""
    info = _tomoro_config(out, list(KEPT_MODULES) if kept is None else kept, overrides or {})
    info.update(_restore_kept_tensors(out, base_dir))
    info["quantized_layers"] = _check_layout(out, expected)
    info["processor_files_from_base"] = _copy_processor_files(out, base_dir)
    return info


def _tomoro_config(out: Path, kept: list[str], overrides: dict[str, dict]) -> dict[str, Any]:
    """model_type/embed_dim must survive; the kept modules are named with Tomoro names."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "colqwen3" or "embed_dim" not in cfg:
        raise QuantizationError(f"exported config lost model_type/embed_dim: {cfg.get('model_type')!r}")
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise QuantizationError("exported config has no quantization_config")
    for path in (cfg_path, out / "quantization_config.json"):
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        target = d["quantization_config"] if path == cfg_path else d
        target["modules_to_not_convert"] = list(kept)
        if overrides:
            target["extra_config"] = {**target.get("extra_config", {}), **overrides}
        path.write_text(json.dumps(d, indent=2) + "\n")
    return {
        "modules_to_not_convert_autoround": qc.get("modules_to_not_convert"),
        "quant_method": qc.get("quant_method"),
        "packing_format": qc.get("packing_format", "auto_round:auto_awq" if qc.get("quant_method") == "awq" else None),
    }


def _restore_kept_tensors(out: Path, base_dir: Path) -> dict[str, Any]:
    """Every non-quantized tensor must equal the base's (through a dtype cast); store it in the base's dtype."""
    base_file = {k: f for f in safetensors_files(base_dir) for k in read_safetensors_header(f)}
    restored, changed, new = 0, [], []
    for f in safetensors_files(out):
        n, ch, nw = _restore_file(f, base_file)
        restored, changed, new = restored + n, changed + ch, new + nw
    if changed:
        log.warning("%d non-quantized tensors differ from the base checkpoint (kept as exported): %s", len(changed),
                    changed[:5])  # fmt: skip
    fix_index_total_size(out)
    return {"restored_to_base_dtype": restored, "float_tensors_changed": changed, "tensors_not_in_base": new}


def _restore_file(f: Path, base_file: dict[str, Path]) -> tuple[int, list[str], list[str]]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(f), "pt") as sf:
        metadata = sf.metadata() or {"format": "pt"}
    tensors = load_file(str(f))
    prefixes = quant_prefixes(tensors)
    restored, changed, new = 0, [], []
    for name, t in tensors.items():
        if is_quant_tensor(name, prefixes) or not t.is_floating_point():
            continue
        if name not in base_file:
            new.append(name)
            continue
        with safe_open(str(base_file[name]), "pt") as sf:
            b = sf.get_tensor(name)
        # the exported tensor is the base tensor passed through a dtype cast (float32 on CPU; a float16 export would
        # be a lossy cast): store the base tensor itself
        if b.shape != t.shape or not torch.equal(t, b.to(t.dtype)):
            changed.append(name)
        elif t.dtype != b.dtype or not torch.equal(t, b):
            tensors[name] = b
            restored += 1
    if restored:
        part = f.with_name(f.name + ".part")
        save_file(tensors, str(part), metadata=metadata)
        part.replace(f)
    return restored, changed, new


def _check_layout(out: Path, expected: list[str]) -> int:
    """Packed tensors for exactly the decoder Linear layers, no dense weight left for them."""
    all_names = [n for f in safetensors_files(out) for n in read_safetensors_header(f)]
    prefixes = quant_prefixes(all_names)
    missing, extra = sorted(set(expected) - prefixes), sorted(prefixes - set(expected))
    dense_left = sorted(p for p in expected if f"{p}.weight" in all_names)
    if missing or extra or dense_left:
        raise QuantizationError(
            f"export layout wrong: {len(missing)} decoder Linear layers not quantized {missing[:3]}, "
            f"{len(extra)} unexpected quantized layers {extra[:3]}, {len(dense_left)} with a dense weight left"
        )
    return len(prefixes)


def _copy_processor_files(out: Path, base_dir: Path) -> list[str]:
    """Self-contained: the base's tokenizer + image processor files."""
    copied = []
    for name in PROCESSOR_FILES:
        src = base_dir / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    return copied


def fix_index_total_size(ckpt: Path) -> None:
    """Make the checkpoint's index name every tensor of every weight file, with the right total size.

    auto-round writes tensors its shard writer did not save (seen on CUDA: `embedding_proj_layer`) into an extra
    `model_extra_tensors.safetensors` that no index references; transformers would then load a single-file or
    indexed checkpoint without them (MISSING: newly initialised). Beside a `model.safetensors` (which transformers
    reads alone, index or not) they are merged into it; a sharded checkpoint gets every tensor of every weight
    file entered in its index."""
    idx = ckpt / "model.safetensors.index.json"
    files = safetensors_files(ckpt)
    main = ckpt / "model.safetensors"
    if main in files:
        if len(files) > 1:  # transformers reads model.safetensors alone (index or not): merge the rest into it
            from safetensors import safe_open
            from safetensors.torch import load_file, save_file

            with safe_open(str(main), "pt") as sf:
                metadata = sf.metadata() or {"format": "pt"}
            tensors = load_file(str(main))
            for f in files:
                if f != main:
                    tensors.update(load_file(str(f)))
            part = main.with_name(main.name + ".part")
            save_file(tensors, str(part), metadata=metadata)
            part.replace(main)
            for f in files:
                if f != main:
                    f.unlink()
            idx.unlink(missing_ok=True)
        return
    if not idx.is_file():
        return
    d = json.loads(idx.read_text())
    weight_map = d.setdefault("weight_map", {})
    total = 0
    for f in files:
        for name, meta in read_safetensors_header(f).items():
            total += meta["data_offsets"][1] - meta["data_offsets"][0]
            if weight_map.get(name) not in {p.name for p in files}:
                weight_map[name] = f.name
    d.setdefault("metadata", {})["total_size"] = total
    idx.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
