"""A composed config (Hydra's DictConfig or a plain dict) becomes a validated `SweepPoint`.

Every rule runs in milliseconds before any model is loaded and fails with one `ConfigError` line naming the field,
the value and the fix; the command line turns it into exit code 2 without a traceback. The quantization method's
own rules are in its spec (quantize/methods/<name>/spec.py), chosen by `quant.method`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from colq_sweep.config.checks import (
    ConfigError,
    boolean,
    choice,
    known_keys,
    pos_int,
    required_present,
    workers,
)
from colq_sweep.config.resolvers import entries_line
from colq_sweep.config.specs import (
    CALIB_KINDS,
    PREPROCESS_DEVICES,
    CalibSpec,
    EncoderSpec,
    EvalSpec,
    IndexSpec,
    ModelSpec,
    PageSourceSpec,
    QuantSpec,
    SweepPoint,
    encoder_defaults,
)
from colq_sweep.quantize import methods
from colq_sweep.tasks import CATALOGUE, FIXTURE_TASK, LANGUAGES, select_entries

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
DTYPES = ("bfloat16", "float16", "float32")
CALIB_SOURCES = ("hub", "jsonl")
PAGE_SOURCES = ("hub", "local")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
BASE_TOP_LEVEL = {
    "model", "quant", "calib", "eval", "index", "seed", "name", "outputs_dir", "device", "force", "fail_point", "tracking_uri",
    "system_metrics", "search", "hydra",
}  # fmt: skip


def top_level_keys() -> set[str]:
    return BASE_TOP_LEVEL | set(methods.root_fields())


def _spec(group: str, cls: type, d: dict):
    known_keys(group, d, cls)
    required_present(group, d, cls)
    return cls(**d)


NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


def _model(d: dict) -> ModelSpec:
    spec = _spec("model", ModelSpec, d)
    if not isinstance(spec.name, str) or not NAME_RE.fullmatch(spec.name):
        raise ConfigError("model.name", spec.name, "use letters, digits, '.', '_' or '-' (it names runs and result folders)")
    choice("model.dtype", spec.dtype, DTYPES)
    pos_int("model.max_num_visual_tokens", spec.max_num_visual_tokens)
    if spec.path and spec.id:
        raise ConfigError(
            "model.path", spec.path,
            f"also set model.id=null: the weights come from this directory, so the Hub id {spec.id} would mislabel them",
        )  # fmt: skip
    if spec.path:
        if not Path(spec.path).is_dir():
            raise ConfigError("model.path", spec.path, "directory not found (model=tiny: build it with `make fixtures`)")
        if not (Path(spec.path) / "config.json").is_file():
            raise ConfigError("model.path", spec.path, "no config.json there: not a Hugging Face checkpoint")
    elif spec.id:
        if not spec.revision or not SHA_RE.match(str(spec.revision)):
            raise ConfigError("model.revision", spec.revision, f"a Hub model ({spec.id}) needs a pinned 40-hex commit sha")
    else:
        raise ConfigError("model.id", spec.id, "set model.id (+ model.revision) or model.path")
    return spec


def _quant(d: dict) -> QuantSpec:
    quant = d["quant"]
    method = quant.get("method", "autoround")
    if method == "none":
        known_keys("quant", quant, QuantSpec)
        return QuantSpec()
    if method not in methods.names():
        raise ConfigError("quant.method", method, f"allowed: none, {', '.join(methods.names())}")
    return methods.spec_class(method).from_config(quant, d)


def _calib(d: dict, check: bool = True) -> CalibSpec:
    """The calibration set; `check=False` (the method reads none): only its keys are checked."""
    d = dict(d)
    pages = d.pop("pages", None) or {}
    if not isinstance(pages, dict):
        raise ConfigError("calib.pages", pages, "a mapping: source, dataset, revision, split, data_files, image_field, query_field, path")
    known_keys("calib.pages", pages, PageSourceSpec)
    spec = _spec("calib", CalibSpec, {**d, "pages": PageSourceSpec(**pages)})
    if not check:
        return spec
    choice("calib.kind", spec.kind, CALIB_KINDS)
    if spec.reads_text:
        _text_source(spec)
    if spec.has_images:
        _page_source(spec.pages)
    _shares(spec)
    return spec


def _text_source(spec: CalibSpec) -> None:
    choice("calib.source", spec.source, CALIB_SOURCES)
    if not isinstance(spec.text_field, str) or not spec.text_field:
        raise ConfigError("calib.text_field", spec.text_field, "the name of the column (or .jsonl key) holding the text")
    if spec.split is not None and (not isinstance(spec.split, str) or not spec.split):
        raise ConfigError("calib.split", spec.split, "a split name of the dataset (e.g. train), or null for train")
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


def _page_source(p: PageSourceSpec) -> None:
    choice("calib.pages.source", p.source, PAGE_SOURCES)
    for k in ("image_field", "split"):
        if not isinstance(getattr(p, k), str) or not getattr(p, k):
            raise ConfigError(f"calib.pages.{k}", getattr(p, k), "a column name (image_field) / split name (split)")
    if p.source == "hub":
        if not p.dataset:
            raise ConfigError("calib.pages.dataset", p.dataset, "a Hub page source needs a dataset id (e.g. vidore/colpali_train_set)")
        if not p.revision or not SHA_RE.match(str(p.revision)):
            raise ConfigError("calib.pages.revision", p.revision, "a Hub page source needs a pinned 40-hex commit sha")
        return
    if not p.path or not (Path(p.path) / "pages.jsonl").is_file():
        raise ConfigError("calib.pages.path", p.path, "a folder with a pages.jsonl of {\"image\": file, \"query\": text} lines "
                          "(the demo's: `make fixtures`)")  # fmt: skip


def _share(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ConfigError(name, v, "a fraction of nsamples from 0 to below 1")
    return float(v)


def _shares(spec: CalibSpec) -> None:
    q = _share("calib.queries_share", spec.queries_share)
    if q and spec.kind == "text":
        raise ConfigError("calib.queries_share", q, "queries come from a page source's query field: use calib.kind=pages or mixed")
    if q and spec.pages.query_field is None:
        raise ConfigError("calib.queries_share", q, "the page source has no queries (calib.pages.query_field=null)")
    if spec.kind == "mixed":
        if spec.pages_share is None or _share("calib.pages_share", spec.pages_share) == 0 or spec.pages_share + q >= 1:
            raise ConfigError("calib.pages_share", spec.pages_share,
                              "mixed needs a share of pages above 0 that leaves room for text rows (pages_share + queries_share < 1)")  # fmt: skip
    elif spec.pages_share is not None:
        raise ConfigError("calib.pages_share", spec.pages_share,
                          f"only for calib.kind=mixed (kind={spec.kind}); set it to null")  # fmt: skip


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


def _encoder(d: dict) -> EncoderSpec:
    """The encoder settings of `eval` (their defaults: conf/encoder/default.yaml)."""
    v = {**encoder_defaults(), **{k: d[k] for k in EncoderSpec.FIELDS if k in d}}
    return EncoderSpec(
        query_batch_size=pos_int("eval.query_batch_size", v["query_batch_size"]),
        page_batch_size=pos_int("eval.page_batch_size", v["page_batch_size"]),
        corpus_cache=boolean("eval.corpus_cache", v["corpus_cache"]),
        preprocess_workers=workers("eval.preprocess_workers", v["preprocess_workers"]),
        preprocess_mode=choice("eval.preprocess_mode", v["preprocess_mode"], ("thread", "process")),
        compile=boolean("eval.compile", v["compile"]),
        preprocess_device=choice("eval.preprocess_device", v["preprocess_device"], PREPROCESS_DEVICES),
    )


def _tasks(d: dict) -> tuple[list[str], list[str]]:
    """(public tasks kept, notices about private ones left out)."""
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
    return kept, notices


def _index(d: Any) -> IndexSpec:
    """The `index` group (conf/index/default.yaml); absent: the uncompressed index."""
    if d is None:
        return IndexSpec()
    if not isinstance(d, dict):
        raise ConfigError("index", d, "a config group: set index.pool_factor=<k> and index.dtype=<bf16|fp16|int8|binary>")
    return _spec("index", IndexSpec, d)


def _eval(d: dict, index: IndexSpec) -> EvalSpec:
    shown = d.get("selected")
    d = {("only" if k == "entries" else k): v for k, v in d.items() if k != "selected"}  # `selected`: display only
    if shown is not None and shown != entries_line(d.get("tasks") or [], d.get("languages"), d.get("only")):
        raise ConfigError("eval.selected", shown, "is derived from eval.tasks, eval.languages and eval.entries; set those")
    allowed = ({f for f in EvalSpec.__dataclass_fields__} - {"encoder", "index", "notices"}) | set(EncoderSpec.FIELDS)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"eval.{unknown[0]}", d[unknown[0]], f"unknown key; eval takes: {', '.join(sorted(allowed))}")
    kept, notices = _tasks(d)
    langs = d.get("languages")
    if langs is not None:
        langs = [langs] if isinstance(langs, str) else langs
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
        encoder=_encoder(d),
        index=index,
        fixture_dir=d.get("fixture_dir"),
        only=_entry_pairs(d.get("only"), kept, langs),
        allow_revision_mismatch=boolean("eval.allow_revision_mismatch", d.get("allow_revision_mismatch", False)),
        notices=tuple(notices),
    )
    if not spec.entries():
        raise ConfigError("eval.languages", list(langs or []), f"no subset of {', '.join(kept)} is in these languages")
    return spec


def _plain(cfg: Any) -> dict:
    """The config as plain values (`hydra` left out: its runtime interpolations exist only inside a running app)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if not isinstance(cfg, DictConfig):
        d = dict(cfg)
        d.pop("hydra", None)
        return d
    try:
        return {k: OmegaConf.to_container(cfg[k], resolve=True, throw_on_missing=True) if OmegaConf.is_config(cfg[k])
                else cfg[k] for k in cfg if k != "hydra"}  # fmt: skip
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(str(key), "???", "is mandatory; set it on the command line, e.g. calib.path=...") from None


