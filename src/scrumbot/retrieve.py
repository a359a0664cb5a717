"""Question -> scored passages, and the grounding gate that decides whether the course covers it.

Retrieval is dense (all-MiniLM-L6-v2 cosine similarity in Chroma). The gate is the best
passage's score: below `min_score` the question is refused before any model runs (calibrated
on the eval sets, see README)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Callable

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from .config import Settings
from .store import Store


@dataclass(frozen=True)
class Source:
    """A passage an answer came from."""

    source: str  # file path relative to the folder it was indexed from
    text: str
    score: float  # cosine similarity to the (rewritten) question, 0..1
    heading: str = ""
    page: int | None = None
    chunk: int = 0

    @classmethod
    def from_document(cls, doc: Document, score: float) -> "Source":
        m = doc.metadata
        return cls(source=m.get("source", "?"), text=doc.page_content, score=round(score, 4),
                   heading=m.get("heading", ""), page=m.get("page"), chunk=m.get("chunk", 0))

    @property
    def label(self) -> str:
        where = f", p. {self.page}" if self.page else ""
        heading = f" — {self.heading}" if self.heading else ""
        return f"{self.source}{where}{heading}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Retrieval:
    query: str  # what was searched (the question, or the question resolved against history)
    passages: list[Source]
    vector: list[float]  # the query's embedding

    @property
    def top_score(self) -> float:
        return self.passages[0].score if self.passages else 0.0


# Words that make a question lean on the previous turn ("Who is it for?").
_ANAPHORA = re.compile(
    r"\b(it|its|it's|that|this|they|them|their|those|these|he|she|his|her|one|ones|"
    r"same|former|latter|above|there|then)\b",
    re.I,
)


def search_query(question: str, history: list[tuple[str, str]]) -> str:
    """The text to search for: a follow-up that leans on the last turn borrows its question.

    This is also how a follow-up is recognised (no model call for a question that stands
    alone); Retriever then has the model rewrite it when there is one (README)."""
    if history and (_ANAPHORA.search(question) or len(question.split()) <= 3):
        return f"{history[-1][0]} {question}"
    return question


class Retriever:
    def __init__(self, settings: Settings, store: Store, embeddings: Embeddings,
                 rewrite: Callable[[str, list[tuple[str, str]]], str | None] | None = None):
        self.settings, self.store, self.embeddings = settings, store, embeddings
        self.rewrite = rewrite  # the model's rewrite of a follow-up (chain.standalone_question)

    def retrieve(self, question: str, history: list[tuple[str, str]] | None = None) -> Retrieval:
        """Passages for the question; a follow-up is first made to stand alone.

        A follow-up (an anaphor or a very short question, see search_query) is rewritten by
        the model when there is one: one short extra call, and only for follow-ups. Without a
        model, or when its rewrite is unusable, the previous question is searched with it.
        Measured against the alternatives on the dialogue sets: README "Answer quality"."""
        query = search_query(question, history or [])
        self.store.vectorstore()  # no index: say so before the embedder loads
        if query != question and self.rewrite:
            query = self.rewrite(question, history) or query
        return self._search(query)

    def _search(self, query: str) -> Retrieval:
        vector = self.embeddings.embed_query(query)
        hits = self.store.search(vector, k=self.settings.k)
        passages = sorted((Source.from_document(d, s) for d, s in hits), key=lambda p: -p.score)
        return Retrieval(query, passages, vector)

    def covered(self, retrieval: Retrieval) -> bool:
        return retrieval.top_score >= self.settings.min_score

    def focus(self, retrieval: Retrieval, passages: list[Source]) -> list[Source]:
        """The passages cut down to what the model needs to read (see `focus`)."""
        return focus(retrieval.query, retrieval.vector, passages, self.embeddings,
                     self.settings.max_context_chars)


# -- sentence-level selection --------------------------------------------------------------------

# Sentence ends: ., !, ? (or a line break) followed by space; keeps "e.g." and "2.5" together.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(\[]?[A-Z0-9])|\n+")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s and s.strip()]


WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d[\d.,%]*")

STOP = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't doing
don't down during each either else even ever every few for from further had hadn't has hasn't have
haven't having he her here hers herself him himself his how however i if in into is isn't it it's
its itself just least less let like made make makes many may me might more most much must my
myself neither no nor not now of off often on once one only or other others our ours ourselves
out over own per rather same shall she should shouldn't since so some such than that that's the
their theirs them themselves then there there's these they they're this those though through thus
to too under until up upon us use used uses using very via was wasn't we well were weren't what
what's when where whether which while who whom whose why will with within without won't would
wouldn't yes yet you your yours yourself yourselves also etc e.g i.e. able get gets getting got
answer answers question questions course courses passage passages material text
""".split())


