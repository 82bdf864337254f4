"""Quantization stage: AutoRound W4A16 on the tiny fixture, the artifact cache, loading back, size accounting.

The fixture is quantized once per session (iters=2, nsamples=4, seqlen=32, batch_size=2: seconds on 2 CPU cores);
tests that need a quantized artifact use that one.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from colq_sweep import keys, runtime
from colq_sweep.quantize import artifacts, calibration, dequant, errors, export, kernels, load, sizes
from colq_sweep.quantize.methods.autoround import build
from tests.helpers import artifact_key, make_point, quantize_point

LM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
INT32_EIGHTS = -2004318072  # 0x88888888: eight 4-bit zero points of 8, as a signed int32


def _base_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _lm_linear_names(tensors) -> set[str]:
    return {
        k[: -len(".weight")]
        for k in tensors
        if k.startswith(export.QUANT_BLOCKS + ".") and k.endswith(".weight") and k.split(".")[-2] in LM_LINEARS
    }


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _mixed_calibration(tmp: Path, n_long: int = 3, n_short: int = 6) -> Path:
    """n_long texts far longer than 32 tokens, n_short texts of a few tokens."""
    words = (
        "revenue growth safety energy budget network tax climate hiring engineer site quarter annual".split()
    )
    long = [" ".join(words[(i + j) % len(words)] for j in range(120)) for i in range(n_long)]
    short = [f"tax {i}" for i in range(n_short)]
    texts = [(short + long)[k] for k in sorted(range(n_short + n_long), key=lambda k: (k % n_short, k))]
    return _write_jsonl(tmp / "mixed.jsonl", texts)


class _Forbidden(AssertionError):
    pass


def _forbid_autoround(monkeypatch):
    """Make any AutoRound construction fail loudly (proves a code path never quantizes)."""

    def boom(*a, **k):
        raise _Forbidden("AutoRound was called")

    monkeypatch.setattr(build, "autoround_entry", lambda: boom)
    if "auto_round" in sys.modules:
        monkeypatch.setattr(sys.modules["auto_round"], "AutoRound", boom)


def _embed(model, processor, queries, image):
    with torch.no_grad():
        q = model(**processor.process_queries(queries)).float()
        p = model(**processor.process_images([image])).float()
    return q, p


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mask = a.norm(dim=-1) > 0
    return torch.nn.functional.cosine_similarity(a[mask], b[mask], dim=-1)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def quant_root(tmp_path_factory):
    return tmp_path_factory.mktemp("quant")


@pytest.fixture(scope="session")
def point(fixture_paths, quant_root):
    return make_point(fixture_paths, quant_root)


@pytest.fixture(scope="session")
def artifact(point, quant_root):
    """The fixture quantized once per session (AWQ export)."""
    return quantize_point(point, quant_root / "models")


@pytest.fixture(scope="session")
def page_image(fixture_paths):
    from PIL import Image

    return Image.open(fixture_paths.task / "corpus" / "page-000.png").convert("RGB")


QUERIES = ["Which page covers water cost and staff risk?", "Que dit le rapport sur budget du carbone et audit du bureau ?"]


# ------------------------------------------------------------------------------------------ fast units


def test_make_point_overrides(fixture_paths, tmp_path):
    p = make_point(
        fixture_paths, tmp_path, seqlen=64, **{"quant.format": "auto_round"}, calib={"text_field": "text"}
    )
    assert (
        p.quant.seqlen == 64 and p.quant.format == "auto_round" and p.calib.path == str(fixture_paths.calibration)
    )
    assert make_point(fixture_paths, tmp_path).quant.format == "auto_awq"


def test_artifact_key_covers_weight_inputs_only(fixture_paths, tmp_path):
    base = make_point(fixture_paths, tmp_path)
    key = artifact_key(base)
    assert keys.KEY_RE.match(key) and key == artifact_key(base)
    # bookkeeping and load-time choices do not change the weights
    for same in ({"name": "other"}, {"quant.backend": "dequant"}, {"quant.allow_fewer_samples": True},
                 {"model.dtype": "bfloat16"}, {"eval.query_batch_size": 2},
                 {"quant.low_gpu_mem_usage": True}):  # same weights, measured on an H200  # fmt: skip
        assert artifact_key(make_point(fixture_paths, tmp_path, **same)) == key, same
    # every knob that decides the weights does
    for diff in ({"seed": 1}, {"seqlen": 64}, {"nsamples": 8}, {"iters": 3}, {"batch_size": 4},
                 {"quant.format": "auto_round"}, {"quant.lr": 0.01}, {"quant.sym": False},
                 {"quant.enable_torch_compile": True}):  # fmt: skip
        assert artifact_key(make_point(fixture_paths, tmp_path, **diff)) != key, diff
    assert artifact_key(base, "sha256:" + "0" * 64) != key  # calibration content is part of the key
    # a different file with the same content would have another identity (path), and edited content another key
    copy = _write_jsonl(tmp_path / "copy.jsonl", ["a b c"])
    k1 = artifact_key(make_point(fixture_paths, tmp_path, **{"calib.path": str(copy)}))
    _write_jsonl(copy, ["a b c d"])
    assert artifact_key(make_point(fixture_paths, tmp_path, **{"calib.path": str(copy)})) != k1


def test_calib_revision_resolution(monkeypatch, tmp_path):
    from colq_sweep.config import CalibSpec

    sha = "a" * 40
    assert (
        calibration.pin(CalibSpec(source="hub", dataset="NeelNanda/pile-10k", revision=sha))
        == sha
    )
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    spec = CalibSpec(source="hub", dataset="NeelNanda/pile-10k", revision="main")
    with pytest.raises(errors.CalibrationError, match="commit sha"):
        calibration.pin(spec)
    refs = tmp_path / "datasets--NeelNanda--pile-10k" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("b" * 40)
    assert calibration.pin(spec) == "b" * 40  # the locally cached ref, recorded as a sha


def test_selection_is_what_autoround_uses(fixture_paths, tmp_path, monkeypatch):
    """Our replay of auto-round's selection gives the rows its own dataloader yields, and the pre-permuted hand-off
    file makes auto-round yield exactly those rows in the same order."""
    from auto_round.calib_dataset import get_dataloader

    from colq_sweep.model import ColQwen3Processor

    monkeypatch.setenv("AR_DISABLE_DATASET_SUBPROCESS", "1")
    tok = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64).tokenizer
    mixed = _mixed_calibration(tmp_path, n_long=5, n_short=6)
    for src, seqlen, nsamples, seed in ((fixture_paths.calibration, 32, 4, 0), (fixture_paths.calibration, 64, 6, 7),
                                        (mixed, 32, 4, 3)):  # fmt: skip
        texts = calibration.load_texts(calibration.CalibSpec(source="jsonl", path=str(src)))
        sel = calibration.select_samples(texts, tok, seqlen=seqlen, nsamples=nsamples, seed=seed)

        def rows(path, seqlen=seqlen, seed=seed, nsamples=nsamples):
            dl = get_dataloader(tok, seqlen, str(path), seed=seed, bs=2, nsamples=nsamples)
            return [r for batch in dl if batch is not None for r in batch["input_ids"].tolist()]

        assert rows(src) == sel.token_ids
        handoff = calibration.write_for_autoround(sel, tmp_path / f"handoff-{seed}.jsonl")
        assert rows(handoff) == sel.token_ids
    assert sel.used == 4 and sel.dropped_short > 0  # the mixed file drops its short texts
    assert sel.candidates_examined == sel.used + sel.dropped_short + sel.dropped_repetitive


def _pile_rows(n: int = 300) -> list[str]:
    """A pile-like mix: long texts, short ones (dropped at seqlen 32), repetitive ones, and trailing whitespace."""
    import random as _random

    rng = _random.Random(5)
    words = "revenue growth safety energy budget network tax climate hiring engineer site quarter annual".split()
    rows = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            rows.append(f"short text {i}")
        elif kind == 1:
            rows.append("cost " * 60)  # repetitive (one token of the fixture vocabulary): dropped by auto-round's filter
        else:
            rows.append(" ".join(rng.choice(words) for _ in range(rng.randint(20, 90))) + ("  \n" if kind == 4 else ""))
    return rows


@pytest.mark.slow
def test_hub_selection_is_autorounds_own_hub_loader_row_for_row(fixture_paths, tmp_path, monkeypatch):
    """`dataset="NeelNanda/pile-10k"` (what the study passed to auto-round): our selection equals auto-round's own
    Hub loader (datasets shuffle, unstripped text, short/repetitive filter), offline, from a cache in the Hub's
    layout; and the hand-off file makes auto-round's local loader yield those very rows."""
    import datasets
    from auto_round.calib_dataset import _get_dataset_impl, get_dataloader

    from colq_sweep.config import CalibSpec
    from colq_sweep.hub.cache import publish_dataset
    from colq_sweep.model import ColQwen3Processor

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setenv("AR_DISABLE_DATASET_SUBPROCESS", "1")
    rows = _pile_rows()
    publish_dataset("NeelNanda/pile-10k", {"train": lambda: ({"text": t} for t in rows)}, "c" * 40)
    spec = CalibSpec(source="hub", dataset="NeelNanda/pile-10k", revision="c" * 40, split="train")
    texts = calibration.load_texts(spec)
    assert texts == rows  # the cache holds the rows unchanged, in order
    tok = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64).tokenizer
    for seqlen, nsamples, seed in ((32, 8, 42), (48, 20, 7)):
        sel = calibration.select_samples(texts, tok, seqlen=seqlen, nsamples=nsamples, seed=seed, source="hub")
        theirs = _get_dataset_impl(tok, seqlen, "NeelNanda/pile-10k", seed=seed, nsamples=nsamples)
        assert [r.tolist() for r in theirs["input_ids"]] == sel.token_ids and sel.used == nsamples
        assert sel.semantics == calibration.SEMANTICS["hub"] and sel.dropped_short and sel.dropped_repetitive
        local = calibration.select_samples(texts, tok, seqlen=seqlen, nsamples=nsamples, seed=seed, source="jsonl")
        assert local.source_indices != sel.source_indices  # the local-file semantics pick other rows
        handoff = calibration.write_for_autoround(sel, tmp_path / f"handoff-{seed}.jsonl")
        dl = get_dataloader(tok, seqlen, str(handoff), seed=seed, bs=2, nsamples=nsamples)
        assert [r for b in dl if b is not None for r in b["input_ids"].tolist()] == sel.token_ids


