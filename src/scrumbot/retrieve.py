"""Question -> scored passages, and the grounding gate that decides whether the course covers it.

Retrieval is dense (all-MiniLM-L6-v2 cosine similarity in Chroma). The gate is the best
passage's score: below `min_score` the question is refused before any model runs (calibrated
on the eval sets, see README)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from .config import Settings
from .ingest import LIST_ITEM, SHORT_ITEM
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
    section: str = ""  # the heading path, "Git User Manual › Branching › Creating branches"
    anchor: str = ""  # the HTML id of the nearest heading that has one ("" if none)
    root: str = ""  # the folder the file was indexed from
    start: int = 0  # where the text starts in the file's extracted text

    @classmethod
    def from_document(cls, doc: Document, score: float) -> "Source":
        m = doc.metadata
        return cls(source=m.get("source", "?"), text=doc.page_content, score=round(score, 4),
                   heading=m.get("heading", ""), page=m.get("page"), chunk=m.get("chunk", 0),
                   section=m.get("section", ""), anchor=m.get("anchor", ""), root=m.get("root", ""),
                   start=m.get("start", 0))

    @property
    def place(self) -> str:
        """Where in the course: "user-manual.html › Branching › Creating branches", "a.pdf, p. 4"."""
        path = self.section or self.heading
        return f"{self.source}{f' › {path}' if path else ''}{f', p. {self.page}' if self.page else ''}"

    @property
    def label(self) -> str:
        return self.place

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Retrieval:
    query: str  # what was searched (the question, or the question resolved against history)
    passages: list[Source]
    vector: list[float]  # the query's embedding
    # the query needs no history to be understood: the question stood alone, or the model
    # rewrote it so (not when it was only joined to the previous question)
    standalone: bool = True
    asked: str = ""  # the question as the user asked it

    @property
    def question(self) -> str:
        """The question the model is to answer: the query when it stands alone; a follow-up
        the model could not rewrite as it was asked (the history comes with it), not the two
        questions joined for the search, which the model answered as the first of them."""
        return self.query if self.standalone or not self.asked else self.asked

    @property
    def top_score(self) -> float:
        return max((p.score for p in self.passages), default=0.0)


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
        # (index version, what is derived from all its chunks): acronyms' names, the BM25 lexicon
        self._course: tuple[tuple, Acronyms, Lexicon] | None = None
        # sentence -> embedding, kept across questions; per retriever, as it is per embedder (one
        # shared by all once mixed a test's fake vectors into the real embedder's ranking)
        self._sentence_vectors: dict[str, list[float]] = {}

    def retrieve(self, question: str, history: list[tuple[str, str]] | None = None) -> Retrieval:
        """Passages for the question; a follow-up is first made to stand alone.

        A follow-up (an anaphor or a very short question, see search_query) is rewritten by
        the model when there is one: one short extra call, and only for follow-ups. Without a
        model, or when its rewrite is unusable (chain.standalone_question), the previous question
        is searched with it, and the model then reads the follow-up as asked, after the
        conversation (Retrieval.question).
        Measured against the alternatives on the dialogue sets: README "Answer quality"."""
        query = search_query(question, history or [])
        self.store.vectorstore()  # no index: say so before the embedder loads
        rewritten = self.rewrite(question, history) if query != question and self.rewrite else None
        return replace(self._search(self.spell_out(rewritten or query)),
                       standalone=query == question or rewritten is not None, asked=question)

    def spell_out(self, query: str) -> str:
        """An acronym the course never writes, followed by the course's name with those initials:
        "What does a PO do?" -> "What does a PO (Product Owner) do?". MiniLM does not know
        "PO", and the question was refused at the gate."""
        if not _ACRONYM.search(query):
            return query
        return self._derived()[0].spell_out(query)

    def _derived(self) -> tuple[Acronyms, Lexicon]:
        """What is computed from all the index's chunks, once per index version."""
        version = (self.store.count(), self.store.last_write())
        if self._course is None or self._course[0] != version:
            chunks = self.store.all_chunks()
            self._course = (version, Acronyms(d.page_content for d in chunks), Lexicon(chunks))
        return self._course[1], self._course[2]

    def _search(self, query: str) -> Retrieval:
        vector = self.embeddings.embed_query(query)
        k = self.settings.k
        if not self.settings.hybrid:
            hits = self.store.search(vector, k=k)
            passages = sorted((Source.from_document(d, s) for d, s in hits), key=lambda p: -p.score)
            return Retrieval(query, passages, vector)
        # dense and BM25 rankings of the chunks, fused by reciprocal rank (as LangChain's
        # EnsembleRetriever does): a chunk naming a command or identifier that MiniLM does not
        # know still ranks; every passage keeps its cosine score, which the gate reads
        pool = max(10, 3 * k)
        dense = self.store.search(vector, k=pool)
        lexical = self._derived()[1].top(query, pool)
        fused: dict[str, float] = {}
        found: dict[str, tuple[Document, float | None]] = {}
        for ranking in ([(d, s) for d, s in dense], [(d, None) for d, _ in lexical]):
            for rank, (doc, cosine) in enumerate(ranking):
                key = _chunk_key(doc)
                fused[key] = fused.get(key, 0.0) + 1.0 / (60 + rank + 1)
                if key not in found or found[key][1] is None:
                    found[key] = (doc, cosine)
        best = sorted(fused, key=lambda key: -fused[key])[:k]
        unscored = [found[key][0].page_content for key in best if found[key][1] is None]
        vectors = dict(zip(unscored, self.embeddings.embed_documents(unscored))) if unscored else {}
        passages = [Source.from_document(doc, cosine if cosine is not None else dot(vector, vectors[doc.page_content]))
                    for doc, cosine in (found[key] for key in best)]
        return Retrieval(query, passages, vector)

    def covered(self, retrieval: Retrieval) -> bool:
        return retrieval.top_score >= self.settings.min_score

    def focus(self, retrieval: Retrieval, passages: list[Source]) -> list[Source]:
        """The passages cut down to what the model needs to read (see `focus`)."""
        return focus(retrieval.query, retrieval.vector, passages, self.embeddings,
                     self.settings.max_context_chars, cache=self._sentence_vectors)


