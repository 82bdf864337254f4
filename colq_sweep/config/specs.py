"""The typed, frozen specs a composed config becomes: one per config group, and the sweep point that holds them.

A quantization method's own spec lives with its method (quantize/methods/<name>/spec.py) and derives from
`QuantizedSpec`; this module knows only what every method shares. Each spec field says which identity it is part
of (`knob(..., key=...)`): what decides the quantized weights (the artifact key and the run key), what decides
results but not weights (the run key only: load-back kernels, a sampling policy), or only speed and memory (no key:
toggling it reuses what was built; a test shows the results equal). keys.py reads these marks; nothing else needs
to list a new field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from colq_sweep.config.checks import ConfigError, choice
from colq_sweep.contract import flatten
from colq_sweep.quantize.kernels import BACKENDS, COMPUTE_MODES
from colq_sweep.tasks import select_entries

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

WEIGHTS = "weights"  # decides the quantized weights: in the artifact key and the run key
RESULTS = "results"  # decides results but not the weights: in the run key only
SPEED = "speed"  # speed and memory only: in no key
DERIVED = "derived"  # only decides other fields' values (a recipe), which are keyed themselves: in no key


def knob(default: Any, key: str = WEIGHTS, root: bool = False, keyed_at_default: bool = True) -> Any:
    """A spec field with its identity mark; `root=True`: set at the config's top level (`seqlen=512`);
    `keyed_at_default=False`: left out of the keys while at its default, so the keys of configs written before the
    field existed stay as they were."""
    return field(default=default, metadata={"key": key, "root": root, "keyed_at_default": keyed_at_default})


def key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key", WEIGHTS)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    id: str | None
    revision: str | None
    path: str | None
    dtype: str = "bfloat16"
    max_num_visual_tokens: int = 1280

    @property
    def source(self) -> str:
        """Where weights are read from: a local directory or a Hub id."""
        return self.path if self.path else str(self.id)

    @property
    def identity(self) -> str:
        """Hub id@revision, or `local` (a local checkpoint is identified by its content:
        keys.checkpoint_fingerprint)."""
        return f"{self.id}@{self.revision}" if self.id else "local"


# vidore/colpali_train_set at the commit that uploaded its data (train: 118,195 rows in 82 parquet shards); its
# first shard is the page source of `calib=pages` (conf/calib/pages.yaml says why this set)
COLPALI_TRAIN_SET = "vidore/colpali_train_set"
COLPALI_TRAIN_REVISION = "934d59ae71ddd06510ef9d7fe973d9336d2822a3"
COLPALI_TRAIN_SHARD = "data/train-00000-of-00082.parquet"
CALIB_KINDS = ("text", "pages", "mixed")


@dataclass(frozen=True)
class PageSourceSpec:
    """Where calibration pages come from (`calib.pages`): a Hub dataset of page images (+ their queries) at a pinned
    revision, or a local folder holding `pages.jsonl` lines `{"image": <file in the folder>, "query": ...}`."""

    source: str = "hub"  # hub | local
    dataset: str | None = COLPALI_TRAIN_SET
    revision: str | None = COLPALI_TRAIN_REVISION
    split: str = "train"
    data_files: str | None = COLPALI_TRAIN_SHARD  # null: the whole split
    image_field: str = "image"
    query_field: str | None = "query"  # null: the source has no queries (then calib.queries_share must be 0)
    path: str | None = None  # local: the folder

    @property
    def identity(self) -> str:
        """What the pages are (`key_dict`), less their content pin (quantize/pages.py `pin_pages`)."""
        return ":".join(str(v) for v in self.key_dict().values())

    def key_dict(self) -> dict[str, Any]:
        """The fields that decide which pages are read: a Hub source's, or a local folder's field names (its content
        is pinned by sha256; the Hub fields a local source ignores are left out)."""
        names = ("source", "image_field", "query_field")
        if self.source == "hub":
            names += ("dataset", "revision", "split", "data_files")
        return {k: getattr(self, k) for k in names}


@dataclass(frozen=True)
class CalibSpec:
    """The calibration set. `kind=text` (the study's: rows of `seqlen` tokens of a text source), `pages` (document
    pages through the page prompt, from `pages`), `mixed` (pages and text rows, `pages_share` of them pages); pages
    and mixed may add queries (`queries_share`: short text through the query prompt, from the page source)."""

    source: str = "hub"
    dataset: str | None = "NeelNanda/pile-10k"
    revision: str | None = "main"
    split: str | None = "train"
    text_field: str = "text"
    path: str | None = None
    kind: str = "text"
    pages: PageSourceSpec = field(default_factory=PageSourceSpec)
    pages_share: float | None = None  # mixed: the fraction of nsamples that are pages
    queries_share: float = 0.0  # pages / mixed: the fraction of nsamples that are queries

    @property
    def has_images(self) -> bool:
        return self.kind != "text"

    @property
    def reads_text(self) -> bool:
        return self.kind != "pages"

    @property
    def text_identity(self) -> str:
        """What the calibration text is, less its content pin (quantize.calibration.pin adds the Hub commit or the
        local file's sha256): a moved or re-spelled .jsonl path is the same calibration set."""
        if self.source == "hub":
            return f"hub:{self.dataset}@{self.revision}:{self.split}:{self.text_field}"
        return f"jsonl:{self.text_field}"

    @property
    def identity(self) -> str:
        """The text source's identity for `kind=text` (as before page calibration existed); with pages, the kind,
        the shares and the page source's identity (+ the text source's for mixed)."""
        if self.kind == "text":
            return self.text_identity
        parts = [f"{self.kind}", f"pages={self.pages.identity}"]
        if self.kind == "mixed":
            parts += [f"pages_share={self.pages_share}", f"text={self.text_identity}"]
        if self.queries_share:
            parts.append(f"queries_share={self.queries_share}")
        return ";".join(parts)

    def key_dict(self) -> dict[str, Any]:
        """The fields that decide results (the config hash's), paths left out; a text calibration gives what it gave
        before page calibration existed."""
        text = {k: getattr(self, k) for k in ("source", "dataset", "revision", "split", "text_field")}
        if self.kind == "text":
            return text
        d: dict[str, Any] = {"kind": self.kind, "pages": self.pages.key_dict(),
                             "queries_share": self.queries_share}  # fmt: skip
        if self.kind == "mixed":
            d.update(text=text, pages_share=self.pages_share)
        return d

    def counts(self, nsamples: int) -> tuple[int, int, int]:
        """How many of `nsamples` are (pages, queries, text rows)."""
        queries = round(self.queries_share * nsamples) if self.has_images else 0
        pages = {"text": 0, "pages": nsamples - queries}.get(self.kind, round((self.pages_share or 0) * nsamples))
        return pages, queries, nsamples - pages - queries

    @property
    def tag(self) -> str:
        """`pages`, `mixed0.5`, `pages+q0.25`; '' for text (labels)."""
        if self.kind == "text":
            return ""
        tag = self.kind + (f"{self.pages_share:g}" if self.kind == "mixed" else "")
        return tag + (f"+q{self.queries_share:g}" if self.queries_share else "")


@cache
def encoder_defaults() -> dict[str, Any]:
    """The encoder settings' defaults, written once: conf/encoder/default.yaml (composed into `eval` by
    conf/config.yaml, so the command line spells them `eval.page_batch_size=16`)."""
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "encoder" / "default.yaml")))


