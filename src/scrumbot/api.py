"""The public API: Assistant builds the pipeline from Settings; answer() is the one-liner.

    from scrumbot import answer
    a = answer("Which cert suits a business analyst?")
    a.text, a.refused, a.sources

Everything heavy (embedder, Chroma, the LLM) is created on first use and kept."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel

from .chain import (NOT_COVERED, SYSTEM, YES_NO, build_chain, chain_inputs, extractive_answer, is_refusal,
                    judge_messages, standalone_question)
from .config import Settings, apply_offline_env
from .errors import BadQuestionError, ConfigError, ScrumbotError
from .models import EMBEDDER_NAME, embedder_path
from .guard import Grounding, clean_passages
from .retrieve import Retriever, Source
from .store import IndexReport, Store

apply_offline_env()
log = logging.getLogger("scrumbot.api")

History = list[tuple[str, str]]


@dataclass(frozen=True)
class Answer:
    text: str
    refused: bool
    sources: list[Source] = field(default_factory=list)
    question: str = ""
    done: bool = True
    timings: dict = field(default_factory=dict)
    # why it was refused, in words a trainer can act on ("no passage close enough (best 0.18)");
    # "" for an answer
    reason: str = ""
    # the evidence behind the decision: "retrieval" (best passage's cosine similarity) and
    # "answerable" (the model's probability that the passages answer the question), when known
    scores: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "answer": self.text,
            "refused": self.refused,
            "sources": [s.as_dict() for s in self.sources],
            "timings": self.timings,
            "reason": self.reason,
            "scores": self.scores,
        }


def _huggingface_embeddings() -> Embeddings:
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=embedder_path(),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True, "batch_size": 32},
    )


class _OnFirstUse(Embeddings):
    """Stands in for the embedder until something is embedded: `scrumbot status` and the
    'no index yet' error should not wait seconds for torch and the model to load."""

    def __init__(self, load: Callable[[], Embeddings]):
        self._load = load

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._load().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._load().embed_query(text)


class Assistant:
    """One course assistant: an index, an embedder and a chat model, built from Settings.

    Tests pass a fake `embeddings` (with `embedder_name`) and a fake `llm` through the
    real LangChain interfaces; everything else is real."""

    def __init__(self, settings: Settings | None = None, *, embeddings: Embeddings | None = None,
                 embedder_name: str | None = None, llm: BaseChatModel | None = None):
        try:
            self.settings = settings or Settings.from_env()
        except ValueError as err:
            raise ConfigError(str(err), "Fix or unset that environment variable.") from None
        self._embeddings = embeddings
        self.embedder_name = embedder_name or (EMBEDDER_NAME if embeddings is None else type(embeddings).__name__)
        self._llm = llm
        self._chain = None
        self._store: Store | None = None
        self._retriever: Retriever | None = None
        self._init_lock = threading.Lock()
        # llama.cpp is not safe to call from several threads: one generation at a time.
        self._generate_lock = threading.Lock()

    # -- lazily built parts -----------------------------------------------------------------

    @property
    def embeddings(self) -> Embeddings:
        with self._init_lock:
            if self._embeddings is None:
                self._embeddings = _huggingface_embeddings()
            return self._embeddings

    @property
    def store(self) -> Store:
        with self._init_lock:  # one store (one Chroma client) even when the first questions race
            if self._store is None:
                self._store = Store(self.settings, _OnFirstUse(lambda: self.embeddings), self.embedder_name)
            return self._store

    @property
    def retriever(self) -> Retriever:
        store = self.store  # (takes the lock itself)
        with self._init_lock:  # one: it keeps the sentence vectors and the course's acronyms
            if self._retriever is None:
                self._retriever = Retriever(self.settings, store, store.embeddings, rewrite=self._standalone)
            return self._retriever

    @property
    def llm(self) -> BaseChatModel | None:
        if self._llm is None and self.settings.llm != "extractive":
            from .llm import chat_model

            self._llm = chat_model(self.settings)
        return self._llm

    @property
    def chain(self):
        if self._chain is None and self.llm is not None:
            self._chain = build_chain(self.llm)
        return self._chain

    # -- indexing ---------------------------------------------------------------------------

    def index(self, paths: Iterable[Path | str] | None = None, *, rebuild: bool = False,
              progress: Callable[[int, int], None] | None = None) -> IndexReport:
        paths = [Path(p) for p in (paths or [self.settings.corpus_dir])]
        if rebuild:
            self.store.rebuild()
        return self.store.index(paths, progress=progress)

    def ensure_index(self) -> IndexReport | None:
        """Index the default corpus if the index is empty (what `make run` does first)."""
        if self.store.count() == 0:
            return self.index([self.settings.corpus_dir])
        return None

    def status(self) -> dict:
        from .llm import describe, llama_build

        info = {"index": self.store.status(), "embedder": self.embedder_name,
                "llm": describe(self.settings), "settings": self.settings.redacted()}
        if self.settings.llm == "llamacpp":
            info["llama_build"] = llama_build()
        return info

    def warm(self) -> None:
        """Load the embedder, the index and the model now, so the first user doesn't wait."""
        self.embeddings.embed_query("warm up")
        self.store.vectorstore()
        if self.llm is not None:
            list(self.stream("What is this course about?"))

    # -- answering --------------------------------------------------------------------------

    def answer(self, question: str, history: History | None = None) -> Answer:
        final = None
        for final in self.stream(question, history):
            pass
        return final

    def stream(self, question: str, history: History | None = None) -> Iterator[Answer]:
        """Yields growing Answer snapshots (done=False) and finally the complete Answer.

        retrieve -> read (what the model sees) -> judge (do the passages answer it?) ->
        generate -> verify (every sentence grounded); the stage that refuses says why."""
        t0 = time.perf_counter()
        question = clean_question(question, self.settings.max_question_chars)
        history = clean_history(history, self.settings)
        timings: dict = {}
        scores: dict = {}

        def refused(reason: str) -> Answer:
            timings["total_s"] = round(time.perf_counter() - t0, 4)
            return Answer(NOT_COVERED, True, [], question, True, timings, reason=reason, scores=scores)

        # retrieve
        retrieval = self.retriever.retrieve(question, history)
        timings["retrieval_s"] = round(time.perf_counter() - t0, 4)
        scores["retrieval"] = round(retrieval.top_score, 4)
        if not self.retriever.covered(retrieval):
            yield refused(f"no passage close enough to the question (best {retrieval.top_score:.2f}, "
                          f"needs {self.settings.min_score:.2f})")
            return
        passages = [p for p in retrieval.passages if p.score >= self.settings.min_score]
        # read: without sentences addressed to the model (guard.py), only the sentences closest
        # to the question (prefill is the cost); a follow-up as it was searched, rewritten to
        # stand alone, and without the history once it stands alone
        readable = clean_passages(passages)
        focused = self.retriever.focus(retrieval, readable) if readable else []
        if not focused:
            yield refused("the passages found hold nothing the model may read")
            return
        context = [] if retrieval.standalone else history
        inputs = chain_inputs(retrieval.query, focused, context, self.settings.max_context_chars)
        # judge
        p = self._answerable(inputs)
        if p is not None:
            scores["answerable"] = round(p, 4)
            timings["judge_s"] = round(time.perf_counter() - t0, 4)
            if p < self.settings.min_answerable:
                yield refused(f"the passages do not answer it (p = {p:.2f}, needs {self.settings.min_answerable:.2f})")
                return
        # generate, showing only what is grounded so far
        grounding = Grounding(readable, retrieval.query, SYSTEM)
        partial = Answer("", False, passages, question, False, timings, scores=scores)
        yield partial
        text = shown = ""
        for piece in self._generate(retrieval.query, focused, context, inputs):
            if not text:
                timings["first_token_s"] = round(time.perf_counter() - t0, 4)
            text += piece
            visible = grounding.visible(text)
            if visible != shown and visible.startswith(shown):  # never take back what was shown
                shown = visible
                yield replace(partial, text=shown)
        text = text.strip()
        # verify
        if not text or is_refusal(text):
            yield refused("the model found no answer in the passages")
            return
        grounded, dropped = grounding.check(text)
        for sentence, why in dropped:
            log.info("left out of the answer to %r (%s): %r", question[:80], why, sentence)
        if not grounded or is_refusal(grounded):
            why = dropped[0][1] if dropped else "the answer said the passages do not cover it"
            # the words themselves stay in the log: shown, they would show what was withheld
            yield refused("the answer was withheld: " + re.sub(r"'[^']*'|\"[^\"]*\"", "a word of it", why))
            return
        timings["total_s"] = round(time.perf_counter() - t0, 4)
        if grounded != shown and grounded.startswith(shown):
            yield replace(partial, text=grounded)
        yield Answer(grounded, False, passages, question, True, timings, scores=scores)

    def _answerable(self, inputs: dict) -> float | None:
        """The model's probability that the passages answer the question (None: no model, or a
        backend without log-probabilities, or the check is off)."""
        if self.settings.llm == "extractive" or self.settings.min_answerable <= 0 and not self.settings.judge_always:
            return None
        from .llm import first_token_probabilities

        with self._model_turn():
            try:
                probs = first_token_probabilities(self.llm, judge_messages(inputs), YES_NO)
            except ScrumbotError:
                raise
            except Exception as err:
                if self.settings.llm == "openai":
                    from .llm import explain_openai_error

                    raise explain_openai_error(err, self.settings) from err
                raise
        return None if probs is None else probs["yes"]

    def _standalone(self, question: str, history: History) -> str | None:
        """A follow-up rewritten by the model to stand alone (None: search it with the previous
        question instead, as the extractive mode always does)."""
        if self.settings.llm == "extractive":
            return None
        with self._model_turn():
            try:
                return standalone_question(self.llm, question, history)
            except ScrumbotError:
                raise
            except Exception as err:  # the answer's own call will report a broken model
                log.warning("could not rewrite the follow-up %r: %s", question[:80], err)
                return None

    def _model_turn(self):
        """Held around every model call: an in-process model takes them one at a time; an
        OpenAI-compatible server queues or batches requests itself."""
        return self._generate_lock if self.settings.llm != "openai" else contextlib.nullcontext()

    def _generate(self, question: str, passages: list[Source], history: History, inputs: dict) -> Iterator[str]:
        if self.settings.llm == "extractive":
            yield from extractive_answer(question, passages, self.embeddings)
            return
        with self._model_turn():
            try:
                yield from self.chain.stream(inputs)
            except ScrumbotError:
                raise
            except Exception as err:
                if self.settings.llm == "openai":
                    from .llm import explain_openai_error

                    raise explain_openai_error(err, self.settings) from err
                raise