def _chunk_key(doc: Document) -> str:
    m = doc.metadata
    return f"{m.get('source_id', m.get('source'))}#{m.get('chunk')}#{m.get('start')}"


class Lexicon:
    """BM25 over every chunk of the course (the same stemmed terms the sentence ranking uses)."""

    def __init__(self, chunks: list[Document]):
        from rank_bm25 import BM25Okapi

        self.chunks = chunks
        self.bm25 = BM25Okapi([terms(d.page_content) or ["-"] for d in chunks]) if chunks else None

    def top(self, query: str, n: int) -> list[tuple[Document, float]]:
        words = terms(query)
        if self.bm25 is None or not words:
            return []
        scores = self.bm25.get_scores(words)
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:n]
        return [(self.chunks[i], float(scores[i])) for i in ranked if scores[i] > 0]


# -- acronyms -------------------------------------------------------------------------------------

_ACRONYM = re.compile(r"\b[A-Z]{2,5}\b")
_CAPITALISED_RUN = re.compile(r"\b[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)+")


class Acronyms:
    """The capitalised names of a course ("Product Owner", "Release Train Engineer") by their
    initials, for acronyms the course itself never writes."""

    def __init__(self, texts: Iterable[str]):
        self.written: set[str] = set()
        names: Counter[tuple[str, ...]] = Counter()
        for text in texts:
            self.written.update(WORD.findall(text))
            for run in _CAPITALISED_RUN.finditer(text):
                words = run.group().split()
                for n in range(2, min(5, len(words)) + 1):
                    names.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        # initials -> the commonest name with them, seen at least twice (not a chance capital);
        # built once per index version, so a question looks its acronyms up
        best: dict[str, tuple[int, tuple[str, ...]]] = {}
        for name, count in names.items():
            initials = "".join(w[0] for w in name)
            if count >= 2 and (count, name) > best.get(initials, (0, ())):
                best[initials] = (count, name)
        self.names = {initials: " ".join(name) for initials, (_, name) in best.items()}

    def spell_out(self, query: str) -> str:
        def one(m: re.Match) -> str:
            acronym = m.group()
            if acronym in self.written or acronym not in self.names:
                return acronym  # the course uses it (its passages say what it means), or no name
            return f"{acronym} ({self.names[acronym]})"

        return _ACRONYM.sub(one, query)


# -- sentence-level selection --------------------------------------------------------------------

