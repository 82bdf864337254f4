"""Calibration on what the retriever reads: document pages through the model's page prompt, optionally queries
through its query prompt and text rows (`calib.kind=pages|mixed`; `text` is quantize/calibration.py alone).

auto-round has no loader for a late-interaction retriever's pages, so the samples are built here, as the encoder
builds them (`ColQwen3Processor.process_images` / `process_queries`), and handed over as a list of model-input dicts,
one sample each: auto-round's multimodal calibration runs `model(**sample)` on each (calibration/mllm.py). Pages differ
in size, so every sample is its own forward; `batch_size` keeps its meaning, samples per tuning step, as auto-round's
`gradient_accumulate_steps` (quantize/methods/autoround/build.py).

What the knobs mean here (`SEMANTICS["pages"]`, part of the artifact key):
- `nsamples`: every sample, pages + queries + text rows (`CalibSpec.counts`: `queries_share` of them queries,
  `pages_share` pages for mixed, the rest text);
- `seqlen`: the longest sample: a page's visual tokens are capped at min(model.max_num_visual_tokens, seqlen - its
  prompt's tokens) (the page is resized to fit, as the encoder resizes to its cap); a query is cut at seqlen; a text
  row is exactly seqlen tokens (as with text calibration);
- the pages: the source's rows in the order of numpy's `default_rng(seed).permutation`, the first that decode; the
  queries: the query field of the rows after them in that order; text rows: quantize/calibration.py's selection;
- the samples are then interleaved by `random.Random(seed).shuffle`.
Every sample is recorded in the artifact (`calibration_samples.jsonl`: kind, source row, token count, visual tokens,
sha256 of its inputs) and its digest in the manifest.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colq_sweep.config import CalibSpec
from colq_sweep.config.specs import PageSourceSpec
from colq_sweep.fsio import atomic_write, file_sha256
from colq_sweep.quantize import calibration
from colq_sweep.quantize.errors import CalibrationError

log = logging.getLogger(__name__)

SEMANTICS = {
    "pages": "colq pages: numpy default_rng(seed).permutation of the page rows; pages, then queries; "
    "visual tokens <= min(max_num_visual_tokens, seqlen - prompt); samples shuffled by random.Random(seed)",
}


def semantics(calib: CalibSpec) -> str:
    """Which selection the calibration samples replay (keyed with the pin)."""
    if calib.kind == "text":
        return calibration.SEMANTICS[calib.source]
    text = f"; text: {calibration.SEMANTICS[calib.source]}" if calib.reads_text else ""
    return SEMANTICS["pages"] + text


def pin_pages(p: PageSourceSpec) -> str:
    """A Hub page source's commit, or `sha256:` of a local folder's pages.jsonl and every image it names."""
    if p.source == "hub":
        return str(p.revision)
    folder = Path(str(p.path))
    h = hashlib.sha256(file_sha256(folder / "pages.jsonl").encode())
    for row in _local_rows(folder):
        h.update(file_sha256(folder / str(row["image"])).encode())
    return "sha256:" + h.hexdigest()


def pin(calib: CalibSpec) -> str:
    """What pins every input of the calibration set: the text source's pin (calibration.pin) for text; with pages,
    `pages=<pin>` (+ `;text=<pin>` for mixed)."""
    if calib.kind == "text":
        return calibration.pin(calib)
    out = f"pages={pin_pages(calib.pages)}"
    return out + (f";text={calibration.pin(calib)}" if calib.reads_text else "")


# ------------------------------------------------------------------------------------------------- the source


def _local_rows(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate((folder / "pages.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise CalibrationError(f"{folder / 'pages.jsonl'}:{lineno}: expected an object with an \"image\" file name")
        rows.append(row)
    return rows


class _Rows:
    """A page source's rows: `len`, `image(i)` (PIL), `query(i)`."""

    def __init__(self, p: PageSourceSpec):
        self.spec = p
        if p.source == "local":
            self.folder = Path(str(p.path))
            self.local = _local_rows(self.folder)
            self.ds = None
            return
        import datasets

        kw = {"data_files": {p.split: p.data_files}} if p.data_files else {}
        try:
            self.ds = datasets.load_dataset(str(p.dataset), revision=p.revision, split=p.split, **kw)
        except Exception as err:  # noqa: BLE001 - one line, not a wall
            raise CalibrationError(f"cannot load the calibration pages {p.dataset}@{p.revision} ({type(err).__name__}: "
                                   f"{err}); prefetch them on a machine with Hub access (`make prefetch`)") from err  # fmt: skip
        for col in (p.image_field, p.query_field):
            if col is not None and col not in self.ds.column_names:
                raise CalibrationError(f"{p.dataset} has no column {col!r} (columns: {self.ds.column_names})")

    def __len__(self) -> int:
        return len(self.local) if self.ds is None else len(self.ds)

    def image(self, i: int):
        from PIL import Image

        if self.ds is None:
            with Image.open(self.folder / str(self.local[i]["image"])) as im:
                return im.convert("RGB")
        value = self.ds[i][self.spec.image_field]
        if isinstance(value, dict) and value.get("bytes"):
            value = Image.open(io.BytesIO(value["bytes"]))
        return value.convert("RGB")

    def query(self, i: int) -> str | None:
        f = self.spec.query_field
        q = self.local[i].get(f) if self.ds is None else self.ds[i][f]
        return q if isinstance(q, str) and q.strip() else None