def clean_question(question: str, max_chars: int) -> str:
    if not isinstance(question, str):
        raise BadQuestionError("The question must be text.")
    # invalid surrogates (from broken decoding) and control characters carry no meaning here
    question = clean_text(question)
    if not question:
        raise BadQuestionError("The question is empty.", "Type a question about the course.")
    if len(question) > max_chars:
        raise BadQuestionError(
            f"The question is {len(question):,} characters long; the limit is {max_chars:,}.",
            "Ask a shorter question (a sentence or two works best).",
        )
    return question


def clean_history(history: History | None, settings: Settings) -> History:
    if not history:
        return []
    # only well-formed (question, answer) pairs; a client may send anything
    pairs = [t for t in history if isinstance(t, (tuple, list)) and len(t) == 2
             and all(isinstance(x, str) for x in t)]
    turns = []
    for q, a in pairs[-settings.max_history_turns:]:
        q, a = (clean_text(x)[:500] for x in (q, a))
        turns.append((q, a))
    return turns


def clean_text(text: str) -> str:
    """Text as the pipeline can use it: no broken surrogates, no control characters, spaces squeezed."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")
    return " ".join(text.split())


_default: Assistant | None = None
_default_lock = threading.Lock()


def default_assistant() -> Assistant:
    global _default
    with _default_lock:
        if _default is None:
            _default = Assistant()
        return _default


def answer(question: str, history: History | None = None) -> Answer:
    """Answer one question from the default index with the default settings (SCRUMBOT_*)."""
    return default_assistant().answer(question, history)


def stream(question: str, history: History | None = None) -> Iterator[Answer]:
    """Like answer(), yielding growing snapshots while the model writes."""
    return default_assistant().stream(question, history)


