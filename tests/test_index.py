"""Index compression (evaluate/index.py): what int8, binary and pooled pages hold and how mteb's MaxSim scores them,
by hand; the keys (results yes, page cache no); and an index sweep end to end on the fixture that encodes no page
twice."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from colq_sweep.config.specs import IndexSpec
from colq_sweep.evaluate.index import IndexTransform, pool_tokens, quantize_int8, store, stored_bytes
from tests.helpers import make_point

ROOT = Path(__file__).resolve().parents[1]


def _maxsim_by_hand(q: list[list[float]], d: list[list[float]]) -> float:
    return sum(max(sum(a * b for a, b in zip(qt, dt, strict=True)) for dt in d) for qt in q)


def _mteb_maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
    """The score mteb gives (the encoder's similarity: its ModelMeta declares MaxSim)."""
    from colq_sweep.evaluate.encoder import ColQwen3Encoder

    enc = ColQwen3Encoder(model_name="tiny", model_revision="r", loader=lambda: None, preprocess_workers=0)
    return float(enc.similarity(q[None], d[None])[0, 0])


def test_int8_and_binary_scores_by_hand():
    q = [[0.6, -0.8, 0.0], [0.0, 0.6, 0.8]]
    d = [[0.5, 0.5, -0.7], [-0.1, 0.9, 0.42]]
    qt, dt = torch.tensor(q), torch.tensor(d)
    # binary: the signs, +-1; scored against the float query
    signs = [[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]]
    assert store(dt, "binary").tolist() == signs
    assert _maxsim_by_hand(q, signs) == pytest.approx(1.2)  # max(-0.2, -1.4) + max(-0.2, 1.4)
    assert _mteb_maxsim(qt, store(dt, "binary")) == pytest.approx(1.2, abs=1e-6)
    # int8: one fp16 scale per vector (absmax / 127), codes round(x / scale)
    deq = []
    for row in d:
        scale = float(np.float16(max(abs(x) for x in row) / 127))
        deq.append([round(float(np.float32(x)) / scale) * scale for x in row])
    codes, scales = quantize_int8(dt)
    assert codes.dtype == torch.int8 and codes[0].tolist() == [91, 91, -127] and codes[1].tolist() == [-14, 127, 59]
    assert torch.allclose(store(dt, "int8"), torch.tensor(deq), atol=1e-7)
    assert _mteb_maxsim(qt, store(dt, "int8")) == pytest.approx(_maxsim_by_hand(q, deq), abs=1e-6)
    assert _mteb_maxsim(qt, store(dt, "int8")) != pytest.approx(_mteb_maxsim(qt, dt), abs=1e-9)  # it is lossy
    assert stored_bytes(10, 320, "bf16") == 6400 and stored_bytes(10, 320, "int8") == 3220
    assert stored_bytes(10, 320, "binary") == 400 and stored_bytes(1, 3, "binary") == 1


def test_pooling_merges_near_duplicates_in_token_order():
    a, b, c = (torch.nn.functional.normalize(torch.tensor(v), dim=0) for v in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]))
    eps = torch.tensor([0.0, 0.01, 0.0])
    x = torch.stack([b, a, a + eps, b + eps.flip(0), c])
    pooled = pool_tokens(x, 2)
    assert pooled.shape == (3, 3)  # ceil(5 / 2)
    expect = [torch.nn.functional.normalize(v, dim=0) for v in (b + b + eps.flip(0), a + a + eps, c)]  # first-seen order
    for got, want in zip(pooled, expect, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(3))
    assert pool_tokens(x, 1) is x and pool_tokens(x, 64).shape == (1, 3)


def test_the_default_index_returns_the_pages_themselves_and_counts_each_page_once(tmp_path):
    from colq_sweep.evaluate.pagecache import PageStore

    pages = [torch.randn(7, 4), torch.randn(5, 4)]
    t = IndexTransform(IndexSpec())
    out = t.apply(pages, ["k1", "k2"], "T")
    assert all(o is p for o, p in zip(out, pages, strict=True))  # today's numbers exactly: nothing recomputed
    t.apply(pages, ["k1", "k2"], "T")  # a second subset of the same corpus: the same index
    assert t.metrics()["index_pages"] == 2 and t.metrics()["index_bytes_per_page"] == (7 + 5) * 4 * 2 / 2
    store_ = PageStore(tmp_path)
    pooled = IndexTransform(IndexSpec(pool_factor=2, dtype="int8"), store_)
    first = pooled.apply(pages, ["k1", "k2"], "T")
    assert [o.shape[0] for o in first] == [4, 3] and len(list(tmp_path.rglob("*.safetensors"))) == 2
    again = IndexTransform(IndexSpec(pool_factor=2, dtype="int8"), store_).apply(pages, ["k1", "k2"], "T")
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # from the pooled cache
    m = pooled.metrics()
    assert m["index_vectors_per_page"] == 3.5 and m["index_total_bytes"] == 7 * (4 + 2)