def stem(word: str) -> str:
    """A crude stem: enough to match "helps"/"help", "facilitates"/"facilitation"."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    return w[:6]


def terms(text: str) -> list[str]:
    """Stemmed content words, for lexical (BM25) scoring."""
    return [stem(w) for w in WORD.findall(text) if w.lower() not in STOP]


_sentence_vectors: dict[str, list[float]] = {}  # sentence -> embedding, shared by all questions


def focus(query: str, vector: list[float], passages: list[Source], embeddings: Embeddings,
          budget: int, lexical_weight: float = 0.3) -> list[Source]:
    """Each passage reduced to its sentences closest to the query, all within `budget` characters.

    Prefill is what a 2-core CPU pays for (~90 prompt tokens/s for the 1.5B model), so the
    model reads the best sentences of the retrieved chunks instead of whole chunks
    (README "Performance"). Chunks stay whole for retrieval and for the user, and keep their
    numbers: a passage with no sentence chosen comes back with empty text.

    A sentence's score is its embedding's cosine similarity to the query plus `lexical_weight`
    times its BM25 score (scaled to 0..1 over the candidates): MiniLM alone ranked generic
    sentences ("choose the certification that aligns with your interests") above the one that
    names the role asked about ("... sought by ... business analysts"). Headings and fragments
    under four words are not candidates; a chosen sentence that starts with a pronoun brings
    the sentence before it when the budget allows. Sentences keep their order in a passage."""
    from rank_bm25 import BM25Okapi

    if sum(len(p.text) for p in passages) <= budget:
        return passages
    units = [(i, s.strip(" \t•*-–")) for i, p in enumerate(passages) for s in sentences(p.text)]
    units = [(i, s) for i, s in units if len(s.split()) >= 4]
    if not units:
        return passages
    new = list(dict.fromkeys(s for _, s in units if s not in _sentence_vectors))
    if new:
        if len(_sentence_vectors) > 20_000:  # a bound, not an LRU: re-embedding is cheap
            _sentence_vectors.clear()
        _sentence_vectors.update(zip(new, embeddings.embed_documents(new)))
    lexical = BM25Okapi([terms(s) or ["-"] for _, s in units]).get_scores(terms(query) or ["-"])
    top = max(lexical) if max(lexical) > 0 else 1.0  # units is not empty here
    score = [dot(vector, _sentence_vectors[s]) + lexical_weight * lexical[n] / top
             for n, (_, s) in enumerate(units)]
    chosen, used = set(), 0

    def take(n: int) -> None:
        nonlocal used
        if n not in chosen and used + len(units[n][1]) + 1 <= budget:
            chosen.add(n)
            used += len(units[n][1]) + 1

    for n in sorted(range(len(units)), key=lambda n: -score[n]):
        take(n)
        if n in chosen and _LEANS_BACK.match(units[n][1]) and n > 0 and units[n - 1][0] == units[n][0]:
            take(n - 1)
    kept = [[s for n, (j, s) in enumerate(units) if j == i and n in chosen] for i in range(len(passages))]
    return [replace(p, text=" ".join(k)) for p, k in zip(passages, kept)]


_LEANS_BACK = re.compile(r"(they|it|this|these|those|their|its|he|she|such)\b", re.I)


def dot(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two normalized embeddings."""
    return sum(x * y for x, y in zip(a, b))
