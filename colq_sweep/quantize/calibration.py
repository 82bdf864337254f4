"""Calibration text for AutoRound: load, select deterministically, count what is really used, hand over as .jsonl.

AutoRound drops calibration samples that tokenize to fewer than `seqlen` tokens (and samples whose truncated
token list repeats its last token more than seqlen/2 times), so "nsamples=512" can silently mean far fewer.
This module replays auto-round 0.16.1's own selection, with the semantics of the loader auto-round would use for
the same source (`SEMANTICS`):

- a Hub dataset (`dataset="NeelNanda/pile-10k"`, as the study passed it; `calib_dataset.get_pile_dataset`): the
  rows in dataset order, shuffled with `datasets`' `Dataset.shuffle(seed=seed)` (a numpy PCG64 permutation), the
  text as it is;
- a local .jsonl (`calib_dataset.get_local_dataset`): texts right-stripped, shuffled with `random.Random(seed)`;

then, for both (`_get_dataset_impl` + `get_dataloader`): each text tokenized with the checkpoint's tokenizer
(`truncation=True, max_length=seqlen`); samples shorter than `seqlen`, or dominated by their last token, dropped;
the first `nsamples` survivors used (with `allow_fewer`, trimmed to whole batches: see `trim_to_full_batches`).

The survivors are then written to a .jsonl *pre-permuted* so that auto-round's own local-file shuffle of that file
puts them back in exactly the order above: auto-round calibrates on the same samples, in the same order, as its own
loader would pick from the source (offline too), and the count we record is the count it uses (the build also
watches the model's input embedding during calibration and fails if the rows seen differ from this selection).

Sources: the Hub (`CalibSpec.source == "hub"`; a branch name like `main` is resolved to its commit sha and
recorded) or a local .jsonl of `{"text": ...}` lines (the fixture's calibration text is one). A local file's
"revision" is the sha256 of its bytes, so editing it changes the artifact key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from colq_sweep.config import CalibSpec
from colq_sweep.fsio import atomic_write, file_sha256
from colq_sweep.quantize.errors import CalibrationError

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# which auto-round loader's row selection a calibration source replays: a change of semantics changes the rows, so
# it is part of the artifact key (keys.artifact_key) and recorded in the manifest
SEMANTICS = {
    "hub": "auto-round hub loader: datasets Dataset.shuffle(seed), text unstripped",
    "jsonl": "auto-round local-file loader: random.Random(seed).shuffle, text right-stripped",
}

# auto-round strips spaces from a dataset string and splits it on "," and ":" (multi-dataset syntax), so the
# .jsonl path handed to it must contain none of these.
_UNSAFE_PATH_CHARS = re.compile(r"[\s,:]")


# ------------------------------------------------------------------------------------------------- pinning


def _cached_hub_ref(repo_id: str, revision: str, repo_type: str = "dataset") -> str | None:
    """The commit sha a branch/tag pointed to when it was last downloaded (HF cache `refs/`), if any."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:  # pragma: no cover - very old huggingface_hub
        return None
    ref = Path(HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        sha = ref.read_text().strip()
        return sha if SHA_RE.match(sha) else None
    return None


def pin(calib: CalibSpec) -> str:
    """What pins the calibration text: a Hub commit sha, or `sha256:<hex>` of a local file's bytes.

    A Hub branch/tag (e.g. `main`) is resolved through the Hub API; offline (HF_HUB_OFFLINE=1) it falls back to
    the sha the local HF cache recorded for that ref, else it fails: an unpinned calibration set would make the
    artifact key meaningless.
    """
    if calib.source == "jsonl":
        return "sha256:" + file_sha256(str(calib.path))
    rev = str(calib.revision or "main")
    if SHA_RE.match(rev):
        return rev
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(str(calib.dataset), revision=rev).sha
        if sha and SHA_RE.match(sha):
            log.info("calibration %s@%s resolved to commit %s", calib.dataset, rev, sha)
            return sha
        raise CalibrationError(f"the Hub returned no commit sha for {calib.dataset}@{rev}")
    except CalibrationError:
        raise
    except Exception as err:
        cached = _cached_hub_ref(str(calib.dataset), rev)
        if cached:
            log.warning(
                "could not reach the Hub (%s); using the locally cached ref %s@%s -> %s",
                type(err).__name__, calib.dataset, rev, cached,
            )  # fmt: skip
            return cached
        raise CalibrationError(
            f"cannot resolve calibration revision {calib.dataset}@{rev} to a commit sha ({type(err).__name__}: "
            f"{err}); go online once, or set calib.revision to a 40-hex commit sha"
        ) from err


# ------------------------------------------------------------------------------------------------- loading


def load_texts(calib: CalibSpec, revision: str | None = None) -> list[str]:
    """All candidate texts of the source, in source order (a Hub source at `revision`, its pin)."""
    field_name = calib.text_field
    if calib.source == "jsonl":
        texts = []
        with open(str(calib.path), encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, str):
                    texts.append(row)
                    continue
                if not isinstance(row, dict) or not isinstance(row.get(field_name), str):
                    raise CalibrationError(
                        f"{calib.path}:{lineno}: expected an object with a string {field_name!r}"
                    )
                texts.append(row[field_name])
        return texts
    import datasets

    rev = revision or pin(calib)
    ds = datasets.load_dataset(str(calib.dataset), revision=rev, split=calib.split or "train")
    if field_name not in ds.column_names:
        raise CalibrationError(f"{calib.dataset} has no column {field_name!r} (columns: {ds.column_names})")
    texts = ds[field_name]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:  # auto-round's shuffle permutes every row: dropping one would shift the selection
        raise CalibrationError(f"{calib.dataset} row {bad}: {field_name!r} is not a string")
    return texts


# ----------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """The calibration samples AutoRound will use, in the order it will use them."""

    semantics: str  # which auto-round loader's selection this replays (SEMANTICS)
    texts: list[str]
    token_ids: list[list[int]]  # each exactly `seqlen` long: what reaches the model
    nsamples_requested: int
    seqlen: int
    seed: int
    candidates_total: int
    candidates_examined: int
    dropped_short: int
    dropped_repetitive: int
    source_indices: list[int] = field(default_factory=list)
    dropped_partial_batch: int = 0  # usable samples left out so that every calibration batch is full

    @property
    def used(self) -> int:
        return len(self.texts)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("texts", "token_ids", "source_indices"):
            d.pop(k)
        d["samples_used"] = self.used
        d["texts_sha256"] = hashlib.sha256(json.dumps(self.texts).encode()).hexdigest()
        return d


def _normalise(text: str) -> str:
    # auto-round's local loader: text.rstrip() then .rstrip("\n")
    return text.rstrip().rstrip("\n")


def _truncated_ids(tokenizer, text: str, seqlen: int) -> list[int]:
    return list(tokenizer([text], truncation=True, max_length=seqlen)["input_ids"][0][:seqlen])


def _usable(ids: list[int], seqlen: int) -> tuple[bool, str]:
    if len(ids) < seqlen:
        return False, "short"
    ids = ids[:seqlen]
    # auto-round's filter (seqlen > 2) and its collate function (always) drop a sample whose last token
    # appears more than seqlen // 2 times (padding-like repetition).
    if ids.count(ids[-1]) > seqlen // 2:
        return False, "repetitive"
    return True, ""


def shuffled_order(n: int, seed: int, source: str) -> list[int]:
    """The row order auto-round's loader for `source` (hub | jsonl) gives `n` rows."""
    if source == "hub":
        import numpy as np

        return np.random.default_rng(seed).permutation(n).tolist()  # datasets' Dataset.shuffle(seed=seed)
    order = list(range(n))
    random.Random(seed).shuffle(order)  # auto-round's local loader shuffles its list of samples
    return order


def select_samples(
    texts: list[str],
    tokenizer,
    *,
    seqlen: int,
    nsamples: int,
    seed: int,
    source: str = "jsonl",
    chunk: int = 64,
) -> Selection:
    """Replay auto-round's selection for `source`'s loader: seeded shuffle, tokenize (truncate to seqlen), drop
    unusable, take nsamples."""
    order = shuffled_order(len(texts), seed, source)
    prepare = _normalise if source == "jsonl" else (lambda t: t)
    kept_texts, kept_ids, kept_idx = [], [], []
    short = repetitive = examined = 0
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        batch = [prepare(texts[i]) for i in idx]
        enc = tokenizer(batch, truncation=True, max_length=seqlen)["input_ids"]
        for i, text, ids in zip(idx, batch, enc, strict=True):
            examined += 1
            ok, why = _usable(list(ids), seqlen)
            if not ok:
                short += why == "short"
                repetitive += why == "repetitive"
                continue
            if text != _normalise(text) and _truncated_ids(tokenizer, _normalise(text), seqlen) != list(ids[:seqlen]):
                raise CalibrationError(  # the hand-off file goes through auto-round's (right-stripping) local loader
                    f"calibration row {i}: its trailing whitespace changes its first {seqlen} tokens, so auto-round "
                    "could not be handed this selection exactly; use another seed or seqlen"
                )
            kept_texts.append(text)
            kept_ids.append(list(ids[:seqlen]))
            kept_idx.append(i)
            if len(kept_texts) == nsamples:
                break
        if len(kept_texts) == nsamples:
            break
    return Selection(
        semantics=SEMANTICS[source],
        texts=kept_texts,
        token_ids=kept_ids,
        nsamples_requested=nsamples,
        seqlen=seqlen,
        seed=seed,
        candidates_total=len(texts),
        candidates_examined=examined,
        dropped_short=short,
        dropped_repetitive=repetitive,
        source_indices=kept_idx,
    )


def trim_to_full_batches(selection: Selection, batch_size: int) -> Selection:
    """Drop the last `used % batch_size` samples (when at least one full batch remains).

    auto-round 0.16.1 treats `position_ids` / `position_embeddings` (Qwen3-VL's rotary cos/sin) as "shared" block
    inputs and caches them once per calibration *batch*, with that batch's size; when batches differ in size its
    `_select_batch` pairs samples with cos/sin of the wrong batch size and the block forward fails ("mat1 and mat2
    shapes cannot be multiplied"). With fewer samples than one batch auto-round shrinks the batch itself, which
    works.
    """
    extra = selection.used % batch_size if selection.used > batch_size else 0
    if extra:
        log.warning(
            "using %d of %d usable calibration samples: auto-round needs full batches of %d",
            selection.used - extra, selection.used, batch_size,
        )  # fmt: skip
        keep = selection.used - extra
        selection.texts = selection.texts[:keep]
        selection.token_ids = selection.token_ids[:keep]
        selection.source_indices = selection.source_indices[:keep]
        selection.dropped_partial_batch = extra
    return selection


def check_enough(selection: Selection, allow_fewer: bool) -> None:
    """Error (unless allowed) when fewer samples survive than asked for; never allow zero."""
    s = selection
    msg = (
        f"only {s.used} of the requested nsamples={s.nsamples_requested} calibration samples are usable at "
        f"seqlen={s.seqlen} ({s.candidates_total} candidates: {s.dropped_short} shorter than seqlen tokens, "
        f"{s.dropped_repetitive} repetitive)"
    )
    if s.used == 0:
        raise CalibrationError(msg + "; lower seqlen or provide longer texts")
    if s.used < s.nsamples_requested:
        if not allow_fewer:
            raise CalibrationError(
                msg
                + "; lower seqlen/nsamples, provide more or longer texts, or set quant.allow_fewer_samples=true"
            )
        log.warning("%s; proceeding because quant.allow_fewer_samples=true", msg)


# ------------------------------------------------------------------------------------------------- hand-off


def safe_for_autoround(path: str | os.PathLike) -> bool:
    """auto-round mangles dataset strings with spaces, commas or colons; such a path cannot be handed over."""
    return not _UNSAFE_PATH_CHARS.search(str(path))


def write_for_autoround(selection: Selection, path: str | os.PathLike) -> Path:
    """Write the selected texts so that auto-round's `random.Random(seed).shuffle` restores the selection order.

    auto-round shuffles the file's rows: row `perm[i]` ends up at position i. Writing selected sample i to row
    `perm[i]` makes its shuffled order equal our selection order (= its order when reading the full source).
    Every selected sample passes auto-round's filters again, so it uses all of them and nothing else.
    """
    path = Path(path)
    if not safe_for_autoround(path):
        raise ValueError(f"{path}: auto-round cannot take a dataset path with spaces, commas or colons")
    n = selection.used
    perm = list(range(n))
    random.Random(selection.seed).shuffle(perm)
    rows: list[str | None] = [None] * n
    for i, text in enumerate(selection.texts):
        rows[perm[i]] = text
    lines = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in rows)
    return atomic_write(path, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


@dataclass
class CalibrationData:
    """What the build needs: the file for auto-round, what it holds, and where it came from."""

    path: Path
    selection: Selection
    source_identity: str
    revision: str

    @property
    def used(self) -> int:
        return self.selection.used

    def summary(self) -> dict[str, Any]:
        return {"source": self.source_identity, "revision": self.revision, **self.selection.summary()}


def prepare(
    calib: CalibSpec,
    tokenizer,
    *,
    seqlen: int,
    nsamples: int,
    seed: int,
    out_path: str | os.PathLike,
    allow_fewer: bool = False,
    revision: str | None = None,
    batch_size: int = 1,
) -> CalibrationData:
    """Load the source, select like auto-round, check the count, keep full batches, write the hand-off .jsonl."""
    rev = revision or pin(calib)
    texts = load_texts(calib, rev)
    selection = select_samples(texts, tokenizer, seqlen=seqlen, nsamples=nsamples, seed=seed, source=calib.source)
    check_enough(selection, allow_fewer)
    trim_to_full_batches(selection, batch_size)
    path = write_for_autoround(selection, out_path)
    log.info(
        "calibration: %d/%d samples usable at seqlen=%d from %s (%d examined)",
        selection.used, nsamples, seqlen, calib.text_identity, selection.candidates_examined,
    )  # fmt: skip
    return CalibrationData(path=path, selection=selection, source_identity=calib.text_identity, revision=rev)