def test_insufficient_samples_is_a_clear_error(fixture_paths, tmp_path, monkeypatch):
    _forbid_autoround(monkeypatch)
    mixed = _mixed_calibration(tmp_path)  # 3 usable at seqlen 32
    p = make_point(fixture_paths, tmp_path, nsamples=4, **{"calib.path": str(mixed)})
    models = tmp_path / "models"
    with pytest.raises(
        errors.CalibrationError, match=r"only 3 of the requested nsamples=4.*allow_fewer_samples"
    ):
        quantize_point(p, models)
    assert [e.name for e in models.iterdir()] == [".locks"]  # no artifact, no temp dir left behind
    with pytest.raises(errors.CalibrationError, match="only 0 of"):  # zero is never allowed
        quantize_point(
            make_point(fixture_paths, tmp_path, seqlen=4096, **{"quant.allow_fewer_samples": True}), models
        )


def test_clean_incomplete_removes_only_dead_leftovers(tmp_path):
    models = tmp_path / "models"
    k1, k2, k3, k4 = "1" * 20, "2" * 20, "3" * 20, "4" * 20
    (models / f".{k1}.tmp-123-abcd").mkdir(parents=True)  # killed mid-build
    (models / f".{k1}.tmp-123-abcd" / "model.safetensors").write_bytes(b"x" * 10)
    (models / k2).mkdir()  # renamed but no manifest (cannot happen by us, but never trust it)
    (models / k2 / "config.json").write_text("{}")
    good = models / k3
    good.mkdir()
    (good / "config.json").write_text("{}")
    (good / artifacts.MANIFEST).write_text(
        json.dumps({"schema": keys.ARTIFACT_SCHEMA, "key": k3, "files": {"config.json": {"size": 2}}})
    )
    (models / "not-ours").mkdir()
    building = models / f".{k4}.tmp-999-beef"
    building.mkdir()
    with artifacts.key_lock(models, k4):  # another process is building k4 right now
        removed = artifacts.clean_incomplete(models)
    assert sorted(p.name for p in removed) == sorted([f".{k1}.tmp-123-abcd", k2])
    assert good.is_dir() and (models / "not-ours").is_dir() and building.is_dir()
    assert artifacts.verify_artifact(good) == (True, "")
    (good / "config.json").write_text("{ }")  # size changed -> no longer complete
    assert not artifacts.verify_artifact(good)[0]
    removed = artifacts.clean_incomplete(models)  # k4's lock is released now: its temp dir is a dead leftover too
    assert sorted(p.name for p in removed) == sorted([good.name, building.name])
    assert sorted(p.name for p in models.iterdir()) == [".locks", "not-ours"]