def test_keys_results_yes_pages_no(fixture_paths, tmp_path):
    from colq_sweep import keys

    base = make_point(fixture_paths, tmp_path)
    default = make_point(fixture_paths, tmp_path, **{"index.pool_factor": 1, "index.dtype": "bf16"})
    pooled = make_point(fixture_paths, tmp_path, **{"index.pool_factor": 3, "index.dtype": "int8"})
    assert keys.config_hash(default) == keys.config_hash(base) != keys.config_hash(pooled)
    assert keys.eval_revision("abc", default) == keys.page_revision("abc", default)  # as before the index existed
    assert keys.eval_revision("abc", pooled) == keys.page_revision("abc", pooled) + "-pool3-int8"
    assert keys.page_revision("abc", pooled) == keys.page_revision("abc", default)
    assert artifact(base) == artifact(pooled) and pooled.label.endswith(" index=pool3-int8")


def artifact(point):
    from colq_sweep import keys

    return keys.artifact_key(point, "rev", "sem", "cpu")


@pytest.mark.slow
def test_an_index_sweep_end_to_end(fixture_paths, tmp_path):
    """`quant=none,w4a16 index.pool_factor=1,3 index.dtype=bf16,binary` (8 jobs, one artifact; int8 is scored by hand
    above): the original's
    and the W4A16 checkpoint's pages are encoded once each, every later index setting encodes 0 pages; bytes per
    page follow the setting; the report has every setting with its interval and its index bytes."""
    import mlflow

    from colq_sweep.report import build_report

    fx, outputs = fixture_paths.root, tmp_path / "outputs"
    cmd = [sys.executable, "-m", "colq_sweep", "-m", "experiment=demo", f"outputs_dir={outputs}", "name=index",
           f"model.path={fx / 'tiny-colqwen3'}", f"calib.path={fx / 'calib.jsonl'}", f"eval.fixture_dir={fx / 'vidore-fixture'}",
           "quant=none,w4a16", "index.pool_factor=1,3", "index.dtype=bf16,binary", "seqlen=32", "iters=2", "nsamples=4",
           "batch_size=2"]  # fmt: skip
    env = {k: v for k, v in {**os.environ, "HF_HUB_OFFLINE": "1"}.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = proc.stderr[proc.stderr.index("colq_sweep summary"):]
    assert summary.count("FINISHED") == 8, summary
    client = mlflow.tracking.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("index").experiment_id], "attributes.status = 'FINISHED'")
    points = {r.data.tags["colq.label"]: r for r in runs if r.data.tags.get("colq.role") in ("baseline", "quantized")}
    assert len(points) == 8
    assert len({r.data.tags["colq.artifact_key"] for r in points.values() if r.data.params["quant.method"] != "none"}) == 1
    encoded = {k: r.data.metrics["eval/pages_encoded"] for k, r in points.items()}
    assert sorted(v for v in encoded.values() if v) == [64, 64], encoded  # one encoding per checkpoint, the rest 0
    base = points["original"].data.metrics
    dims = base["index/bytes_per_page"] / base["index/vectors_per_page"] / 2
    for label, r in points.items():
        m, dtype = r.data.metrics, r.data.params["index.dtype"]
        per_vector = {"bf16": 2 * dims, "int8": dims + 2, "binary": math.ceil(dims / 8)}[dtype]
        assert m["index/bytes_per_page"] == pytest.approx(m["index/vectors_per_page"] * per_vector), label
        pooled = r.data.params["index.pool_factor"] == "3"
        assert (m["index/vectors_per_page"] < base["index/vectors_per_page"] / 2.5) == pooled, label
    w4 = next(r for k, r in points.items() if k.startswith("w4g128") and "index=" not in k)
    w4_binary = points[w4.data.tags["colq.label"] + " index=binary"]
    assert w4.data.metrics["ndcg5/avg_all"] != w4_binary.data.metrics["ndcg5/avg_all"]
    report = build_report("index", outputs_dir=outputs, out_dir=tmp_path / "report", n_boot=300)
    md = report.read_text()
    sizes = md[md.index("## Memory efficiency"):md.index("## Speed and memory")]
    assert sizes.count("\n| `tiny` |") == 8 and sizes.count(" vectors) |") == 8
    assert "#### Effect of index.dtype" in md and "#### Effect of index.pool_factor" in md
    # the original's weights behind a compressed index have no quantization knobs: the factor is quant.method
    assert "quantized configurations: `quant.method`, `index.pool_factor`, `index.dtype`." in md