@dataclass(frozen=True)
class EncoderSpec:
    """How pages and queries are encoded. Speed only (no key), except `compile`: fused kernels change embeddings by
    float round-off, so compiled and eager runs are keyed apart."""

    query_batch_size: int = knob(64, SPEED)
    page_batch_size: int = knob(8, SPEED)
    corpus_cache: bool = knob(True, SPEED)
    preprocess_workers: int | None = knob(None, SPEED)  # workers preparing pages ahead of the forward (None: auto)
    preprocess_mode: str = knob("thread", SPEED)  # thread | process
    compile: bool = knob(False, RESULTS)  # torch.compile each decoder layer and vision block
    # where page pixels are computed: pil (the PIL processor on the host) | cpu / cuda (tensor ops there:
    # evaluate/pixels.py) | auto (cuda when evaluating on CUDA, else pil); changes pixels by a uint8 level, so keyed
    preprocess_device: str = knob("auto", RESULTS)

    FIELDS: ClassVar[tuple[str, ...]] = (
        "query_batch_size", "page_batch_size", "corpus_cache", "preprocess_workers", "preprocess_mode", "compile",
        "preprocess_device",
    )  # fmt: skip

    def pixels(self, device: str) -> str:
        """The resolved `preprocess_device` for an evaluation on `device`: pil, cpu or cuda."""
        if self.preprocess_device == "auto":
            return "cuda" if str(device).startswith("cuda") else "pil"
        return self.preprocess_device