# Sentence ends: ., !, ? (or a line break) followed by space; keeps "e.g." and "2.5" together.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“(\[]?[A-Z0-9])|\n+")


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s and s.strip()]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each of `sentences(text)` in `text`, without surrounding blanks."""
    spans, at = [], 0
    for cut in [*_SENTENCE_END.finditer(text), None]:
        a, b = at, cut.start() if cut else len(text)
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            spans.append((a, b))
        at = cut.end() if cut else len(text)
    return spans


WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d(?:[\d.,]*\d)?%?")  # "2,000." is the number 2,000

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
    if w[:1].isdigit():  # "1,000" is 1000, "50%" is the 50 of "50 percent"
        return re.sub(r"(?<=\d),(?=\d{3}\b)", "", w).rstrip("%")
    if w.endswith("'s"):
        w = w[:-2]
    elif len(word) > 2 and word.endswith("s") and word[:-1].isupper():  # "PIs", "POs"
        return w[:-1]
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    return w[:6]


def terms(text: str) -> list[str]:
    """Stemmed content words, for lexical (BM25) scoring."""
    return [stem(w) for w in WORD.findall(text) if w.lower() not in STOP]


def focus(query: str, vector: list[float], passages: list[Source], embeddings: Embeddings,
          budget: int, lexical_weight: float = 0.3, cache: dict[str, list[float]] | None = None) -> list[Source]:
    """Each passage reduced to its sentences closest to the query, all within `budget` characters.

    Prefill is what a 2-core CPU pays for (~90 prompt tokens/s for the 1.5B model), so the
    model reads the best sentences of the retrieved chunks instead of whole chunks
    (README "Performance"). Chunks stay whole for retrieval and for the user, and keep their
    numbers: a passage with no sentence chosen comes back with empty text.

    A sentence's score is its embedding's cosine similarity to the query plus `lexical_weight`
    times its BM25 score (scaled to 0..1 over the candidates): MiniLM alone ranked generic
    sentences ("choose the certification that aligns with your interests") above the one that
    names the role asked about ("... sought by ... business analysts"). See `units` for what
    the candidates are; a chosen sentence that starts with a pronoun brings the sentence before
    it when the budget allows. Sentences keep their order in a passage."""
    from rank_bm25 import BM25Okapi

    if sum(len(p.text) for p in passages) <= budget:
        # whole, but a passage of headings alone says nothing the model could answer from
        return [replace(p, text="") if all(line.lstrip().startswith("#") for line in p.text.splitlines()
                                           if line.strip()) else p for p in passages]
    found = [(i, text, context) for i, p in enumerate(passages) for text, context in units(p.text)]
    if not found:
        return passages
    # what is scored: a sentence that starts with a pronoun together with the one it refers to
    scored_as = [f"{context} {text}" if context else text for _, text, context in found]
    cache = {} if cache is None else cache  # text -> its vector by `embeddings` (only those)
    vectors = {t: v for t in scored_as if (v := cache.get(t)) is not None}  # .get: other threads
    new = list(dict.fromkeys(t for t in scored_as if t not in vectors))
    if new:
        fresh = dict(zip(new, embeddings.embed_documents(new)))
        vectors.update(fresh)
        if len(cache) > 20_000:  # a bound, not an LRU: re-embedding is cheap
            cache.clear()
        cache.update(fresh)
    lexical = BM25Okapi([terms(t) or ["-"] for t in scored_as]).get_scores(terms(query) or ["-"])
    top = max(lexical) if max(lexical) > 0 else 1.0
    score = [dot(vector, vectors[t]) + lexical_weight * lexical[n] / top
             for n, t in enumerate(scored_as)]
    chosen, used = set(), 0

    def take(n: int) -> None:
        nonlocal used
        if n not in chosen and used + len(found[n][1]) + 1 <= budget:
            chosen.add(n)
            used += len(found[n][1]) + 1

    for n in sorted(range(len(found)), key=lambda n: -score[n]):
        take(n)
        if n in chosen and found[n][2] and n > 0 and found[n - 1][0] == found[n][0]:
            take(n - 1)
    kept = [[t for n, (j, t, _) in enumerate(found) if j == i and n in chosen] for i in range(len(passages))]
    return [replace(p, text=" ".join(k)) for p, k in zip(passages, kept)]


_LIST_ITEM = re.compile(LIST_ITEM)  # lines come stripped: the pattern's leading blanks match nothing


def units(text: str) -> list[tuple[str, str]]:
    """The candidates `focus` chooses from, in order, as (text, context): context is the sentence
    before one that starts with a pronoun ("Its purpose is ...") or before a list, else "";
    it is scored with the candidate and comes with it.

    Sentences of four words or more; a markdown heading is not one. A list of short items
    ("A story should be: - Independent: ... - Testable: ...") is one candidate with the
    sentence that introduces it: cut into items, no single one answers "what makes a good
    story?", and the model made up the rest."""
    found: list[tuple[str, str]] = []
    section = 0  # where the current section's candidates start: context does not cross a heading

    def before() -> str:
        return found[-1][0] if len(found) > section else ""

    for paragraph in re.split(r"\n[ \t]*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines() if line.strip()]
        if lines and lines[0].startswith("#"):
            lines, section = lines[1:], len(found)  # a heading, maybe with its paragraph below it
        items = [line for line in lines if _LIST_ITEM.match(line)]
        if len(items) >= 2 and all(len(line) <= SHORT_ITEM for line in items):
            lead = sentences(" ".join(line for line in lines if not _LIST_ITEM.match(line)))
            intro = [x for x in lead[:-1] if len(x.split()) >= 4]
            for x in intro:
                found.append((x, before() if _LEANS_BACK.match(x) else ""))
            if not lead and found and found[-1][0].endswith(":"):  # introduced by the paragraph before
                lead = [found.pop()[0]]
            # scored with the sentence before its intro ("INVEST lists the qualities of a good story.")
            found.append(("\n".join(lead[-1:] + items), before()))
            continue
        for sentence in sentences("\n".join(lines)):
            sentence = sentence.strip(" \t•*-–")
            if len(sentence.split()) >= 4 and not sentence.startswith("#"):
                found.append((sentence, before() if _LEANS_BACK.match(sentence) else ""))
    return found


_LEANS_BACK = re.compile(r"(they|it|this|these|those|their|its|he|she|such)\b", re.I)


def dot(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two normalized embeddings."""
    return sum(x * y for x, y in zip(a, b))
