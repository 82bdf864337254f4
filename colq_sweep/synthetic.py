"""A synthetic page-retrieval task that a tiny ColQwen3 can learn to read on a CPU in minutes.

Pages are written in a small logographic script. A concept is a compound of a modifier and a noun ("water cost",
"carbon risk": 8 x 8 = 64 concepts); its glyph is a 4x4 block pattern that stacks the modifier's sign over the
noun's sign. A page shows three to five glyphs at jittered places in a grid of 32-pixel cells (one cell = one
visual token after Qwen3-VL's 2x2 patch merge), worn (blocks missing, stray blocks), among text-like filler
lines, under a coloured header band, in one of three page sizes, with random paper and ink colours. Half the
pages also show a crossed compound (one shown concept's modifier with another's noun).

A query names two concepts of one page in English or French through one of several templates ("Which page
covers water cost and staff risk?", "Que dit le rapport sur cout de l'eau et risque du personnel ?").
Relevance is graded: a page that shows both concepts has grade 2, a page that shows one of them grade 1, so
NDCG rewards ranking full matches above partial ones. A model that reads words but does not bind each modifier
to its noun ranks "water risk ... staff cost" pages as high as "water cost ... staff risk" ones and stays far
from NDCG 1.

Everything is a pure function of a seed and a stream name, pixel for pixel the same on every machine (integer
rectangle drawing, no fonts): `colq_sweep.fixtures` writes the held-out evaluation task from the "heldout"
stream, `colq_sweep.fixture_train` trains on the "train/<step>" streams.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, ImageDraw

# Compounds that share a word are the hard distractors: a model that reads words but not which modifier goes with
# which noun confuses "water cost and energy risk" with "water risk and energy cost". English puts the modifier
# first, French last ("cout de l'eau"): either way a phrase is complete only at its last token, which has to
# look back at the other word (work for the text decoder, the part W4A16 quantizes).
MODIFIERS: tuple[tuple[str, str], ...] = (
    ("water", "de l'eau"),
    ("energy", "de l'energie"),
    ("carbon", "du carbone"),
    ("staff", "du personnel"),
    ("software", "du logiciel"),
    ("supplier", "du fournisseur"),
    ("office", "du bureau"),
    ("fleet", "de la flotte"),
)
NOUNS: tuple[tuple[str, str], ...] = (
    ("cost", "cout"),
    ("risk", "risque"),
    ("target", "objectif"),
    ("audit", "audit"),
    ("budget", "budget"),
    ("growth", "croissance"),
    ("policy", "politique"),
    ("report", "rapport"),
)
# (English, French) names of the concepts a page can show; concept k = (MODIFIERS[k // 8], NOUNS[k % 8]).
CONCEPTS: tuple[tuple[str, str], ...] = tuple(
    (f"{m_en} {n_en}", f"{n_fr} {m_fr}") for m_en, m_fr in MODIFIERS for n_en, n_fr in NOUNS
)
LANGUAGES = ("en", "fr")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "Which page covers {a} and {b}?",
        "What does the report say about {a} and {b}?",
        "Find the {a} figures for {b}",
        "{a} and {b}",
        "Show the section on {a} with {b}",
        "How did {a} relate to {b} this year?",
    ),
    "fr": (
        "Quelle page traite de {a} et {b} ?",
        "Que dit le rapport sur {a} et {b} ?",
        "Trouver les chiffres de {a} pour {b}",
        "{a} et {b}",
        "Montrer la section sur {a} avec {b}",
        "Quel lien entre {a} et {b} cette annee ?",
    ),
}


def phrase(concept: int, language: str) -> str:
    return CONCEPTS[concept][LANGUAGES.index(language)]


CELL = 32  # pixels per visual token (patch 16 x spatial merge 2)
PAGE_SIZES = ((192, 256), (224, 192), (160, 224))  # (width, height): 48, 42 and 35 visual tokens
GLYPH_GRID = 4  # a glyph is GLYPH_GRID x GLYPH_GRID blocks ...
GLYPH_BLOCK = 5  # ... of this many pixels: 20 x 20 pixels, placed anywhere inside its 32-pixel cell
BLOCK_DROPOUT = 0.1  # each ink block of a glyph is missing with this probability ...
STRAY_BLOCK = 0.3  # ... and a glyph gets one stray block with this one (worn print)


def _stream(seed: int, name: str) -> random.Random:
    """An independent, portable random stream per (seed, name) (string seeding is stable across runs)."""
    return random.Random(f"colq-synthetic/{seed}/{name}")


def _signs(n: int, salt: str) -> list[int]:
    """`n` patterns of GLYPH_GRID x 2 blocks (bitmasks), 3-5 blocks each, pairwise at least 3 blocks apart."""
    rng = random.Random(f"colq-synthetic/signs/{salt}")
    chosen: list[int] = []
    while len(chosen) < n:
        mask = rng.getrandbits(GLYPH_GRID * 2)
        if 3 <= bin(mask).count("1") <= 5 and all(bin(mask ^ m).count("1") >= 3 for m in chosen):
            chosen.append(mask)
    return chosen


def _glyphs() -> tuple[tuple[int, ...], ...]:
    """One GLYPH_GRID x GLYPH_GRID pattern per concept (indices of its ink blocks, row-major): the modifier's sign
    in the top two rows, the noun's sign in the bottom two."""
    mods, nouns = _signs(len(MODIFIERS), "modifiers"), _signs(len(NOUNS), "nouns")
    out = []
    for m in mods:
        for n in nouns:
            mask = m | n << (GLYPH_GRID * 2)
            out.append(tuple(i for i in range(GLYPH_GRID * GLYPH_GRID) if mask >> i & 1))
    return tuple(out)