def test_missing_backend_is_a_clear_error(monkeypatch):
    if not runtime.module_available("gptqmodel"):
        with pytest.raises(errors.BackendUnavailableError, match="gptqmodel.*not installed"):
            kernels.resolve_backend("gptqmodel", "cuda")
    if not runtime.module_available("humming"):
        with pytest.raises(errors.BackendUnavailableError, match="humming-kernels, which is not installed"):
            kernels.resolve_backend("humming", "cuda")
    with pytest.raises(errors.BackendUnavailableError, match="needs a CUDA device"):
        kernels.resolve_backend("humming", "cpu")
    # auto on CUDA: the first kernel package installed, humming before gptqmodel; none -> a clear error
    monkeypatch.setattr(kernels, "module_available", lambda name: name in ("humming", "gptqmodel"))
    assert kernels.resolve_backend("auto", "cuda:0") == "humming"
    monkeypatch.setattr(kernels, "module_available", lambda name: name == "gptqmodel")
    assert kernels.resolve_backend("auto", "cuda") == "gptqmodel"
    monkeypatch.setattr(kernels, "module_available", lambda name: False)
    with pytest.raises(errors.BackendUnavailableError, match="none is installed.*humming-kernels"):
        kernels.resolve_backend("auto", "cuda")
    monkeypatch.undo()
    with pytest.raises(errors.BackendUnavailableError, match="CUDA"):
        kernels.resolve_backend("gptqmodel", "cpu")
    with pytest.raises(errors.BackendUnavailableError, match="CPU only"):
        kernels.resolve_backend("ark", "cuda")
    assert kernels.resolve_backend("auto", "cpu") == "ark" and kernels.resolve_backend("dequant", "cuda") == "dequant"
    monkeypatch.setattr(kernels, "module_available", lambda name: False)
    with pytest.raises(errors.BackendUnavailableError, match="auto-round-lib"):
        kernels.resolve_backend("ark", "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.resolve_backend("marlin", "cpu")


def test_autoround_warnings_are_watched():
    """auto-round logs (does not raise) when a calibration forward fails and skips that batch: builds fail on it."""
    import logging

    with build.AutoRoundLogWatch() as watch:
        logging.getLogger("autoround").warning("Calibration forward pass failed: boom")
        logging.getLogger("autoround").warning("some layers are skipped quantization")
    logging.getLogger("autoround").warning("after the build: not recorded")
    assert watch.fatal() == ["Calibration forward pass failed: boom"] and len(watch.messages) == 2


@pytest.mark.slow
def test_learning_rates_reach_signround(fixture_paths, tmp_path):
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    p = make_point(fixture_paths, tmp_path, **{"quant.lr": 0.0123, "quant.minmax_lr": 0.0456, "iters": 3})
    kwargs = build.autoround_kwargs(p.quant, p.seed, "cpu", str(fixture_paths.calibration))
    assert "lr" not in build.autoround_kwargs(
        make_point(fixture_paths, tmp_path).quant, 0, "cpu", "x.jsonl"
    )  # null = default
    model = load_colqwen3(fixture_paths.checkpoint, dtype="bfloat16")
    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    ar = build.autoround_entry()(
        model, tokenizer=proc.tokenizer, processor=proc, image_processor=proc.image_processor, **kwargs
    )
    cfg = ar.quantize_config
    assert (cfg.lr, cfg.minmax_lr, cfg.iters) == (0.0123, 0.0456, 3)
    # on a CPU the tuning runs in float32 whether or not the CPU has bf16 (auto-round's amp would use it if so)
    assert ar.model_context.amp is False and ar.model_context.amp_dtype == torch.float32
    assert build.autoround_kwargs(p.quant, p.seed, "cuda:0", "x.jsonl")["amp"] is True
    assert (cfg.bits, cfg.group_size, cfg.sym) == (4, 128, True)


def test_awq_unpacking_roundtrip():
    """Our unpacker inverts auto-round's AWQ packer (its interleaved nibble order) and the GPTQ sequential one."""
    from auto_round.utils.bit_packing import pack_bitstream

    g = torch.Generator().manual_seed(0)
    vals = torch.randint(0, 16, (32, 32), generator=g, dtype=torch.int32)
    # the AWQ GEMM packer: logical column j of each group of 8 goes to nibble [0,4,1,5,2,6,3,7][j]
    shifts = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7], dtype=torch.int32) * 4
    packed = (vals.reshape(32, 4, 8) << shifts).sum(-1).to(torch.int32)
    assert torch.equal(dequant.unpack_awq(packed), vals)
    assert torch.equal(dequant.unpack_int32(pack_bitstream(vals, 4, dim=0), 4, dim=0), vals)


