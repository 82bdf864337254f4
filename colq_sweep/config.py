"""Typed sweep-point configuration and validation at the edge.

A composed Hydra config becomes a frozen `SweepPoint`. Every rule lives here, runs in milliseconds before any
model is loaded, and fails with one `ConfigError` line naming the field, the value and the fix; the CLI turns it
into exit code 2 without a traceback.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from colq_sweep.tasks import CATALOGUE, FIXTURE_TASK, LANGUAGES, select_entries

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
DTYPES = ("bfloat16", "float16", "float32")
BITS = (2, 3, 4, 8)
GROUP_SIZES = (-1, 32, 64, 128, 256)
FORMATS = ("auto_awq", "auto_round")
BACKENDS = ("auto", "ark", "humming", "gptqmodel", "dequant")
# What the W4A16 matmuls compute in: `activation` = the model dtype (exact W4A16: same result on every CPU);
# `auto` = auto-round-lib's own CPU choice (int8 activations on AMX/VNNI CPUs: W4A8-like, CPU-dependent).
COMPUTE_MODES = ("activation", "auto")
QUANT_METHODS = ("autoround", "none")
CALIB_SOURCES = ("hub", "jsonl")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """One bad config value: `str(err)` is the single line shown to the user."""

    def __init__(self, field_name: str, value: Any, fix: str):
        self.field = field_name
        self.value = value
        super().__init__(f"config error: {field_name}={value!r}: {fix}")


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


@dataclass(frozen=True)
class QuantSpec:
    method: str = "autoround"
    scheme: str = "W4A16"
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    format: str = "auto_awq"
    lr: float | None = None
    minmax_lr: float | None = None
    low_gpu_mem_usage: bool = False
    enable_torch_compile: bool = False
    backend: str = "auto"
    compute: str = "activation"
    allow_fewer_samples: bool = False

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass(frozen=True)
class CalibSpec:
    source: str = "hub"
    dataset: str | None = "NeelNanda/pile-10k"
    revision: str | None = "main"
    split: str | None = "train"
    text_field: str = "text"
    path: str | None = None

    @property
    def identity(self) -> str:
        """What the calibration text is, less its content pin (keys.calib_revision adds the Hub
        commit or the local file's sha256): a moved or re-spelled .jsonl path is the same calibration set."""
        if self.source == "hub":
            return f"hub:{self.dataset}@{self.revision}:{self.split}:{self.text_field}"
        return f"jsonl:{self.text_field}"


@dataclass(frozen=True)
class EvalSpec:
    tasks: tuple[str, ...] = ()
    languages: tuple[str, ...] | None = None
    query_batch_size: int = 64
    page_batch_size: int = 8
    corpus_cache: bool = True
    preprocess_workers: int | None = None  # workers preparing pages ahead of the forward (None: auto)
    preprocess_mode: str = "thread"  # thread | process
    compile: bool = False  # torch.compile each decoder layer and vision block (fused norms, rotary, activations)
    fixture_dir: str | None = None
    only: tuple[tuple[str, str], ...] | None = None  # config `eval.entries`: evaluate only these (task, subset)
    allow_revision_mismatch: bool = False  # offline: use a cached dataset of another revision (recorded)
    notices: tuple[str, ...] = field(default=(), compare=False)

    def entries(self) -> list[tuple[str, str]]:
        selected = select_entries(list(self.tasks), list(self.languages) if self.languages else None)
        return selected if self.only is None else [e for e in selected if e in set(self.only)]


@dataclass(frozen=True)
class SweepPoint:
    model: ModelSpec
    quant: QuantSpec
    calib: CalibSpec
    eval: EvalSpec
    seqlen: int = 1024
    batch_size: int = 8
    nsamples: int = 512
    iters: int = 1000
    seed: int = 42
    name: str = "default"
    outputs_dir: str = "outputs"
    device: str = "auto"
    force: bool = False
    fail_point: bool = False
    tracking_uri: str | None = None
    system_metrics: str = "auto"  # auto (on for CUDA) | true | false: MLflow system metrics on each point's run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """Short human label of the point within its model, e.g. `w4a16 seqlen=512 bs=8 n=512 seed=42`."""
        if not self.quant.enabled:
            return "original"
        return (
            f"w{self.quant.bits}g{self.quant.group_size} seqlen={self.seqlen} bs={self.batch_size} "
            f"n={self.nsamples} iters={self.iters} seed={self.seed}"
        )


def _entries_resolver(tasks: Any, languages: Any = None, only: Any = None) -> str:
    """`${colq_entries:${eval.tasks},${eval.languages},${eval.entries}}`: the (task, subset) entries a config
    selects, as one line (OmegaConf cannot resolve an interpolation into a list), so that `--cfg job --resolve`
    shows them. Private and unknown tasks are skipped here; validation reports them."""
    langs = [str(x) for x in languages] if languages else None
    known = [str(t) for t in tasks if str(t) in CATALOGUE and CATALOGUE[str(t)].public]
    entries = select_entries(known, langs)
    if only:
        wanted = {str(x) for x in only}
        entries = [(t, s) for t, s in entries if f"{t}/{s}" in wanted]
    n_tasks = len({t for t, _ in entries})
    return f"{n_tasks} tasks, {len(entries)} entries: " + ", ".join(f"{t}/{s}" for t, s in entries)


def run_stamp() -> str:
    """`2026-12-02_00-32-31-9f3ab2`: the local time to the second plus 24 random bits, so two sweeps started in the
    same second (on one host or several sharing outputs/) never share a folder, a sweep id or a parent run."""
    import datetime as dt
    import secrets

    return f"{dt.datetime.now():%Y-%m-%d_%H-%M-%S}-{secrets.token_hex(3)}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("colq_entries", _entries_resolver, replace=True)
    # cached like ${now:}: Hydra copies the resolver cache into every job it re-composes (load_sweep_config), so
    # all jobs of a sweep, on this host or a Slurm node, resolve the same folder
    OmegaConf.register_new_resolver("colq_stamp", run_stamp, replace=True, use_cache=True)


register_resolvers()

# ----------------------------------------------------------------------------------------------- validation


def _pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(name, value, "must be a positive integer")
    return value


def _workers(name: str, value: Any) -> int | None:
    """`auto` (None) or a count >= 0."""
    if value == "auto" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(name, value, "must be auto or an integer >= 0 (0: prepare each batch in the main thread)")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be true or false")
    return value


def _choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed or type(value) is not type(allowed[0]):  # 4.0 is not the integer 4
        raise ConfigError(name, value, f"allowed: {', '.join(map(str, allowed))}")
    return value


def _known_keys(group: str, d: dict, cls: type) -> None:
    allowed = {f.name for f in fields(cls)} - {"notices"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{group}.{unknown[0]}", d[unknown[0]], f"unknown key; {group} takes: {', '.join(sorted(allowed))}")


def _spec(group: str, cls: type, d: dict):
    _known_keys(group, d, cls)
    required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise ConfigError(f"{group}.{missing[0]}", None, f"missing in the {group} config; add `{missing[0]}:` to it")
    return cls(**d)


def _model(d: dict) -> ModelSpec:
    spec = _spec("model", ModelSpec, d)
    _choice("model.dtype", spec.dtype, DTYPES)
    _pos_int("model.max_num_visual_tokens", spec.max_num_visual_tokens)
    if spec.path and spec.id:
        raise ConfigError(
            "model.path", spec.path,
            f"also set model.id=null: the weights come from this directory, so the Hub id {spec.id} would mislabel them",
        )  # fmt: skip
    if spec.path:
        if not Path(spec.path).is_dir():
            raise ConfigError(
                "model.path", spec.path, "directory not found (model=tiny: build it with `make fixtures`)"
            )
        if not (Path(spec.path) / "config.json").is_file():
            raise ConfigError("model.path", spec.path, "no config.json there: not a Hugging Face checkpoint")
    elif spec.id:
        if not spec.revision or not SHA_RE.match(str(spec.revision)):
            raise ConfigError(
                "model.revision", spec.revision, f"a Hub model ({spec.id}) needs a pinned 40-hex commit sha"
            )
    else:
        raise ConfigError("model.id", spec.id, "set model.id (+ model.revision) or model.path")
    return spec


def _quant(d: dict) -> QuantSpec:
    _known_keys("quant", d, QuantSpec)
    method = _choice("quant.method", d.get("method", "autoround"), QUANT_METHODS)
    if method == "none":
        return QuantSpec(method="none")
    spec = _spec("quant", QuantSpec, d)
    _choice("quant.bits", spec.bits, BITS)
    _choice("quant.group_size", spec.group_size, GROUP_SIZES)
    _bool("quant.sym", spec.sym)
    _choice("quant.format", spec.format, FORMATS)
    _choice("quant.backend", spec.backend, BACKENDS)
    _choice("quant.compute", spec.compute, COMPUTE_MODES)
    if spec.compute == "auto" and spec.backend not in ("auto", "ark"):
        raise ConfigError(
            "quant.compute", spec.compute, f"only the ark CPU kernels have an auto compute mode (backend={spec.backend})"
        )
    m = re.fullmatch(r"W(\d+)A(\d+)", str(spec.scheme))
    if not m:
        raise ConfigError("quant.scheme", spec.scheme, "expected W<bits>A<bits>, e.g. W4A16")
    if int(m.group(1)) != spec.bits:
        raise ConfigError("quant.bits", spec.bits, f"scheme {spec.scheme} means bits={m.group(1)}")
    if int(m.group(2)) != 16:
        raise ConfigError("quant.scheme", spec.scheme, "only weight-only schemes (A16) are supported")
    if spec.format == "auto_awq" and (spec.bits != 4 or spec.group_size == -1):
        raise ConfigError(
            "quant.format",
            spec.format,
            f"the AWQ format holds only 4-bit grouped weights (got bits={spec.bits}, group_size={spec.group_size}); "
            "use quant.format=auto_round",
        )
    for k in ("lr", "minmax_lr"):
        v = getattr(spec, k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"quant.{k}", v, "must be null or a positive number")
    for k in ("low_gpu_mem_usage", "enable_torch_compile", "allow_fewer_samples"):
        _bool(f"quant.{k}", getattr(spec, k))
    return spec


def _calib(d: dict) -> CalibSpec:
    spec = _spec("calib", CalibSpec, d)
    _choice("calib.source", spec.source, CALIB_SOURCES)
    if spec.source == "hub":
        if not spec.dataset:
            raise ConfigError("calib.dataset", spec.dataset, "a Hub calibration source needs a dataset id")
        if not spec.revision:
            raise ConfigError("calib.revision", spec.revision, "set a commit sha (or `main`, resolved at run time)")
    else:
        if not spec.path or not Path(spec.path).is_file():
            raise ConfigError("calib.path", spec.path, "calibration .jsonl not found (calib=fixture: `make fixtures`)")
        if not str(spec.path).endswith(".jsonl"):
            raise ConfigError("calib.path", spec.path, "must be a .jsonl file of {\"text\": ...} lines")
    return spec


def _entry_pairs(value: Any, tasks: list[str], langs: tuple[str, ...] | None) -> tuple[tuple[str, str], ...] | None:
    """`eval.entries`: null, or `Task/subset` strings, each a public catalogue entry among tasks x languages."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ConfigError("eval.entries", [], "list at least one Task/subset pair, or null for every entry")
    selected = set(select_entries(tasks, list(langs) if langs else None))
    pairs = []
    for item in items:
        task, sep, subset = str(item).partition("/")
        info = CATALOGUE.get(task)
        if not sep or info is None or subset not in info.subsets:
            known = f"its subsets: {', '.join(info.subsets)}" if info else "unknown task (see conf/eval/vidore.yaml)"
            raise ConfigError("eval.entries", str(item), f"not a Task/subset entry of the catalogue; {known}")
        if (task, subset) not in selected:
            raise ConfigError("eval.entries", str(item), "not among the entries of eval.tasks x eval.languages")
        pairs.append((task, subset))
    return tuple(dict.fromkeys(pairs))


def _eval(d: dict) -> EvalSpec:
    d = {("only" if k == "entries" else k): v for k, v in d.items() if k != "selected"}  # `selected`: display only
    _known_keys("eval", d, EvalSpec)
    tasks = d.get("tasks") or []
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise ConfigError("eval.tasks", tasks, "list at least one task (eval=vidore for the 22 public ViDoRe tasks)")
    notices, kept = [], []
    for t in tasks:
        info = CATALOGUE.get(t)
        if info is None:
            close = [n for n in CATALOGUE if t.lower().replace("retrieval", "") in n.lower()][:3]
            hint = f"did you mean {', '.join(close)}?" if close else "see conf/eval/vidore.yaml for the task names"
            raise ConfigError("eval.tasks", t, f"unknown ViDoRe task; {hint}")
        if not info.public:
            notices.append(f"{t} is private (not downloadable): left out")
            continue
        kept.append(t)
    if not kept:
        raise ConfigError("eval.tasks", tasks, "every listed task is private; nothing to evaluate")
    langs = d.get("languages")
    if langs is not None:
        if isinstance(langs, str):
            langs = [langs]
        for lang in langs:
            if lang not in LANGUAGES:
                raise ConfigError("eval.languages", lang, f"unknown language; allowed: {', '.join(LANGUAGES)}")
        langs = tuple(langs)
    if FIXTURE_TASK in kept:
        fx = d.get("fixture_dir")
        if not fx or not Path(fx).is_dir():
            raise ConfigError("eval.fixture_dir", fx, "fixture task directory not found (`make fixtures`)")
    spec = EvalSpec(
        tasks=tuple(kept),
        languages=langs,
        query_batch_size=_pos_int("eval.query_batch_size", d.get("query_batch_size", 64)),
        page_batch_size=_pos_int("eval.page_batch_size", d.get("page_batch_size", 8)),
        corpus_cache=_bool("eval.corpus_cache", d.get("corpus_cache", True)),
        preprocess_workers=_workers("eval.preprocess_workers", d.get("preprocess_workers", "auto")),
        preprocess_mode=_choice("eval.preprocess_mode", d.get("preprocess_mode", "thread"), ("thread", "process")),
        compile=_bool("eval.compile", d.get("compile", False)),
        fixture_dir=d.get("fixture_dir"),
        only=_entry_pairs(d.get("only"), kept, langs),
        allow_revision_mismatch=_bool("eval.allow_revision_mismatch", d.get("allow_revision_mismatch", False)),
        notices=tuple(notices),
    )
    if not spec.entries():
        raise ConfigError("eval.languages", list(langs or []), f"no subset of {', '.join(kept)} is in these languages")
    return spec


TOP_LEVEL = {
    "model", "quant", "calib", "eval", "seqlen", "batch_size", "nsamples", "iters", "seed", "name",
    "outputs_dir", "device", "force", "fail_point", "tracking_uri", "system_metrics", "hydra",
}  # fmt: skip


def check_full_batches(nsamples: int, batch_size: int, allow_fewer: bool) -> None:
    """auto-round 0.16.1 cannot calibrate a partial last batch of Qwen3-VL (its rotary embeddings are cached per
    batch): nsamples must fill whole batches unless the user accepts calibrating on fewer."""
    if nsamples % batch_size and not allow_fewer:
        full = nsamples - nsamples % batch_size
        raise ConfigError(
            "nsamples", nsamples,
            f"must be a multiple of batch_size ({batch_size}): auto-round 0.16.1 fails on a partial last calibration "
            f"batch; use {full} or {full + batch_size} (or quant.allow_fewer_samples=true to calibrate on {full})",
        )  # fmt: skip


def validate(cfg: Any) -> SweepPoint:
    """Turn a composed config (DictConfig or plain dict) into a validated `SweepPoint`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(cfg, DictConfig):
        try:  # `hydra` is left unresolved: its runtime interpolations exist only inside a running app
            d = {
                k: OmegaConf.to_container(cfg[k], resolve=True, throw_on_missing=True)
                if OmegaConf.is_config(cfg[k])
                else cfg[k]
                for k in cfg
                if k != "hydra"
            }
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", None) or "?"
            raise ConfigError(str(key), "???", "is mandatory; set it on the command line, e.g. calib.path=...") from None
    else:
        d = dict(cfg)
    d.pop("hydra", None)
    unknown = sorted(set(d) - TOP_LEVEL)
    if unknown:
        raise ConfigError(unknown[0], d[unknown[0]], f"unknown top-level key; allowed: {', '.join(sorted(TOP_LEVEL - {'hydra'}))}")
    for k in ("model", "quant", "calib", "eval"):
        if not isinstance(d.get(k), dict):
            raise ConfigError(k, d.get(k), f"missing config group; choose one with {k}=<option>")

    seqlen = _pos_int("seqlen", d.get("seqlen"))
    batch_size = _pos_int("batch_size", d.get("batch_size"))
    nsamples = _pos_int("nsamples", d.get("nsamples"))
    iters = _pos_int("iters", d.get("iters"))
    seed = d.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", seed, "must be a non-negative integer")
    quantized = not (isinstance(d["quant"], dict) and d["quant"].get("method") == "none")
    if quantized and nsamples < batch_size:
        raise ConfigError("nsamples", nsamples, f"must be >= batch_size ({batch_size}); raise nsamples or lower batch_size")
    if quantized:
        check_full_batches(nsamples, batch_size, isinstance(d["quant"], dict) and d["quant"].get("allow_fewer_samples") is True)
    device = str(d.get("device", "auto"))
    if not DEVICE_RE.match(device):
        raise ConfigError("device", device, "allowed: auto, cpu, cuda, cuda:N")
    tracking_uri = d.get("tracking_uri")
    if tracking_uri is not None and (not isinstance(tracking_uri, str) or "://" not in tracking_uri):
        raise ConfigError("tracking_uri", tracking_uri, "null, or an MLflow URI such as sqlite:///abs/path.db or http://host:5000")
    system_metrics = d.get("system_metrics", "auto")
    if system_metrics not in ("auto", True, False):
        raise ConfigError("system_metrics", system_metrics, "allowed: auto (on for CUDA runs), true, false")
    name = d.get("name")
    if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", str(name)):
        raise ConfigError("name", name, "use letters, digits, '.', '_' or '-' (it names a folder and an experiment)")

    quant = _quant(d["quant"])
    model = _model(d["model"])
    calib = _calib(d["calib"]) if quant.enabled else CalibSpec(**{k: v for k, v in d["calib"].items() if k in {f.name for f in fields(CalibSpec)}})
    return SweepPoint(
        model=model,
        quant=quant,
        calib=calib,
        eval=_eval(d["eval"]),
        seqlen=seqlen,
        batch_size=batch_size,
        nsamples=nsamples,
        iters=iters,
        seed=seed,
        name=str(name),
        outputs_dir=str(d.get("outputs_dir", "outputs")),
        device=device,
        force=_bool("force", d.get("force", False)),
        fail_point=_bool("fail_point", d.get("fail_point", False)),
        tracking_uri=tracking_uri,
        system_metrics=str(system_metrics).lower(),
    )


def baseline_of(point: SweepPoint) -> SweepPoint:
    """The unquantized point of the same model and evaluation: what every quantized point is compared with."""
    from dataclasses import replace

    return replace(point, quant=QuantSpec(method="none"), fail_point=False)