GLYPHS = _glyphs()


@dataclass(frozen=True)
class Page:
    concepts: tuple[int, ...]  # indices into CONCEPTS
    cells: tuple[tuple[int, int], ...]  # (column, row) of each concept's glyph, in CELL units
    image: Image.Image

    def token_index(self, k: int) -> int:
        """Index among the page's visual tokens of the cell holding concept k's glyph (row-major merge grid)."""
        c, r = self.cells[k]
        return r * (self.image.size[0] // CELL) + c


@dataclass(frozen=True)
class Query:
    language: str
    text: str
    concepts: tuple[int, int]


def render_page(rng: random.Random, concepts: Iterable[int]) -> Page:
    """A page showing `concepts` (each once) at random cells of its body, filler elsewhere."""
    concepts = tuple(concepts)
    width, height = rng.choice(PAGE_SIZES)
    cols, rows = width // CELL, height // CELL
    paper = tuple(rng.randint(215, 255) for _ in range(3))
    img = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(img)
    # header band with light "title" marks
    draw.rectangle([0, 0, width - 1, CELL - 5], fill=tuple(rng.randint(30, 130) for _ in range(3)))
    x = 6
    while x < width - 20:
        w = rng.randint(8, 30)
        draw.rectangle([x, 12, min(x + w, width - 8), 15], fill=(235, 235, 235))
        x += w + rng.randint(4, 10)
    body = [(c, r) for r in range(1, rows) for c in range(cols)]
    cells = rng.sample(body, len(concepts))
    for concept, (c, r) in zip(concepts, cells, strict=True):
        ink = tuple(rng.randint(0, 90) for _ in range(3))
        span = GLYPH_GRID * GLYPH_BLOCK
        x0 = c * CELL + rng.randint(0, CELL - span)
        y0 = r * CELL + rng.randint(0, CELL - span)
        blocks = [i for i in GLYPHS[concept] if rng.random() >= BLOCK_DROPOUT]
        if rng.random() < STRAY_BLOCK:
            blocks.append(rng.randrange(GLYPH_GRID * GLYPH_GRID))
        for i in blocks:
            bx, by = x0 + (i % GLYPH_GRID) * GLYPH_BLOCK, y0 + (i // GLYPH_GRID) * GLYPH_BLOCK
            draw.rectangle([bx, by, bx + GLYPH_BLOCK - 1, by + GLYPH_BLOCK - 1], fill=ink)
    for c, r in body:
        if (c, r) in cells or rng.random() < 0.3:
            continue
        grey = rng.randint(90, 170)
        for k in range(rng.randint(1, 3)):
            y = r * CELL + 6 + 9 * k
            x0 = c * CELL + rng.randint(1, 6)
            draw.line([x0, y, x0 + rng.randint(10, 28), y], fill=(grey, grey, grey), width=rng.randint(1, 2))
    return Page(concepts, tuple(cells), img)


def random_page(rng: random.Random) -> Page:
    """3-5 concepts; half the pages also show a crossed compound (one concept's modifier with another's noun),
    the distractor that only a model that binds modifiers to nouns can tell apart."""
    n_words = len(NOUNS)
    concepts = rng.sample(range(len(CONCEPTS)), rng.randint(3, 4))
    if rng.random() < 0.5:
        a, b = rng.sample(concepts, 2)
        cross = (a // n_words) * n_words + b % n_words
        if cross not in concepts:
            concepts.append(cross)
    rng.shuffle(concepts)
    return render_page(rng, concepts)


def make_query(rng: random.Random, page: Page, language: str) -> Query:
    a, b = rng.sample(page.concepts, 2)
    text = rng.choice(TEMPLATES[language]).format(a=phrase(a, language), b=phrase(b, language))
    return Query(language, text, (a, b))


def grade(query: Query, page: Page) -> int:
    """2: the page shows both concepts of the query; 1: one of them; 0: neither."""
    return len(set(query.concepts) & set(page.concepts))


@dataclass(frozen=True)
class Split:
    pages: list[Page]
    queries: dict[str, list[tuple[Query, int]]]  # language -> (query, index of the page it was drawn from)

    def qrels(self, language: str) -> list[dict[int, int]]:
        """Per query of `language`: page index -> grade, for every page with grade > 0."""
        return [
            {i: g for i, p in enumerate(self.pages) if (g := grade(q, p)) > 0} for q, _ in self.queries[language]
        ]


def build_split(seed: int, name: str, n_pages: int, n_queries: int) -> Split:
    """`n_pages` pages and, per language, `n_queries` queries each drawn from a different page."""
    rng = _stream(seed, name)
    pages = [random_page(rng) for _ in range(n_pages)]
    queries = {}
    for language in LANGUAGES:
        lrng = _stream(seed, f"{name}/queries/{language}")
        sources = lrng.sample(range(n_pages), n_queries)
        queries[language] = [(make_query(lrng, pages[i], language), i) for i in sources]
    return Split(pages, queries)


def training_batch(seed: int, step: int, size: int) -> tuple[list[Page], list[Query]]:
    """Batch `step` of the training stream: `size` fresh pages, one query per page in a random language."""
    rng = _stream(seed, f"train/{step}")
    pages = [random_page(rng) for _ in range(size)]
    queries = [make_query(rng, p, rng.choice(LANGUAGES)) for p in pages]
    return pages, queries


def digest(pages: Iterable[Page], queries: Iterable[Query]) -> str:
    """sha256 of pixels, concepts and query texts (what a model is trained or evaluated on)."""
    h = hashlib.sha256()
    for p in pages:
        h.update(f"{p.concepts}{p.image.mode}{p.image.size}".encode())
        h.update(p.image.tobytes())
    for q in queries:
        h.update(f"{q.language}\x1f{q.text}\x1f{q.concepts}\n".encode())
    return h.hexdigest()


def calibration_texts(seed: int, n: int, words: int) -> list[str]:
    """Generic text for calibration, as the study's pile-10k is generic English rather than ViDoRe queries:
    `words` words drawn from the fixture's vocabulary (both languages), in no particular order."""
    rng = _stream(seed, "calibration")
    vocab = sorted({w for text in tokenizer_corpus() for w in text.split()})
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]


def tokenizer_corpus() -> list[str]:
    """Every template with every concept name, as the fixture's text uses them (to train its BPE tokenizer)."""
    return [
        t.format(a=CONCEPTS[k][i], b=CONCEPTS[(k + 1) % len(CONCEPTS)][i])
        for i, lang in enumerate(LANGUAGES)
        for t in TEMPLATES[lang]
        for k in range(len(CONCEPTS))
    ]