# ------------------------------------------------------------------------------- on the quantized fixture


@pytest.mark.slow
def test_export_layout_and_kept_modules(artifact, fixture_paths):
    base = _base_tensors(fixture_paths.checkpoint)
    exp = _base_tensors(artifact.path)
    lm = _lm_linear_names(base)
    assert len(lm) == 14  # 2 layers x 7 Linear
    packed = {k[: -len(".qweight")] for k in exp if k.endswith(".qweight")}
    assert packed == lm  # every decoder Linear, nothing else
    for p in lm:
        assert exp[f"{p}.qweight"].dtype == torch.int32 and f"{p}.weight" not in exp
        assert torch.equal(
            exp[f"{p}.qzeros"], torch.full_like(exp[f"{p}.qzeros"], INT32_EIGHTS)
        )  # sym: zero 8
    # everything else is the base tensor, bit for bit, in the base dtype (auto-round exports float32 on CPU;
    # the project casts back after checking equality)
    kept = {k for k in base if k[: -len(".weight")] not in lm}
    assert kept == {k for k in exp if k.rpartition(".")[0] not in packed}
    for k in kept:
        assert exp[k].dtype == base[k].dtype == torch.bfloat16 and torch.equal(exp[k], base[k]), k
    assert any(k.startswith("vlm.model.visual.") for k in kept) and "embedding_proj_layer.weight" in kept
    assert "vlm.lm_head.weight" in kept

    cfg = json.loads((artifact.path / "config.json").read_text())
    assert cfg["model_type"] == "colqwen3" and cfg["embed_dim"] == 32
    qc = cfg["quantization_config"]
    assert (
        qc["quant_method"] == "awq"
        and qc["bits"] == 4
        and qc["group_size"] == 128
        and qc["zero_point"] is False
    )
    assert qc["modules_to_not_convert"] == ["vlm.model.visual", "vlm.lm_head", "embedding_proj_layer"]
    assert (
        json.loads((artifact.path / "quantization_config.json").read_text())["modules_to_not_convert"]
        == qc["modules_to_not_convert"]
    )
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (artifact.path / name).read_bytes() == (fixture_paths.checkpoint / name).read_bytes()
    from colq_sweep.model import ColQwen3Processor

    a = ColQwen3Processor.from_checkpoint(artifact.path, 64).process_queries(QUERIES)
    b = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64).process_queries(QUERIES)
    assert torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.slow
