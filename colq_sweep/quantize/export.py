"""auto-round's export turned into a Tomoro-layout checkpoint: found in its subfolder, config named with Tomoro
module names, every kept tensor byte-identical to the base's, packed tensors for exactly the decoder Linear
layers, and the base's tokenizer + image processor files copied in (the artifact is self-contained)."""

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

KEPT_MODULES = ["vlm.model.visual", "vlm.lm_head", "embedding_proj_layer"]  # Tomoro names, stay 16-bit
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


def postprocess_export(out: Path, base_dir: Path, expected: list[str]) -> dict:
    """Tomoro-layout config, kept modules restored to the base dtype, processor files, layout check."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    info: dict[str, Any] = {}
    # 1. config: model_type/embed_dim must survive; name the kept modules with Tomoro names.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "colqwen3" or "embed_dim" not in cfg:
        raise QuantizationError(f"exported config lost model_type/embed_dim: {cfg.get('model_type')!r}")
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise QuantizationError("exported config has no quantization_config")
    info["modules_to_not_convert_autoround"] = qc.get("modules_to_not_convert")
    for path in (cfg_path, out / "quantization_config.json"):
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        target = d["quantization_config"] if path == cfg_path else d
        target["modules_to_not_convert"] = list(KEPT_MODULES)
        path.write_text(json.dumps(d, indent=2) + "\n")
    info["quant_method"] = qc.get("quant_method")
    info["packing_format"] = qc.get(
        "packing_format", "auto_round:auto_awq" if qc.get("quant_method") == "awq" else None
    )

    # 2. tensors: every non-quantized tensor must equal the base's; store it in the base's dtype.
    base_tensors: dict[str, Any] = {}
    for f in safetensors_files(base_dir):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                base_tensors[k] = (f, None)
    restored, changed, new = 0, [], []
    all_names: list[str] = []
    for f in safetensors_files(out):
        with safe_open(str(f), "pt") as sf:
            metadata = sf.metadata() or {"format": "pt"}
        tensors = load_file(str(f))
        all_names += list(tensors)
        prefixes = quant_prefixes(tensors)
        dirty = False
        for name, t in tensors.items():
            if is_quant_tensor(name, prefixes) or not t.is_floating_point():
                continue
            if name not in base_tensors:
                new.append(name)
                continue
            with safe_open(str(base_tensors[name][0]), "pt") as sf:
                b = sf.get_tensor(name)
            # the exported tensor is the base tensor passed through a dtype cast (float32 on CPU; a float16
            # export would be a lossy cast): store the base tensor itself
            if b.shape != t.shape or not torch.equal(t, b.to(t.dtype)):
                changed.append(name)
                continue
            if t.dtype != b.dtype or not torch.equal(t, b):
                tensors[name] = b
                restored += 1
                dirty = True
        if dirty:
            part = f.with_name(f.name + ".part")
            save_file(tensors, str(part), metadata=metadata)
            part.replace(f)
    if changed:
        log.warning(
            "%d non-quantized tensors differ from the base checkpoint (kept as exported): %s",
            len(changed),
            changed[:5],
        )
    fix_index_total_size(out)
    info.update(restored_to_base_dtype=restored, float_tensors_changed=changed, tensors_not_in_base=new)

    # 3. layout: packed tensors for exactly the decoder Linear layers, no dense weight left for them.
    prefixes = quant_prefixes(all_names)
    missing, extra = sorted(set(expected) - prefixes), sorted(prefixes - set(expected))
    dense_left = sorted(p for p in expected if f"{p}.weight" in all_names)
    if missing or extra or dense_left:
        raise QuantizationError(
            f"export layout wrong: {len(missing)} decoder Linear layers not quantized {missing[:3]}, "
            f"{len(extra)} unexpected quantized layers {extra[:3]}, {len(dense_left)} with a dense weight left"
        )
    info["quantized_layers"] = len(prefixes)

    # 4. self-contained: the base's tokenizer + image processor files.
    copied = []
    for name in PROCESSOR_FILES:
        src = base_dir / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    info["processor_files_from_base"] = copied
    return info


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
