"""What a sweep needs from the Hugging Face Hub, and whether this machine has it.

A point needs its checkpoint (`model.id` at `model.revision`), its calibration set (`calib.dataset` at
`calib.revision`, Hub source only) and, for each ViDoRe task it evaluates, the dataset configs mteb's loader of
that task reads, at mteb's pinned revision (`tasks.DATASETS`, `tasks.dataset_configs`). Offline
(`HF_HUB_OFFLINE=1`) a model is read from the Hub snapshot cache and a dataset only from the *prepared* Arrow
cache `<HF_DATASETS_CACHE>/ORG___NAME/<config>/0.0.0/<commit>/`, whose folder name is the revision it holds.

`missing(points)` lists what is absent (offline: from the caches; online: cached, or else reachable within
seconds, with short timeouts and no retries); `fetch(need)` downloads one and prepares the datasets caches
(`python -m colq_sweep.prefetch`, for a login node with internet before an offline GPU sweep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from colq_sweep.config import SweepPoint
from colq_sweep.hub.cache import datasets_cache
from colq_sweep.tasks import DATASETS, FIXTURE_TASK, dataset_configs

ONLINE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Need:
    kind: str  # model | calibration | dataset
    repo: str
    revision: str | None
    configs: tuple[str, ...] = ()  # datasets: the configs (subsets) a loader reads
    why: str = ""  # which task or point needs it
    any_revision: bool = False  # eval.allow_revision_mismatch: a cached other revision will do (and is recorded)
    data_files: tuple[str, str] | None = None  # calibration pages: (split, the one file of it that is read)

    @property
    def label(self) -> str:
        rev = self.revision or "main"
        configs = ", ".join(self.configs) if len(self.configs) <= 3 else f"{len(self.configs)} configs: {self.configs[0]}, …"
        return f"{self.kind} {self.repo}@{rev[:12]}" + (f" [{configs}]" if self.configs else "")


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "0").upper() in ("1", "TRUE", "YES")


def needs(points: list[SweepPoint]) -> list[Need]:
    """Everything the points read from the Hub, each once (datasets: the union of configs per repo)."""
    models: dict[tuple, Need] = {}
    calib: dict[tuple, Need] = {}
    data: dict[tuple, set[str]] = {}
    why: dict[tuple, str] = {}
    for p in points:
        if p.model.id:
            models[(p.model.id, p.model.revision)] = Need("model", p.model.id, p.model.revision, why=p.model.name)
        if p.quant.needs_calibration and p.calib.reads_text and p.calib.source == "hub":
            key = (p.calib.dataset, p.calib.revision)
            calib[key] = Need("calibration", str(p.calib.dataset), p.calib.revision, why="calib")
        pg = p.calib.pages
        if p.quant.needs_calibration and p.calib.has_images and pg.source == "hub":
            files = (pg.split, pg.data_files) if pg.data_files else None
            calib[(pg.dataset, pg.revision, files)] = Need("calibration", str(pg.dataset), pg.revision, why="calib.pages",
                                                           data_files=files)  # fmt: skip
        by_task: dict[str, list[str]] = {}
        for task, subset in p.eval.entries():
            if task != FIXTURE_TASK:
                by_task.setdefault(task, []).append(subset)
        for task, subsets in by_task.items():
            repo, rev = DATASETS[task]
            data.setdefault((repo, rev), set()).update(dataset_configs(task, subsets))
            why[(repo, rev)] = task
    out = list(models.values()) + list(calib.values())
    lax = {task for p in points if p.eval.allow_revision_mismatch for task in p.eval.tasks}
    out += [Need("dataset", repo, rev, tuple(sorted(cfgs)), why=why[(repo, rev)],
                 any_revision=why[(repo, rev)] in lax) for (repo, rev), cfgs in data.items()]  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ the caches


def cached_dataset_revisions(repo: str, config_name: str) -> list[str]:
    """The revisions (commit folders) of `repo`/`config_name` in the prepared datasets cache, newest first (the
    offline loader takes the newest)."""
    return [d.name for d in _dataset_dirs(repo, config_name)]


def _dataset_dirs(repo: str, config_name: str) -> list[Path]:
    """`<cache>/ORG___name/<config>/<version>/<revision>/` folders (as `datasets` names them), newest first."""
    from datasets.naming import camelcase_to_snakecase

    org, _, name = repo.rpartition("/")
    root = datasets_cache() / (f"{org}___{camelcase_to_snakecase(name)}" if org else camelcase_to_snakecase(name))
    dirs = [d for d in root.glob(f"{config_name}/*/*") if d.is_dir() and (d / "dataset_info.json").is_file()]
    return sorted(dirs, key=lambda d: d.stat().st_mtime, reverse=True)


def model_snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot of `repo` at `revision` if its config and every weight file are there."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached
        return None
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        return None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        if any(not (path / s).is_file() for s in shards):
            return None
    return path


def cache_problem(need: Need) -> str | None:
    """None when the cache holds what the need asks for, else what is wrong. For a dataset the offline loader
    reads the newest cached revision, so that one must be the pinned one (unless `any_revision`)."""
    if need.kind == "model":
        return None if model_snapshot(need.repo, need.revision) is not None else "not in the local cache"
    pinned = need.revision if need.revision and len(need.revision) == 40 else None
    for config in need.configs or ("default*" if need.data_files else "default",):  # data_files: default-<hash>
        revs = cached_dataset_revisions(need.repo, config)
        if not revs:
            return f"config {config} not in the local datasets cache"
        if pinned and revs[0] != pinned and not need.any_revision:
            return (f"config {config} is cached at revision {revs[0][:12]}, not the pinned {pinned[:12]} (the offline "
                    "loader would read it; or set eval.allow_revision_mismatch=true)")
    return None


def reachable(need: Need) -> str | None:
    """None if the Hub answers for it within seconds, else why not (one short attempt, no retries)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        info = api.model_info if need.kind == "model" else api.dataset_info
        info(need.repo, revision=need.revision, timeout=ONLINE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - any failure means: not available to this sweep
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    return None


def missing(points: list[SweepPoint]) -> list[tuple[Need, str]]:
    """(need, why) for everything neither cached nor (online) reachable."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    from concurrent.futures import ThreadPoolExecutor

    absent = [(need, problem) for need in needs(points) if (problem := cache_problem(need)) is not None]
    if offline():
        return [(need, f"{problem} (HF_HUB_OFFLINE=1)") for need, problem in absent]
    with ThreadPoolExecutor(max_workers=16) as pool:  # a silent network costs one timeout, not one per item
        answers = list(pool.map(lambda item: reachable(item[0]), absent))
    return [(need, f"not cached and the Hub did not answer ({why})") for (need, _), why in zip(absent, answers, strict=True) if why]


def fetch(need: Need) -> None:
    """Download `need` at its revision and, for a dataset, prepare the Arrow cache the offline loader reads."""
    if need.kind == "model":
        from huggingface_hub import snapshot_download

        snapshot_download(need.repo, revision=need.revision)
        return
    import datasets

    if need.data_files:
        split, file = need.data_files
        datasets.load_dataset(need.repo, revision=need.revision, split=split, data_files={split: file})
        return
    for config in need.configs or (None,):
        datasets.load_dataset(need.repo, config, revision=need.revision)


def size_of(need: Need) -> int:
    """Bytes on disk of what the caches hold for `need` (0 if absent)."""
    if need.kind == "model":
        path = model_snapshot(need.repo, need.revision)
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path else 0
    total = 0
    for config in need.configs or ("default",):
        dirs = _dataset_dirs(need.repo, config)
        if dirs:
            total += sum(f.stat().st_size for f in dirs[0].rglob("*") if f.is_file())
    return total


class DatasetRevisionError(RuntimeError):
    """The cached dataset is another revision than the one pinned: `str(err)` is the one line to show."""


def loaded_revision(task, allow_other: bool = False) -> str:
    """The dataset revision an mteb ViDoRe task will really read. Online that is the pinned one (it is
    downloaded); offline it is the newest cached one, which must be the pinned one unless `allow_other` — then the
    task is re-labelled with the revision it reads, so its results and caches carry the truth."""
    name = task.metadata.name
    pinned = task.metadata.dataset["revision"]
    if name not in DATASETS or not offline():
        return pinned
    repo = task.metadata.dataset["path"]
    newest = {}
    for config in dataset_configs(name, list(task.hf_subsets)):
        revs = cached_dataset_revisions(repo, config)
        if not revs:
            raise DatasetRevisionError(f"{name}: {repo} config {config} is not in the local datasets cache "
                                       "(python -m colq_sweep.prefetch with the sweep's overrides fetches it)")  # fmt: skip
        newest[config] = revs[0]
    actual = set(newest.values())
    if actual == {pinned}:
        return pinned
    if len(actual) > 1 or not allow_other:
        raise DatasetRevisionError(
            f"{name}: the cached {repo} is revision {', '.join(sorted(r[:12] for r in actual))}, mteb pins "
            f"{pinned[:12]}; prefetch the pinned revision, or set eval.allow_revision_mismatch=true to use it (recorded)"
        )
    (other,) = actual
    task.metadata.dataset["revision"] = other
    return other