PREPROCESS_DEVICES = ("auto", "pil", "cpu", "cuda")
INDEX_DTYPES = ("bf16", "fp16", "int8", "binary")
MAX_POOL_FACTOR = 64


@dataclass(frozen=True)
class IndexSpec:
    """What the index stores of each page (`index.pool_factor`, `index.dtype`; evaluate/index.py applies it). It
    changes results, not page embeddings: in the run key and the eval revision, never in the page cache key."""

    pool_factor: int = 1  # 1: every token vector; k: Ward clusters of a page's vectors, about n / k of them
    dtype: str = "bf16"  # bf16 (the page cache's values) | fp16 | int8 (a scale per vector) | binary (sign bits)

    def __post_init__(self) -> None:
        if isinstance(self.pool_factor, bool) or not isinstance(self.pool_factor, int) or not 1 <= self.pool_factor <= MAX_POOL_FACTOR:
            raise ConfigError("index.pool_factor", self.pool_factor,
                              f"an integer from 1 (no pooling) to {MAX_POOL_FACTOR}: each page keeps about 1/k of its vectors")  # fmt: skip
        choice("index.dtype", self.dtype, INDEX_DTYPES)

    @property
    def is_default(self) -> bool:
        return self.pool_factor == 1 and self.dtype == "bf16"

    @property
    def tag(self) -> str:
        """`pool3-int8`, `binary`; '' for the default (the uncompressed index, as before these settings existed)."""
        parts = [f"pool{self.pool_factor}"] if self.pool_factor > 1 else []
        return "-".join(parts + ([self.dtype] if self.dtype != "bf16" else []))


@dataclass(frozen=True)
class EvalSpec:
    tasks: tuple[str, ...] = ()
    languages: tuple[str, ...] | None = None
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    index: IndexSpec = field(default_factory=IndexSpec)
    fixture_dir: str | None = None
    only: tuple[tuple[str, str], ...] | None = None  # config `eval.entries`: evaluate only these (task, subset)
    allow_revision_mismatch: bool = False  # offline: use a cached dataset of another revision (recorded)
    notices: tuple[str, ...] = field(default=(), compare=False)

    def entries(self) -> list[tuple[str, str]]:
        selected = select_entries(list(self.tasks), list(self.languages) if self.languages else None)
        return selected if self.only is None else [e for e in selected if e in set(self.only)]


@dataclass(frozen=True)
class QuantSpec:
    """What a point does to the checkpoint's weights. This base is `quant=none`: the unquantized original."""

    method: str = "none"

    enabled: ClassVar[bool] = False
    needs_calibration: ClassVar[bool] = False

    @classmethod
    def root_fields(cls) -> tuple[str, ...]:
        """Fields the config sets at its top level (`seqlen=512`, not `quant.seqlen=512`)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("root"))

    def values(self, *keys: str, root: bool | None = None) -> dict[str, Any]:
        """The fields whose identity mark is among `keys` (all marks when none are given) and that matter for this
        spec (`relevant`); `root` filters top-level fields in (True) or out (False). A field marked
        `keyed_at_default=False` is left out while it holds its default."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if keys and key_of(f) not in keys or root is not None and bool(f.metadata.get("root")) != root:
                continue
            if not self.relevant(f.name) or (keys and not f.metadata.get("keyed_at_default", True) and v == f.default):
                continue
            out[f.name] = v
        return out

    def relevant(self, name: str) -> bool:
        """Whether field `name` can change what this spec produces (a calibration length does not change RTN)."""
        return True

    @property
    def uses_seed(self) -> bool:
        """Whether the seed can change what this spec produces (calibration sampling, tuning)."""
        return self.enabled

    @property
    def needs_images(self) -> bool:
        """Whether its calibration must hold images (a vision tower it calibrates)."""
        return False

    def label(self, seed: int) -> str:
        return "original"