def _root(d: dict) -> dict[str, Any]:
    """The top-level values every point has, checked."""
    for k in methods.root_fields():  # a method's top-level knobs are integers (or null: its default) whatever the method
        if d.get(k) is not None:
            pos_int(k, d[k])
    seed = d.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed", seed, "must be a non-negative integer")
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
    return {
        "seed": seed, "name": str(name), "outputs_dir": str(d.get("outputs_dir", "outputs")), "device": device,
        "force": boolean("force", d.get("force", False)), "fail_point": boolean("fail_point", d.get("fail_point", False)),
        "tracking_uri": tracking_uri, "system_metrics": str(system_metrics).lower(),
    }  # fmt: skip


def validate(cfg: Any) -> SweepPoint:
    """Turn a composed config (DictConfig or plain dict) into a validated `SweepPoint`."""
    d = _plain(cfg)
    allowed = top_level_keys()
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(unknown[0], d[unknown[0]], f"unknown top-level key; allowed: {', '.join(sorted(allowed - {'hydra'}))}")
    for k in ("model", "quant", "calib", "eval"):
        if not isinstance(d.get(k), dict):
            raise ConfigError(k, d.get(k), f"missing config group; choose one with {k}=<option>")
    root = _root(d)
    from colq_sweep.search.tolerance import SearchSpec

    SearchSpec.from_config(d.get("search"))  # read by the tolerance search; checked for every job all the same
    quant = _quant(d)
    model = _model(d["model"])
    calib = _calib(d["calib"], check=quant.needs_calibration)
    if quant.needs_images and not calib.has_images:
        raise ConfigError("quant.vision", True, f"the vision tower can only be calibrated on images, and calib={calib.kind} "
                          "has none: use calib=pages or calib=mixed (or quant.vision=false)")  # fmt: skip
    return SweepPoint(model=model, quant=quant, calib=calib, eval=_eval(d["eval"], _index(d.get("index"))), **root)
