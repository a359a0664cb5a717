"""Question -> scored passages, and the grounding gate that decides whether the course covers it.

Retrieval is dense (all-MiniLM-L6-v2 cosine similarity in Chroma). The gate is the best
passage's score: below `min_score` the question is refused before any model runs (calibrated
on the eval sets, see README)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

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

    Cheaper than an LLM rewrite and measured as good on the dialogue sets (README)."""
    if history and (_ANAPHORA.search(question) or len(question.split()) <= 3):
        return f"{history[-1][0]} {question}"
    return question


class Retriever:
    def __init__(self, settings: Settings, store: Store, embeddings: Embeddings):
        self.settings, self.store, self.embeddings = settings, store, embeddings

    def retrieve(self, question: str, history: list[tuple[str, str]] | None = None) -> Retrieval:
        query = search_query(question, history or [])
        self.store.vectorstore()  # no index: say so before the embedder loads
        vector = self.embeddings.embed_query(query)
        hits = self.store.search(vector, k=self.settings.k)
        passages = sorted((Source.from_document(d, s) for d, s in hits), key=lambda p: -p.score)
        return Retrieval(query, passages)

    def covered(self, retrieval: Retrieval) -> bool:
        return retrieval.top_score >= self.settings.min_score
