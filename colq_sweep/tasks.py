"""The ViDoRe task catalogue as mteb 2.26 defines it, kept static so that configs validate in milliseconds
without importing mteb. `tests/test_config.py` checks it against mteb's own metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

LANGUAGES = {"en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian", "pt": "portuguese"}
SUBSET_TO_LANG = {v: k for k, v in LANGUAGES.items()}
FIXTURE_TASK = "VidoreFixtureRetrieval"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    benchmark: str  # ViDoRe(v1) | ViDoRe(v2) | ViDoRe(v3) | fixture
    subsets: tuple[str, ...]  # mteb hf_subset names; ("default",) for single-language tasks
    main_score: str
    public: bool = True

    def language_of(self, subset: str) -> str:
        """ISO 639-1 code of a subset ("default" subsets of ViDoRe v1/v2 are English)."""
        return SUBSET_TO_LANG.get(subset, "en")


_V2_SUBSETS = ("french", "spanish", "english", "german")
_V3_SUBSETS = ("french", "spanish", "english", "german", "italian", "portuguese")

_V1 = [
    "VidoreArxivQARetrieval",
    "VidoreDocVQARetrieval",
    "VidoreInfoVQARetrieval",
    "VidoreTabfquadRetrieval",
    "VidoreTatdqaRetrieval",
    "VidoreShiftProjectRetrieval",
    "VidoreSyntheticDocQAAIRetrieval",
    "VidoreSyntheticDocQAEnergyRetrieval",
    "VidoreSyntheticDocQAGovernmentReportsRetrieval",
    "VidoreSyntheticDocQAHealthcareIndustryRetrieval",
]
_V2 = ["Vidore2ESGReportsRetrieval", "Vidore2EconomicsReportsRetrieval", "Vidore2BioMedicalLecturesRetrieval"]
_V3_PUBLIC = [
    "Vidore3FinanceEnRetrieval",
    "Vidore3IndustrialRetrieval",
    "Vidore3ComputerScienceRetrieval",
    "Vidore3PharmaceuticalsRetrieval",
    "Vidore3HrRetrieval",
    "Vidore3FinanceFrRetrieval",
    "Vidore3PhysicsRetrieval",
    "Vidore3EnergyRetrieval",
]
_V3_PRIVATE = ["Vidore3TelecomRetrieval", "Vidore3NuclearRetrieval"]

CATALOGUE: dict[str, TaskInfo] = {
    **{n: TaskInfo(n, "ViDoRe(v1)", ("default",), "ndcg_at_5") for n in _V1},
    **{n: TaskInfo(n, "ViDoRe(v2)", _V2_SUBSETS, "ndcg_at_5") for n in _V2},
    "Vidore2ESGReportsHLRetrieval": TaskInfo("Vidore2ESGReportsHLRetrieval", "ViDoRe(v2)", ("default",), "ndcg_at_5"),
    **{n: TaskInfo(n, "ViDoRe(v3)", _V3_SUBSETS, "ndcg_at_10") for n in _V3_PUBLIC},
    **{n: TaskInfo(n, "ViDoRe(v3)", _V3_SUBSETS, "ndcg_at_10", public=False) for n in _V3_PRIVATE},
    FIXTURE_TASK: TaskInfo(FIXTURE_TASK, "fixture", ("en", "fr"), "ndcg_at_5"),
}
FIXTURE_SUBSET_LANG = {"en": "en", "fr": "fr"}


def subset_language(task: str, subset: str) -> str:
    if task == FIXTURE_TASK:
        return FIXTURE_SUBSET_LANG[subset]
    return CATALOGUE[task].language_of(subset)


def benchmark_tasks(benchmark: str, include_private: bool = False) -> list[str]:
    return [t.name for t in CATALOGUE.values() if t.benchmark == benchmark and (t.public or include_private)]


def select_entries(tasks: list[str], languages: list[str] | None) -> list[tuple[str, str]]:
    """(task, subset) entries of `tasks` whose language is in `languages` (None = all)."""
    out = []
    for name in tasks:
        for subset in CATALOGUE[name].subsets:
            if languages is None or subset_language(name, subset) in languages:
                out.append((name, subset))
    return out