def test_manifest_records_inputs_files_and_costs(artifact, point):
    m = artifact.manifest
    assert not artifact.reused and artifact.path.name == artifact.key == m["key"] == artifact_key(point)
    assert artifacts.verify_artifact(artifact.path, check_hashes=True) == (True, "")
    on_disk = {f.name for f in artifact.path.iterdir() if f.is_file()} - {artifacts.MANIFEST}
    assert set(m["files"]) == on_disk and {"model.safetensors", "config.json", artifacts.CALIB_FILE} <= on_disk
    assert m["samples_used"] == m["samples_requested"] == 4
    assert m["calibration"]["rows_seen_by_model"] == 4 and m["calibration"]["samples_used"] == 4
    assert m["calibration"]["semantics"] == calibration.SEMANTICS["jsonl"]  # which loader's selection was replayed
    assert m["inputs"]["quant_knobs"] == json.loads(json.dumps(keys.quant_knobs(point)))
    assert m["inputs"]["calib_revision"].startswith("sha256:")
    ak = m["inputs"]["autoround_kwargs"]
    assert (ak["iters"], ak["nsamples"], ak["seqlen"], ak["batch_size"], ak["seed"]) == (2, 4, 32, 2, 0)
    assert ak["to_quant_block_names"] == export.QUANT_BLOCKS and ak["quant_nontext_module"] is False
    assert m["versions"]["auto_round"] == "0.16.1" and m["versions"]["torch"].count(".") == 1
    assert m["quant_seconds"] > 0 and m["memory"]["peak_rss_bytes"] > 50 * 2**20
    # the hand-off file holds exactly the samples used
    assert len((artifact.path / artifacts.CALIB_FILE).read_text().splitlines()) == 4


@pytest.mark.slow
def test_kernels_and_dequant_agree_and_differ_from_base(artifact, fixture_paths, page_image):
    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    proc = ColQwen3Processor.from_checkpoint(artifact.path, 64)
    ark = load.load_quantized(artifact.path, backend="auto", device="cpu", dtype="float32")
    assert ark.colq_backend == "ark"
    kernel_cls = type(ark.get_submodule("vlm.model.language_model.layers.0.mlp.down_proj"))
    assert kernel_cls.__module__.startswith("auto_round_kernel")  # real W4A16 CPU kernels
    deq = load.load_quantized(artifact.path, backend="dequant", device="cpu", dtype="float32")
    assert isinstance(deq.get_submodule("vlm.model.language_model.layers.0.mlp.down_proj"), torch.nn.Linear)
    base = load_colqwen3(fixture_paths.checkpoint, dtype="float32")
    eq_a, ep_a = _embed(ark, proc, QUERIES, page_image)
    eq_d, ep_d = _embed(deq, proc, QUERIES, page_image)
    eq_b, ep_b = _embed(base, proc, QUERIES, page_image)
    assert ark.colq_compute_dtype == deq.colq_compute_dtype == "float32"
    for a, d, b in ((eq_a, eq_d, eq_b), (ep_a, ep_d, ep_b)):
        assert a.shape == d.shape == b.shape
        # On every CPU (AMX/VNNI or not) the kernels compute with float32 activations: our dequantization to
        # float32 round-off (measured: max |diff| 0.0 here, 1.07e-2 when ark chose int8 on an AMX CPU).
        torch.testing.assert_close(a, d, atol=1e-6, rtol=1e-6)
        assert (a - b).abs().max() > 1e-3  # quantization changed something ...
        # ... but kept most of each vector: iters=2 is close to round-to-nearest, which the fixture's activation
        # outliers make lossy on purpose (colq_sweep/fixtures/train.py; measured mean cosine ~0.7-0.8)
        assert _cos(a, b).mean() > 0.5
    # bfloat16 activations: the kernels compute in bfloat16 and equal a bfloat16 dequantized model
    ark16 = load.load_quantized(artifact.path, backend="ark", device="cpu", dtype="bfloat16")
    deq16 = load.load_quantized(artifact.path, backend="dequant", device="cpu", dtype="bfloat16")
    assert ark16.colq_compute_dtype == "bfloat16"
    (eq16, ep16), (dq16, dp16) = _embed(ark16, proc, QUERIES, page_image), _embed(deq16, proc, QUERIES, page_image)
    torch.testing.assert_close(eq16.float(), dq16.float(), atol=1e-2, rtol=0)  # one bfloat16 step at most
    torch.testing.assert_close(ep16.float(), dp16.float(), atol=1e-2, rtol=0)
    assert _cos(eq16, eq_a).min() > 0.99


