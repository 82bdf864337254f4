"""The ColQwen3 model class: Tomoro layout, strict loading, normalised padding-zeroed multi-vectors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from colq_sweep.model import (
    IMAGE_PROMPT,
    ColQwen3Processor,
    StrictLoadError,
    load_colqwen3,
    maxsim,
)


@pytest.fixture(scope="module")
def model_and_processor(fixture_paths):
    model = load_colqwen3(fixture_paths.checkpoint, dtype="float32")
    processor = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, max_num_visual_tokens=64)
    return model, processor


def pages(fixture_paths, n=3):
    return [Image.open(p) for p in sorted((fixture_paths.task / "corpus").glob("*.png"))[:n]]


def test_checkpoint_has_tomoro_layout(fixture_paths):
    cfg = json.loads((fixture_paths.checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "colqwen3" and cfg["architectures"] == ["ColQwen3"]
    assert cfg["text_config"]["model_type"] == "qwen3_vl_text"
    assert cfg["vision_config"]["model_type"] == "qwen3_vl_vision"
    keys = set(load_file(fixture_paths.checkpoint / "model.safetensors"))
    assert {"embedding_proj_layer.weight", "embedding_proj_layer.bias", "vlm.lm_head.weight"} <= keys
    assert all(k.startswith(("vlm.model.visual.", "vlm.model.language_model.", "vlm.lm_head.", "embedding_proj_layer.")) for k in keys)
    assert any(k.startswith("vlm.model.visual.") for k in keys)
    # every decoder Linear can be quantized with group_size 128
    t = cfg["text_config"]
    assert t["hidden_size"] % 128 == 0 and t["intermediate_size"] % 128 == 0
    assert (t["num_attention_heads"] * t["head_dim"]) % 128 == 0


def test_fixture_build_is_deterministic(fixture_paths, tmp_path):
    from colq_sweep.fixtures.offline import ensure_fixtures

    again = ensure_fixtures(tmp_path / "fx")
    a = load_file(fixture_paths.checkpoint / "model.safetensors")
    b = load_file(again.checkpoint / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again.calibration.read_bytes() == fixture_paths.calibration.read_bytes())


def test_loaded_weights_equal_the_file(model_and_processor, fixture_paths):
    model, _ = model_and_processor
    stored = load_file(fixture_paths.checkpoint / "model.safetensors")
    state = model.state_dict()
    for name in ("embedding_proj_layer.weight", "vlm.model.language_model.layers.0.mlp.down_proj.weight",
                 "vlm.model.visual.blocks.0.attn.qkv.weight"):  # fmt: skip
        assert torch.equal(state[name], stored[name].float()), name


def _check_multivectors(emb: torch.Tensor, mask: torch.Tensor, dim: int) -> None:
    assert emb.ndim == 3 and emb.shape[-1] == dim and emb.shape[:2] == mask.shape
    norms = emb.norm(dim=-1)
    assert torch.allclose(norms[mask.bool()], torch.ones(()), atol=1e-4)
    assert torch.count_nonzero(emb[~mask.bool()]) == 0


def test_query_embeddings_are_normalised_and_zero_on_padding(model_and_processor):
    model, processor = model_and_processor
    batch = processor.process_queries(["What was the quarterly revenue growth?", "tax"])
    assert (batch["attention_mask"][1] == 0).any(), "the short query must be left-padded"
    with torch.no_grad():
        emb = model(**batch)
    _check_multivectors(emb, batch["attention_mask"], model.config.embed_dim)


def test_page_embeddings_are_normalised_and_zero_on_padding(model_and_processor, fixture_paths):
    model, processor = model_and_processor
    imgs = pages(fixture_paths, 2)
    imgs[1] = imgs[1].resize((96, 128))  # fewer visual tokens -> padding in the batch
    batch = processor.process_images(imgs)
    assert (batch["attention_mask"][1] == 0).any()
    with torch.no_grad():
        emb = model(**batch)
    _check_multivectors(emb, batch["attention_mask"], model.config.embed_dim)


def test_prompts_are_tomoros(model_and_processor, fixture_paths):
    _, processor = model_and_processor
    tok = processor.tokenizer
    q = processor.process_queries(["  hello world "])
    assert tok.decode(q["input_ids"][0]) == "hello world" + "<|endoftext|>" * 10
    batch = processor.process_images(pages(fixture_paths, 1))
    n_visual = int(batch["image_grid_thw"][0].prod()) // 4
    expected = IMAGE_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * n_visual)
    assert tok.decode(batch["input_ids"][0]) == expected
    assert int(batch["mm_token_type_ids"].sum()) == n_visual


def test_visual_token_cap_limits_page_resolution(fixture_paths):
    small = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, max_num_visual_tokens=16)
    big = Image.new("RGB", (1024, 1024), "white")
    grid = small.process_images([big])["image_grid_thw"][0]
    assert int(grid.prod()) // 4 <= 16


def test_maxsim_matches_a_loop():
    torch.manual_seed(0)
    q, d = torch.randn(2, 3, 4), torch.randn(5, 6, 4)
    d[1, 4:] = 0  # padding
    expected = torch.tensor([[sum(max(float(q[i, a] @ d[j, b]) for b in range(6)) for a in range(3)) for j in range(5)] for i in range(2)])
    assert torch.allclose(maxsim(q, d, batch_size=2), expected, atol=1e-5)


def _copy_with(fixture_paths, tmp_path, mutate) -> str:
    out = tmp_path / "ckpt"
    shutil.copytree(fixture_paths.checkpoint, out)
    state = load_file(out / "model.safetensors")
    mutate(state)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return str(out)


def test_missing_tensor_fails_to_load(fixture_paths, tmp_path):
    path = _copy_with(fixture_paths, tmp_path, lambda s: s.pop("embedding_proj_layer.weight"))
    with pytest.raises(StrictLoadError, match="missing: embedding_proj_layer.weight"):
        load_colqwen3(path, dtype="float32")


def test_renamed_tensor_fails_to_load(fixture_paths, tmp_path):
    def rename(s):
        s["model.language_model.norm.weight"] = s.pop("vlm.model.language_model.norm.weight")

    path = _copy_with(fixture_paths, tmp_path, rename)
    with pytest.raises(StrictLoadError, match="unexpected: model.language_model.norm.weight"):
        load_colqwen3(path, dtype="float32")


def test_misshaped_tensor_fails_to_load(fixture_paths, tmp_path):
    def reshape(s):
        s["embedding_proj_layer.bias"] = torch.zeros(7, dtype=s["embedding_proj_layer.bias"].dtype)

    path = _copy_with(fixture_paths, tmp_path, reshape)
    with pytest.raises((StrictLoadError, RuntimeError)):
        load_colqwen3(path, dtype="float32")
