"""A Hugging Face cache in the real Hub layout, built from the project's own tiny data, so that the code a real
run takes (`model=colqwen3-4b calib=pile10k eval=vidore`: Hub ids at pinned revisions, `datasets`, mteb's own
ViDoRe task classes and loaders) runs offline in the tests.

`build_hub_cache(hf_home, fixtures)` writes:
- the tiny checkpoint as `TomoroAI/tomoro-colqwen3-embed-4b` and `-8b` at every revision the configs pin (mteb's
  and the study's), in Tomoro's layout: its config names remote code in `auto_map` whose files are absent (we never
  run remote code). The Hub snapshot cache has no public writer, so `models--ORG--NAME/snapshots/<rev>/` and
  `refs/main` are laid out as huggingface_hub lays them;
- `NeelNanda/pile-10k` (a few hundred rows) and three ViDoRe tasks under their real dataset ids and mteb's pinned
  revisions — `VidoreArxivQARetrieval` (v1), `Vidore2ESGReportsRetrieval` (v2, queries in English and French, one
  corpus) and `Vidore3ComputerScienceRetrieval` (v3, per-language configs) — in the columns and configs mteb's
  loaders read, written with the `datasets` builder (hubcache.publish_dataset) into the prepared cache that
  offline loading reads.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from colq_sweep.fixtures import FixturePaths
from colq_sweep.hubcache import publish_dataset
from colq_sweep.synthetic import calibration_texts
from colq_sweep.tasks import DATASETS

MODEL_IDS = ("TomoroAI/tomoro-colqwen3-embed-4b", "TomoroAI/tomoro-colqwen3-embed-8b")
HUB_TASKS = ("VidoreArxivQARetrieval", "Vidore2ESGReportsRetrieval", "Vidore3ComputerScienceRetrieval")
PILE_REVISION = "0" * 39 + "1"  # the calibration set's commit in the fixture cache (tests pin calib.revision to it)
TOMORO_AUTO_MAP = {  # as Tomoro's config.json names its remote code (the files are deliberately absent)
    "AutoConfig": "configuration_colqwen3.ColQwen3Config",
    "AutoModel": "modeling_colqwen3.ColQwen3",
    "AutoProcessor": "processing_colqwen3.ColQwen3Processor",
}
LANG_NAMES = {"en": "english", "fr": "french"}


def pinned_model_revisions(conf_dir: Path) -> dict[str, set[str]]:
    """Every (model id -> revisions) the model and study configs pin."""
    import yaml

    out: dict[str, set[str]] = {m: set() for m in MODEL_IDS}
    for f in sorted((conf_dir / "model").glob("*.yaml")) + sorted((conf_dir / "study").glob("*.yaml")):
        d = yaml.safe_load(f.read_text()) or {}
        model = d.get("model", d)
        rev = model.get("revision") if isinstance(model, dict) else None
        size = "8b" if "8b" in f.stem else "4b"
        if rev and len(str(rev)) == 40:
            out[f"TomoroAI/tomoro-colqwen3-embed-{size}"].add(str(rev))
    return out


def publish_model(hub_cache: Path, repo: str, revision: str, checkpoint: Path) -> Path:
    """`<hub_cache>/models--ORG--NAME/snapshots/<revision>/` holding `checkpoint`'s files, Tomoro's auto_map."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / revision
    if snap.is_dir():
        return snap
    tmp = snap.with_name(snap.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["auto_map"] = TOMORO_AUTO_MAP
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snap


def _task_rows(task_dir: Path) -> tuple[list[dict], dict[str, list[dict]], dict[str, dict]]:
    """The fixture task's pages (as PNG bytes), queries per language and qrels per language."""
    pages = [json.loads(line) for line in (task_dir / "corpus.jsonl").read_text().splitlines() if line.strip()]
    corpus = [{"id": p["id"], "bytes": (task_dir / p["image"]).read_bytes()} for p in pages]
    queries, qrels = {}, {}
    for lang in LANG_NAMES:
        queries[lang] = [json.loads(line) for line in (task_dir / f"queries-{lang}.jsonl").read_text().splitlines() if line.strip()]
        qrels[lang] = json.loads((task_dir / f"qrels-{lang}.json").read_text())
    return corpus, queries, qrels


def _image_features(extra: dict):
    from datasets import Features, Image, Value

    return Features({**{k: Value(v) for k, v in extra.items()}, "image": Image()})


def publish_vidore_tasks(fixtures: FixturePaths, cache_dir: Path | None = None) -> dict[str, Path]:
    """The three ViDoRe tasks, in mteb's loader formats, from the fixture task's pages, queries and qrels."""
    from datasets import Features, Value

    corpus, queries, qrels = _task_rows(fixtures.task)
    num = {p["id"]: i for i, p in enumerate(corpus)}  # v1/v2 corpus ids are integers
    out = {}

    # v1: configs corpus / queries / qrels, split test; integer ids, mteb prefixes them itself
    repo, rev = DATASETS["VidoreArxivQARetrieval"]
    en_q = queries["en"]
    qnum = {q["id"]: i for i, q in enumerate(en_q)}
    qrel_feat = Features({"query-id": Value("int64"), "corpus-id": Value("int64"), "score": Value("int64")})
    publish_dataset(repo, {"test": lambda: ({"corpus-id": num[p["id"]], "image": {"bytes": p["bytes"]}} for p in corpus)},
                    rev, "corpus", features=_image_features({"corpus-id": "int64"}), cache_dir=cache_dir)  # fmt: skip
    publish_dataset(repo, {"test": lambda: ({"query-id": qnum[q["id"]], "query": q["text"]} for q in en_q)}, rev,
                    "queries", features=Features({"query-id": Value("int64"), "query": Value("string")}), cache_dir=cache_dir)  # fmt: skip
    publish_dataset(repo, {"test": lambda: ({"query-id": qnum[q], "corpus-id": num[d], "score": s}
                                            for q, docs in qrels["en"].items() for d, s in docs.items())},
                    rev, "qrels", features=qrel_feat, cache_dir=cache_dir)  # fmt: skip
    out["VidoreArxivQARetrieval"] = Path(repo)

    # v2: one corpus for every language; queries carry a `language` column; qrels for all queries
    repo, rev = DATASETS["Vidore2ESGReportsRetrieval"]
    both = [(lang, q) for lang in LANG_NAMES for q in queries[lang]]
    qnum2 = {q["id"]: i for i, (_, q) in enumerate(both)}
    publish_dataset(repo, {"test": lambda: ({"corpus-id": num[p["id"]], "image": {"bytes": p["bytes"]}} for p in corpus)},
                    rev, "corpus", features=_image_features({"corpus-id": "int64"}), cache_dir=cache_dir)  # fmt: skip
    publish_dataset(repo, {"test": lambda: ({"query-id": qnum2[q["id"]], "query": q["text"], "language": LANG_NAMES[lang]}
                                            for lang, q in both)}, rev, "queries",
                    features=Features({"query-id": Value("int64"), "query": Value("string"), "language": Value("string")}), cache_dir=cache_dir)  # fmt: skip
    publish_dataset(repo, {"test": lambda: ({"query-id": qnum2[q], "corpus-id": num[d], "score": s}
                                            for lang in LANG_NAMES for q, docs in qrels[lang].items() for d, s in docs.items())},
                    rev, "qrels", features=qrel_feat, cache_dir=cache_dir)  # fmt: skip
    out["Vidore2ESGReportsRetrieval"] = Path(repo)

    # v3: per-language configs `<language>-corpus|queries|qrels` (RetrievalDatasetLoader), string ids
    repo, rev = DATASETS["Vidore3ComputerScienceRetrieval"]
    for lang, name in LANG_NAMES.items():
        publish_dataset(repo, {"test": lambda: ({"id": p["id"], "image": {"bytes": p["bytes"]}} for p in corpus)},
                        rev, f"{name}-corpus", features=_image_features({"id": "string"}), cache_dir=cache_dir)  # fmt: skip
        publish_dataset(repo, {"test": lambda lang=lang: ({"id": q["id"], "text": q["text"]} for q in queries[lang])},
                        rev, f"{name}-queries", features=Features({"id": Value("string"), "text": Value("string")}), cache_dir=cache_dir)  # fmt: skip
        publish_dataset(repo, {"test": lambda lang=lang: ({"query-id": q, "corpus-id": d, "score": s}
                                                          for q, docs in qrels[lang].items() for d, s in docs.items())},
                        rev, f"{name}-qrels",
                        features=Features({"query-id": Value("string"), "corpus-id": Value("string"), "score": Value("int64")}), cache_dir=cache_dir)  # fmt: skip
    out["Vidore3ComputerScienceRetrieval"] = Path(repo)
    return out


def publish_pile(cache_dir: Path | None = None, n: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)  # pile-like: texts of varied length, some too short for the calibration seqlen
    rows = [t[: rng.randint(60, len(t))] for t in calibration_texts(seed, n, 400)]
    publish_dataset("NeelNanda/pile-10k", {"train": lambda: ({"text": t, "meta": json.dumps({"i": i})} for i, t in enumerate(rows))},
                    PILE_REVISION, cache_dir=cache_dir)  # fmt: skip


def build_hub_cache(hf_home: Path, fixtures: FixturePaths, conf_dir: Path) -> Path:
    """Everything above under `hf_home` (`hub/` and `datasets/`, as HF_HOME lays them out)."""
    for repo, revisions in pinned_model_revisions(conf_dir).items():
        for rev in sorted(revisions):
            publish_model(hf_home / "hub", repo, rev, fixtures.checkpoint)
    publish_pile(hf_home / "datasets")
    publish_vidore_tasks(fixtures, hf_home / "datasets")
    return hf_home