@pytest.mark.slow
def test_ark_auto_compute_is_opt_in_and_its_own_evaluation(artifact, fixture_paths, tmp_path, page_image):
    """ark's own `auto` compute mode (int8 activations on AMX/VNNI CPUs) stays selectable, is recorded with the CPU
    feature that decides it, and never counts as the same evaluation (or the same run) as the exact W4A16 path."""
    from colq_sweep.model import ColQwen3Processor
    from colq_sweep.pipeline.plan import resolve

    isa = runtime.cpu_int8_isa()
    auto = load.load_quantized(artifact.path, backend="ark", device="cpu", dtype="float32", compute="auto")
    assert auto.colq_compute_dtype == f"ark-auto-{isa}"
    # the exact-compute check refuses a model whose layers kept ark's own choice, on every CPU
    with pytest.raises(errors.BackendUnavailableError, match="do not compute in float32"):
        load.check_ark_compute(auto, artifact.path, "float32")
    exact, chosen = make_point(fixture_paths, tmp_path), make_point(fixture_paths, tmp_path, **{"quant.compute": "auto"})
    plan_exact, plan_chosen = resolve(exact), resolve(chosen)
    assert plan_exact.eval.revision != plan_chosen.eval.revision and isa in plan_chosen.eval.revision
    assert plan_chosen.eval.compute_dtype == f"ark-auto-{isa}" and plan_exact.eval.compute_dtype == "float32"
    assert plan_exact.quant.artifact_key == plan_chosen.quant.artifact_key
    assert plan_exact.run_key != plan_chosen.run_key
    assert keys.quant_knobs(exact) == keys.quant_knobs(chosen)  # the same artifact serves both
    if isa == "amx_int8":  # measured: int8 activations move the embeddings by ~1e-2 on AMX CPUs
        proc = ColQwen3Processor.from_checkpoint(artifact.path, 64)
        deq = load.load_quantized(artifact.path, backend="dequant", device="cpu", dtype="float32")
        qa, _ = _embed(auto, proc, QUERIES, page_image)
        qd, _ = _embed(deq, proc, QUERIES, page_image)
        assert (qa - qd).abs().max() > 1e-3