# ------------------------------------------------------------------------------------------------- the samples


@dataclass
class Sample:
    kind: str  # page | query | text
    source_index: int
    inputs: dict[str, Any]  # the model's keyword inputs, batch of one
    visual_tokens: int = 0
    text: str | None = None

    @property
    def tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def digest(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.inputs):
            t = self.inputs[k]
            h.update(k.encode() + str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def record(self) -> dict[str, Any]:
        r = {"kind": self.kind, "source_index": self.source_index, "tokens": self.tokens, "sha256": self.digest()}
        if self.kind == "page":
            r.update(visual_tokens=self.visual_tokens, grid_thw=self.inputs["image_grid_thw"][0].tolist())
        else:
            r["text"] = self.text
        return r


@dataclass
class PageCalibration:
    """The samples auto-round calibrates on, in its order, and where they came from."""

    samples: list[Sample]
    revision: str
    identity: str
    semantics: str
    nsamples_requested: int
    seqlen: int
    seed: int
    visual_budget: int
    candidates_total: int
    pages_unreadable: int = 0
    text: calibration.Selection | None = None
    record: list[dict[str, Any]] = field(default_factory=list)

    @property
    def used(self) -> int:
        return len(self.samples)

    @property
    def token_rows(self) -> set[tuple[int, ...]]:
        return {tuple(s.inputs["input_ids"][0].tolist()) for s in self.samples}

    @property
    def pixel_rows(self) -> int:
        """Patch rows of every page's pixel_values: what the vision tower must see in calibration."""
        return sum(int(s.inputs["pixel_values"].shape[0]) for s in self.samples if s.kind == "page")

    def summary(self) -> dict[str, Any]:
        kinds = {k: sum(s.kind == k for s in self.samples) for k in ("page", "query", "text")}
        visual = [s.visual_tokens for s in self.samples if s.kind == "page"]
        out = {
            "source": self.identity, "revision": self.revision, "semantics": self.semantics,
            "nsamples_requested": self.nsamples_requested, "samples_used": self.used, "seqlen": self.seqlen,
            "seed": self.seed, "pages": kinds["page"], "queries": kinds["query"], "text_rows": kinds["text"],
            "page_visual_token_budget": self.visual_budget, "page_rows_total": self.candidates_total,
            "pages_unreadable": self.pages_unreadable,
            "page_visual_tokens": [min(visual), round(sum(visual) / len(visual), 1), max(visual)] if visual else None,
            "pixel_rows": self.pixel_rows,
            "samples_sha256": hashlib.sha256(json.dumps(self.record, sort_keys=True).encode()).hexdigest(),
        }  # fmt: skip
        if self.text is not None:
            out["text_selection"] = self.text.summary()
        return out

    def write(self, path: Path) -> Path:
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in self.record)
        return atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def prompt_tokens(tokenizer) -> int:
    """The page prompt's tokens besides the page's own (its one image pad becomes the page's visual tokens)."""
    from colq_sweep.model import IMAGE_PROMPT

    return len(tokenizer(IMAGE_PROMPT)["input_ids"]) - 1


def page_budget(tokenizer, seqlen: int, max_visual_tokens: int) -> int:
    """The visual tokens a calibration page may have."""
    prompt = prompt_tokens(tokenizer)
    budget = min(max_visual_tokens, seqlen - prompt)
    if budget < 1:
        raise CalibrationError(f"seqlen={seqlen} leaves no room for a page: its prompt alone is {prompt} tokens; "
                               f"raise seqlen (page calibration caps a page at seqlen - {prompt} visual tokens)")  # fmt: skip
    return budget