@dataclass(frozen=True)
class QuantizedSpec(QuantSpec):
    """What every quantization method shares: how its export is loaded back for evaluation (quantize/kernels.py)."""

    backend: str = knob("auto", RESULTS)  # load-back kernels: auto | a name in quantize.kernels.KERNELS
    compute: str = knob("activation", RESULTS)  # activation: kernels compute in model.dtype | auto: ark's own choice

    enabled: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a ConfigError for the first bad value (methods extend this, calling super().check())."""
        choice("quant.backend", self.backend, BACKENDS)
        choice("quant.compute", self.compute, COMPUTE_MODES)
        if self.compute == "auto" and self.backend not in ("auto", "ark"):
            raise ConfigError("quant.compute", self.compute,
                              f"only the ark CPU kernels have an auto compute mode (backend={self.backend})")  # fmt: skip

    def mteb_suffix(self) -> str:
        """What the quantized checkpoint's mteb model name adds to the model's (`tiny-w4`)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SweepPoint:
    model: ModelSpec
    quant: QuantSpec
    calib: CalibSpec
    eval: EvalSpec
    seed: int = 42
    name: str = "default"
    outputs_dir: str = "outputs"
    device: str = "auto"
    force: bool = False
    fail_point: bool = False
    tracking_uri: str | None = None
    system_metrics: str = "auto"  # auto (on for CUDA) | true | false: MLflow system metrics on each point's run

    @property
    def label(self) -> str:
        """Short human label of the point within its model, e.g. `w4g128 seqlen=512 bs=8 n=512 iters=1000 seed=42`,
        `original index=pool3-int8`."""
        index, calib = self.eval.index, self.calib
        tag = f" calib={calib.tag}" if self.quant.needs_calibration and calib.tag else ""
        return self.quant.label(self.seed) + tag + ("" if index.is_default else f" index={index.tag}")

    def params(self) -> dict[str, Any]:
        """The settings that define the point's result, as flat MLflow params (`quant.bits`, `index.pool_factor`, a
        method's top-level knobs under their top-level names: `seqlen`), lists joined with commas: what config.yaml
        says, less what does not change the result (the encoder's speed-only knobs, bookkeeping: `BOOKKEEPING`),
        what does not apply (the original's quantization, calibration and seed; a method's irrelevant fields, a
        text calibration's page fields) and unset values. The full config stays in the run's config.yaml."""
        d = asdict(self)
        enc = self.eval.encoder
        encoder = {f.name: getattr(enc, f.name) for f in fields(enc) if key_of(f) != SPEED}
        ev = {k: v for k, v in d["eval"].items() if k not in ("encoder", "index", "notices")}
        q = self.quant
        quant = {f.name: getattr(q, f.name) for f in fields(q) if key_of(f) != SPEED and q.relevant(f.name)}
        root = {k: quant.pop(k) for k in q.root_fields() if k in quant}
        calib: dict[str, Any] = {}
        if q.needs_calibration:
            calib = d["calib"]
            if self.calib.kind == "text":  # the page fields mean nothing to a text calibration
                calib = {k: v for k, v in calib.items() if k not in ("pages", "pages_share", "queries_share")}
            elif self.calib.kind == "pages":
                calib = {k: v for k, v in calib.items() if k in ("kind", "pages", "queries_share")}
        top = {k: v for k, v in d.items() if k not in ("model", "quant", "calib", "eval", "seed", *BOOKKEEPING)}
        if q.uses_seed:
            top["seed"] = self.seed
        flat = flatten({**top, "model": d["model"], "quant": {"method": q.method, **quant}, "calib": calib,
                        "eval": {**ev, **encoder}, "index": d["eval"]["index"], **root})  # fmt: skip
        return {k: v for k, v in flat.items() if v is not None and v != ""}


# where a point's results go and how it is run, not what they are: in config.yaml, not among the run's params
BOOKKEEPING = ("name", "outputs_dir", "force", "fail_point", "tracking_uri", "system_metrics")


def baseline_of(point: SweepPoint) -> SweepPoint:
    """The unquantized point of the same model and evaluation, with the uncompressed index: what every other point
    (quantized weights, a compressed index, or both) is compared with."""
    return dataclasses.replace(point, quant=QuantSpec(), eval=dataclasses.replace(point.eval, index=IndexSpec()),
                               fail_point=False)  # fmt: skip