@pytest.mark.slow
def test_dequant_equals_int4_times_scale_by_hand(artifact, fixture_paths):
    name = "vlm.model.language_model.layers.0.mlp.down_proj"  # in=256: two groups of 128
    t = _base_tensors(artifact.path)
    qweight, qzeros, scales = t[f"{name}.qweight"], t[f"{name}.qzeros"], t[f"{name}.scales"]
    assert qweight.shape == (256, 128 // 8) and scales.shape == (2, 128) and scales.dtype == torch.float16
    # AWQ GEMM packing (auto_round/export/export_to_awq/utils.py): int4 of column 8*c + j sits in nibble order[j]
    order = [0, 4, 1, 5, 2, 6, 3, 7]
    q = torch.zeros(256, 128, dtype=torch.int64)
    for j in range(8):
        q[:, j::8] = (qweight.to(torch.int64) >> (4 * order[j])) & 0xF
    assert torch.equal(qzeros, torch.full_like(qzeros, INT32_EIGHTS))  # symmetric: every zero point is 8
    w_by_hand = ((q.float() - 8.0) * scales.float().repeat_interleave(128, dim=0)).t()  # (out, in)
    deq = load.load_quantized(artifact.path, backend="dequant", device="cpu", dtype="float32")
    assert torch.equal(deq.get_submodule(name).weight.detach(), w_by_hand)
    w_base = _base_tensors(fixture_paths.checkpoint)[f"{name}.weight"].float()
    rel = (w_by_hand - w_base).norm() / w_base.norm()
    assert 0 < rel < 0.2, rel  # a wrong nibble order would give ~1.4


@pytest.mark.slow
def test_export_equals_autoround_api(artifact, point, fixture_paths, tmp_path):
    """Calling AutoRound directly on the same model, arguments, calibration file and seed gives the same tensors, and
    so does low_gpu_mem_usage=True (the setting is in no key because it does not change the weights)."""
    from auto_round import AutoRound
    from safetensors.torch import load_file

    from colq_sweep.model import ColQwen3Processor, load_colqwen3

    model = load_colqwen3(fixture_paths.checkpoint, dtype="bfloat16")
    proc = ColQwen3Processor.from_checkpoint(fixture_paths.checkpoint, 64)
    kwargs = dict(
        scheme="W4A16", bits=4, group_size=128, sym=True, iters=2, nsamples=4, seqlen=32, batch_size=2, seed=0,
        low_gpu_mem_usage=False, enable_torch_compile=False, amp=False, device_map="cpu", dataset=str(fixture_paths.calibration),
        quant_nontext_module=False, to_quant_block_names="vlm.model.language_model.layers",
        layer_config={"embedding_proj_layer": {"bits": 16}},
    )  # fmt: skip
    assert build.autoround_kwargs(point.quant, point.seed, "cpu", str(fixture_paths.calibration)) == kwargs
    kwargs["low_gpu_mem_usage"] = True
    gc.collect()
    gc.freeze()  # only speed: auto-round gc.collect()s after every layer
    try:
        ar = AutoRound(
            model, tokenizer=proc.tokenizer, processor=proc, image_processor=proc.image_processor, **kwargs
        )
        ar.quantize_and_save(str(tmp_path / "direct"), format="auto_awq")
    finally:
        gc.unfreeze()
    (ref_file,) = (tmp_path / "direct").rglob("model.safetensors")
    ref, ours = load_file(str(ref_file)), load_file(str(artifact.path / "model.safetensors"))
    assert ref.keys() == ours.keys()
    for k in ref:
        if k.endswith((".qweight", ".qzeros", ".scales")):
            assert ref[k].dtype == ours[k].dtype and torch.equal(ref[k], ours[k]), k
        else:  # auto-round writes the 16-bit modules as float32 on CPU; ours are the same values in bf16
            assert torch.equal(ref[k].double(), ours[k].double()), k


@pytest.mark.slow
def test_second_run_reuses_without_autoround(artifact, point, quant_root, monkeypatch):
    _forbid_autoround(monkeypatch)
    again = quantize_point(point, quant_root / "models")
    assert again.reused and again.path == artifact.path and again.key == artifact.key
    assert again.manifest == json.loads(json.dumps(artifact.manifest, default=str))


@pytest.mark.slow
def test_force_rebuilds_the_artifact(artifact, point, tmp_path):
    import dataclasses
    import shutil

    models = tmp_path / "models"
    shutil.copytree(artifact.path, models / artifact.key)
    before = (models / artifact.key / "manifest.json").stat().st_mtime_ns
    again = quantize_point(dataclasses.replace(point, force=True), models)
    assert again.key == artifact.key and not again.reused
    assert (again.path / "manifest.json").stat().st_mtime_ns != before


def test_reuse_path_never_imports_autoround(artifact, point, quant_root):
    code = (
        "import sys, json\n"
        "from tests.helpers import make_point, quantize_point\n"
        "from pathlib import Path\n"
        "from colq_sweep.fixtures.offline import FixturePaths\n"
        f"fx = FixturePaths(Path({str(Path(point.model.path).parent)!r}))\n"
        f"art = quantize_point(make_point(fx, {str(quant_root)!r}), {str(quant_root / 'models')!r})\n"
        "print(json.dumps([art.reused, 'auto_round' in sys.modules]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=env["PYTHONPATH"]
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, False]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["manifest", "truncate", "tempdir"])
def test_incomplete_artifact_is_never_reused(artifact, point, tmp_path, monkeypatch, damage):
    models = tmp_path / "models"
    models.mkdir()
    target = models / (artifact.key if damage != "tempdir" else f".{artifact.key}.tmp-4242-dead")
    shutil.copytree(artifact.path, target)
    if damage == "manifest":
        (target / artifacts.MANIFEST).unlink()  # killed between the export and the manifest
    elif damage == "truncate":
        with open(target / "model.safetensors", "r+b") as f:
            f.truncate(1000)
    _forbid_autoround(monkeypatch)
    with pytest.raises(_Forbidden):  # it rebuilds (and fails here on purpose) instead of reusing
        quantize_point(point, models)
    assert sorted(e.name for e in models.iterdir()) == [".locks"]  # the damaged copy is gone, no temp left


@pytest.mark.slow
def test_fake_backend_fallback_is_refused(artifact):
    from colq_sweep.model import StrictLoadError

    # auto-round's `auto_round:fake` leaves qweight unexpected and weight missing (= random weights)
    with pytest.raises((StrictLoadError, errors.BackendUnavailableError)):
        load.load_with_autoround_backend(
            artifact.path, "auto_round:fake", "cpu", "float32", "auto_round_kernel"
        )
    ark = load.load_quantized(artifact.path, backend="ark", device="cpu", dtype="float32")
    with pytest.raises(errors.BackendUnavailableError, match="not served by gptqmodel"):
        load.check_kernel_modules(ark, artifact.path, "gptqmodel")
    with pytest.raises(errors.BackendUnavailableError):
        load.load_quantized(artifact.path, backend="gptqmodel", device="cpu")