def prepare(calib: CalibSpec, processor, *, seqlen: int, nsamples: int, seed: int, max_visual_tokens: int,
            allow_fewer: bool = False, revision: str | None = None) -> PageCalibration:  # fmt: skip
    """Select and build the samples (pages, queries, text rows), check the count, interleave, record."""
    from colq_sweep.model import ColQwen3Processor

    n_pages, n_queries, n_text = calib.counts(nsamples)
    if n_pages < 1:
        raise CalibrationError(f"nsamples={nsamples} with calib.pages_share={calib.pages_share} leaves no page; raise either")
    rev = revision or pin(calib)
    budget = page_budget(processor.tokenizer, seqlen, max_visual_tokens)
    page_proc = ColQwen3Processor.build(copy.deepcopy(processor.image_processor), processor.tokenizer, budget)
    rows = _Rows(calib.pages)
    order = _permutation(len(rows), seed)
    samples, unreadable, pos = [], 0, 0
    while sum(s.kind == "page" for s in samples) < n_pages and pos < len(order):
        i = order[pos]
        pos += 1
        try:
            image = rows.image(i)
        except Exception as err:  # noqa: BLE001 - a page that does not decode is skipped and counted
            log.warning("calibration page row %d does not decode (%s): skipped", i, err)
            unreadable += 1
            continue
        inputs = dict(page_proc.process_images([image]))
        grid = inputs["image_grid_thw"][0]
        samples.append(Sample("page", i, inputs, visual_tokens=int(grid.prod()) // 4))
    while sum(s.kind == "query" for s in samples) < n_queries and pos < len(order):
        i = order[pos]
        pos += 1
        q = rows.query(i)
        if q is not None:
            inputs = dict(processor.process_queries([q]))
            samples.append(Sample("query", i, {k: v[:, :seqlen] for k, v in inputs.items()}, text=q))
    text_sel = _text_rows(calib, processor.tokenizer, seqlen, n_text, seed, samples, rev) if n_text else None
    _check_count(samples, nsamples, (n_pages, n_queries, n_text), len(rows), allow_fewer)
    too_long = [s for s in samples if s.tokens > seqlen]
    if too_long:
        raise CalibrationError(f"a calibration {too_long[0].kind} has {too_long[0].tokens} tokens > seqlen={seqlen}")
    random.Random(seed).shuffle(samples)
    out = PageCalibration(samples=samples, revision=rev, identity=calib.identity, semantics=semantics(calib),
                          nsamples_requested=nsamples, seqlen=seqlen, seed=seed, visual_budget=budget,
                          candidates_total=len(rows), pages_unreadable=unreadable, text=text_sel)  # fmt: skip
    out.record = [s.record() for s in samples]
    s = out.summary()
    log.info("calibration: %d pages (<= %d visual tokens), %d queries, %d text rows from %s",
             s["pages"], budget, s["queries"], s["text_rows"], calib.identity)  # fmt: skip
    return out


def _permutation(n: int, seed: int) -> list[int]:
    import numpy as np

    return np.random.default_rng(seed).permutation(n).tolist()


def _text_rows(calib: CalibSpec, tokenizer, seqlen: int, n: int, seed: int, samples: list[Sample], rev: str):
    """mixed: `n` text rows, selected as text calibration selects them (quantize/calibration.py)."""
    import torch

    text_rev = rev.split(";text=", 1)[1]
    sel = calibration.select_samples(calibration.load_texts(calib, text_rev), tokenizer, seqlen=seqlen, nsamples=n,
                                     seed=seed, source=calib.source)  # fmt: skip
    for text, ids, i in zip(sel.texts, sel.token_ids, sel.source_indices, strict=True):
        t = torch.tensor([ids])
        samples.append(Sample("text", i, {"input_ids": t, "attention_mask": torch.ones_like(t)}, text=text))
    return sel


def _check_count(samples: list[Sample], nsamples: int, wanted: tuple[int, int, int], rows: int, allow_fewer: bool) -> None:
    got = tuple(sum(s.kind == k for s in samples) for k in ("page", "query", "text"))
    if got == wanted:
        return
    msg = (f"only {got[0]} pages, {got[1]} queries and {got[2]} text rows of the {wanted[0]}, {wanted[1]} and "
           f"{wanted[2]} that nsamples={nsamples} asks for ({rows} page rows in the source)")  # fmt: skip
    if not allow_fewer or not samples:
        raise CalibrationError(msg + "; lower nsamples, use a larger source, or set quant.allow_fewer_samples=true")
    log.warning("%s; proceeding because quant.allow_fewer_samples=true", msg)
