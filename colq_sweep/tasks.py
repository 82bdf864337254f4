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
# (Hub dataset id, pinned revision) of each task, as mteb 2.26 pins them (checked by tests/test_config.py).
DATASETS: dict[str, tuple[str, str]] = {
    "VidoreArxivQARetrieval": ("mteb/arxivqa_test_subsampled_beir", "179762404662be6bf48c30b4fb2b2ef8c6891290"),
    "VidoreDocVQARetrieval": ("mteb/docvqa_test_subsampled_beir", "e78cd130055fcb8d69bb0ff4115c4712a157f3d3"),
    "VidoreInfoVQARetrieval": ("mteb/infovqa_test_subsampled_beir", "74d396242cc281c021eeb38d0ee5f6f30afc1fad"),
    "VidoreTabfquadRetrieval": ("mteb/tabfquad_test_subsampled_beir", "24a4541c4c461f5ff4f4af4e97ec820715281a06"),
    "VidoreTatdqaRetrieval": ("mteb/tatdqa_test_beir", "dc7924ec102addd7f85c1ccfdd8625848179f615"),
    "VidoreShiftProjectRetrieval": ("mteb/shiftproject_test_beir", "78e6f5ad3bbc1af50ae9c0f006f57462213269fb"),
    "VidoreSyntheticDocQAAIRetrieval": ("mteb/syntheticDocQA_artificial_intelligence_test_beir", "12c5b7a81fc19d66f1844642acdb88e8ad79af16"),
    "VidoreSyntheticDocQAEnergyRetrieval": ("mteb/syntheticDocQA_energy_test_beir", "eda52c9a0519252cfaacb7ae5e5da516b7d4b8cb"),
    "VidoreSyntheticDocQAGovernmentReportsRetrieval": ("mteb/syntheticDocQA_government_reports_test_beir", "ec534abea699035a18f9fd76f215277de9db9600"),
    "VidoreSyntheticDocQAHealthcareIndustryRetrieval": ("mteb/syntheticDocQA_healthcare_industry_test_beir", "81d53880628d641aaf7365f3b2e65f57c814ecca"),
    "Vidore2ESGReportsRetrieval": ("vidore/esg_reports_v2", "0542c0d03da0ec1c8cbc517c8d78e7e95c75d3d3"),
    "Vidore2EconomicsReportsRetrieval": ("vidore/economics_reports_v2", "b3e3a04b07fbbaffe79be49dabf92f691fbca252"),
    "Vidore2BioMedicalLecturesRetrieval": ("vidore/biomedical_lectures_v2", "a29202f0da409034d651614d87cd8938d254e2ea"),
    "Vidore2ESGReportsHLRetrieval": ("vidore/esg_reports_human_labeled_v2", "6d467dedb09a75144ede1421747e47cf036857dd"),
    "Vidore3FinanceEnRetrieval": ("vidore/vidore_v3_finance_en_mteb_format", "fa78cb14152b3dde8c5defdc4e3ddf50de69dfeb"),
    "Vidore3IndustrialRetrieval": ("vidore/vidore_v3_industrial_mteb_format", "f732b725cf4a70803210edfe265a04f8bd5328f6"),
    "Vidore3ComputerScienceRetrieval": ("vidore/vidore_v3_computer_science_mteb_format", "fb7fb69f81f7db62790f40494124b8ad22b424ab"),
    "Vidore3PharmaceuticalsRetrieval": ("vidore/vidore_v3_pharmaceuticals_mteb_format", "237ed4f43c7fb3c4df07ec4e9dd0a4366be555b0"),
    "Vidore3HrRetrieval": ("vidore/vidore_v3_hr_mteb_format", "bc7d43d64815ed30f664168c8052106484aba7fd"),
    "Vidore3FinanceFrRetrieval": ("vidore/vidore_v3_finance_fr_mteb_format", "8a2adfda85a7967c7252129703d9b3c7c9f038a9"),
    "Vidore3PhysicsRetrieval": ("vidore/vidore_v3_physics_mteb_format", "2c18ef90ab3ef93a9d86ecc6521cdae2a29f8300"),
    "Vidore3EnergyRetrieval": ("vidore/vidore_v3_energy_mteb_format", "84fca99e5978604bae30f2436eacb6dbaa0532e9"),
    "Vidore3TelecomRetrieval": ("mteb-private/Vidore3TelecomRetrieval", "a54635a274ef2835721b7cbe3eb27483b9ec964b"),
    "Vidore3NuclearRetrieval": ("mteb-private/Vidore3NuclearRetrieval", "a463fc67fefc01152153101e88a32d5f9515e3e3"),
}


def dataset_configs(task: str, subsets: list[str] | tuple[str, ...]) -> list[str]:
    """The dataset configs mteb's loader of `task` reads for those subsets: `corpus`, `queries`, `qrels` (ViDoRe v1
    and v2: one corpus for every language, all languages loaded), or `<subset>-corpus|queries|qrels` (v3)."""
    if CATALOGUE[task].benchmark == "ViDoRe(v3)":
        return [f"{s}-{part}" for s in subsets for part in ("corpus", "queries", "qrels")]
    return ["corpus", "queries", "qrels"]

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