@pytest.mark.slow
def test_size_report(artifact, fixture_paths):
    r = sizes.size_report(fixture_paths.checkpoint, artifact.path)
    assert all(isinstance(v, float) for v in r.values())
    assert 0 < r["quant_weights_bytes"] < r["base_weights_bytes"] and r["size_reduction_pct"] > 20
    assert (
        r["base_total_bytes"] > r["base_weights_bytes"] and r["quant_total_bytes"] > r["quant_weights_bytes"]
    )
    lm_params = sum(t.numel() for k, t in _base_tensors(fixture_paths.checkpoint).items()
                    if k[: -len(".weight")] in _lm_linear_names([k]))  # fmt: skip
    assert r["params_int4"] == lm_params
    assert r["params_total"] == r["base_params_total"] == r["params_int4"] + r["params_16bit"]
    assert r["params_32bit"] == 0 and r["quant_meta_bytes"] > 0
    assert r["calib_samples_used"] == 4 and r["quant_wall_time_s"] > 0 and r["quant_peak_rss_mb"] > 0


@pytest.mark.slow
def test_allow_fewer_samples_proceeds_and_records_count(fixture_paths, tmp_path):
    mixed = _mixed_calibration(tmp_path)  # 3 usable at seqlen 32; batches of 2 -> 2 used (full batches only)
    p = make_point(
        fixture_paths, tmp_path, nsamples=4, **{"calib.path": str(mixed), "quant.allow_fewer_samples": True}
    )
    art = quantize_point(p, tmp_path / "models")
    m = art.manifest
    assert m["samples_used"] == 2 and m["samples_requested"] == 4
    assert m["calibration"]["rows_seen_by_model"] == 2  # what reached the model during calibration
    assert m["calibration"]["dropped_partial_batch"] == 1 and m["calibration"]["dropped_short"] >= 1
    assert len((art.path / artifacts.CALIB_FILE).read_text().splitlines()) == 2
    assert sizes.size_report(fixture_paths.checkpoint, art.path)["calib_samples_used"] == 2


def test_partial_calibration_batch_is_refused_up_front(fixture_paths, tmp_path, monkeypatch):
    import dataclasses

    from colq_sweep.config import ConfigError

    _forbid_autoround(monkeypatch)
    with pytest.raises(ConfigError, match=r"nsamples=5: must be a multiple of batch_size \(2\).*use 4 or 6"):
        make_point(fixture_paths, tmp_path, nsamples=5, batch_size=2)
    # and the method's spec refuses it however it is made (its check runs in __post_init__): nothing reaches the stage
    with pytest.raises(ConfigError, match=r"multiple of batch_size \(2\).*use 4 or 6.*allow_fewer_samples"):
        dataclasses.replace(make_point(fixture_paths, tmp_path, nsamples=4, batch_size=2).quant, nsamples=5)
    # allowed: it gets as far as AutoRound (then trims to full batches, as the allow_fewer test shows)
    with pytest.raises(_Forbidden):
        quantize_point(
            make_point(
                fixture_paths, tmp_path, nsamples=5, batch_size=2, **{"quant.allow_fewer_samples": True}
            ),
            tmp_path / "models",
        )


@pytest.mark.slow
def test_tensors_auto_round_writes_beside_the_weights_are_merged(artifact, tmp_path, page_image):
    """Seen on CUDA: auto-round saved `embedding_proj_layer` into an extra `model_extra_tensors.safetensors` that
    nothing referenced, so the export loaded with a MISSING (randomly initialised) projection. The export fix-up
    merges it into the single weight file, and the checkpoint then loads whole and unchanged."""
    import shutil

    from safetensors.torch import load_file, save_file

    from colq_sweep.model import ColQwen3Processor, StrictLoadError
    from colq_sweep.quantize.export import fix_index_total_size

    ckpt = tmp_path / "ckpt"
    shutil.copytree(artifact.path, ckpt)
    main = load_file(str(ckpt / "model.safetensors"))
    extra = {k: main.pop(k) for k in [k for k in main if k.startswith("embedding_proj_layer.")]}
    assert sorted(extra) == ["embedding_proj_layer.bias", "embedding_proj_layer.weight"]
    save_file(main, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    save_file(extra, str(ckpt / "model_extra_tensors.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StrictLoadError, match="embedding_proj_layer"):  # transformers' loader (the kernels' path)
        load.load_quantized(ckpt, backend="ark", dtype="float32")
    fix_index_total_size(ckpt)
    assert not (ckpt / "model_extra_tensors.safetensors").exists()
    assert sorted(load_file(str(ckpt / "model.safetensors"))) == sorted([*main, *extra])
    proc = ColQwen3Processor.from_checkpoint(ckpt, 64)
    got = _embed(load.load_quantized(ckpt, backend="ark", dtype="float32"), proc, QUERIES, page_image)
    want = _embed(load.load_quantized(artifact.path, backend="ark", dtype="float32"), proc, QUERIES, page_image)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
