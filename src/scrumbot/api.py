"""The public API: Assistant builds the pipeline from Settings; answer() is the one-liner.

    from scrumbot import answer
    a = answer("Which cert suits a business analyst?")
    a.text, a.refused, a.sources, a.citations

Everything heavy (embedder, Chroma, the LLM) is created on first use and kept."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel

from .chain import (NOT_COVERED, SYSTEM, YES_NO, build_chain, chain_inputs, extractive_answer, is_refusal,
                    judge_messages, standalone_question)
from .config import DEFAULT_COURSE, Settings, apply_offline_env, check_course
from .errors import BadQuestionError, ConfigError, ScrumbotError
from .models import EMBEDDER_NAME, embedder_path
from .guard import Citation, Grounding, cite, clean_passages, renumber
from .insights import (FEEDBACK_REASONS, QuestionLog, Report, Row, build_report, course_of, new_id,  # noqa: F401
                       parse_since, scrub)
from .retrieve import Retrieval, Retriever, Source
from .ingest import SkipFile, upload_name
from .store import IndexReport, Store

apply_offline_env()
log = logging.getLogger("scrumbot.api")
# LangChain logs every exception a callback raises; a stopped answer is not an error
logging.getLogger("langchain_core.callbacks.manager").addFilter(
    lambda record: "GenerationStopped" not in record.getMessage())

History = list[tuple[str, str]]


@dataclass(frozen=True)
class Answer:
    text: str
    refused: bool
    # the passages the answer quotes, numbered (from 1) in order of first use; none for a refusal
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
    # the question log's row of this answer (for Assistant.feedback; "" when logging is off)
    # and the conversation it belongs to (random; pass it back to group follow-ups)
    log_id: str = ""
    conversation_id: str = ""
    # each sentence of `text` and the spans of `sources` that support it (guard.cite)
    citations: list[Citation] = field(default_factory=list)
    # every passage retrieval found, quoted or not (for a refusal: what came closest)
    retrieved: list[Source] = field(default_factory=list)

    def marked(self, marker: Callable[[list[int]], str] = lambda ns: "".join(f"[{n}]" for n in ns)) -> str:
        """The text with each cited sentence's source numbers: "... 50 questions [1]."."""
        text, at = [], 0
        for c in self.citations:
            if not c.quotes:
                continue
            end = c.end - 1 if self.text[c.end - 1] in ".!?:" else c.end  # before its full stop
            text += [self.text[at:end], " " + marker(c.markers)]
            at = end
        return "".join(text) + self.text[at:]

    def as_dict(self) -> dict:
        return {
            "answer": self.text,
            "refused": self.refused,
            "sources": [s.as_dict() for s in self.sources],
            # offsets: into "answer" for a sentence, into sources[source]["text"] for a quote
            "citations": [{**c.as_dict(), "sentence": self.text[c.start:c.end],
                           "quotes": [{**q.as_dict(), "marker": q.source + 1,
                                       "text": self.sources[q.source].text[q.start:q.end]} for q in c.quotes]}
                          for c in self.citations],
            "retrieved": [s.as_dict() for s in self.retrieved],
            "timings": self.timings,
            "reason": self.reason,
            "scores": self.scores,
            "log_id": self.log_id,
            "conversation_id": self.conversation_id,
        }


class Reading(NamedTuple):
    """What the model reads of a retrieval (Assistant._read)."""

    passages: list[Source]  # those close enough to the question: the ones an answer may cite
    readable: list[Source]  # the same without sentences addressed to the model (checked against)
    focused: list[Source]  # cut to the sentences closest to the question (what the model reads)
    history: History  # the conversation the model sees (none once the question stands alone)
    inputs: dict  # the chain's {context, question, history}


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
        self.question_log = QuestionLog(self.settings)
        # llama.cpp is not safe to call from several threads: one generation at a time.
        self._generate_lock = threading.Lock()
        self._courses: dict[str, Assistant] = {}  # the other courses, sharing embedder and model
        self._examples: tuple[tuple, list[str]] | None = None  # (index version, questions)
        self._examples_lock = threading.Lock()

    # -- courses ----------------------------------------------------------------------------

    @property
    def course(self) -> str:
        return self.settings.course

    def for_course(self, course: str | None) -> "Assistant":
        """The assistant of another course of this install: its own index, this one's embedder,
        model and model lock (one generation at a time across all courses)."""
        if not course or course == self.course:
            return self
        course = _course_name(course)
        with self._init_lock:
            other = self._courses.get(course)
        if other is None:
            other = Assistant(self.settings.replace(course=course),
                              embeddings=_OnFirstUse(lambda: self.embeddings),
                              embedder_name=self.embedder_name, llm=self.llm)
            other._generate_lock = self._generate_lock
            other.question_log = self.question_log  # one file, one writer thread for every course
            with self._init_lock:
                other = self._courses.setdefault(course, other)
        return other

    def courses(self) -> list[dict]:
        """Every course of this install: {"course", "collection", "documents", "chunks"}."""
        return self.store.courses()

    def remove_course(self, course: str | None = None) -> dict:
        """Delete a course: its chunks, its records and the files uploaded to it."""
        target = self.for_course(course)
        held = target.store.remove_course()
        target._examples_file().unlink(missing_ok=True)
        files = self.settings.course_files(target.course)
        if files.is_dir():
            import shutil

            shutil.rmtree(files.parent)
        with self._init_lock:
            self._courses.pop(target.course, None)
        return held

    # -- the course's documents -------------------------------------------------------------

    def documents(self) -> list[dict]:
        """The course's files: source, root, chunks, indexed_at (epoch s or None), uploaded."""
        files = self.settings.course_files().resolve().as_posix()
        return [{**d, "uploaded": d["root"] == files} for d in self.store.documents()]

    def add_files(self, files: Iterable[tuple[str, Path | str]],
                  progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Store uploaded files in the course's folder (settings.course_files()) and index them.

        `files` are (name the client gave, where the bytes are now). A file whose name cannot be
        made safe, of a type scrumbot cannot read or bigger than SCRUMBOT_MAX_FILE_MB is refused:
        it is listed in report.skipped with the reason, and nothing of it is stored."""
        import shutil

        folder = self.settings.course_files()
        limit = self.settings.max_file_mb * 1024 * 1024
        refused: list[tuple[str, str]] = []
        notes: list[tuple[str, str]] = []
        saved: list[Path] = []
        for name, location in files:
            shown = (name if isinstance(name, str) else "?").replace("\x00", "\\0")[:200]
            try:
                safe, note = upload_name(name)
                size = Path(location).stat().st_size
                if size > limit:
                    raise SkipFile(f"{size / 2**20:.1f} MB, larger than the {self.settings.max_file_mb} MB "
                                   "limit (SCRUMBOT_MAX_FILE_MB raises it)")
                if size == 0:
                    raise SkipFile("empty file")
            except SkipFile as why:
                refused.append((shown, str(why)))
                continue
            except OSError as err:
                refused.append((shown, f"cannot read the upload: {err.strerror or err}"))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{safe}.part"  # hidden: an index run never reads a half-copied file
            shutil.copyfile(location, tmp)
            os.replace(tmp, folder / safe)
            saved.append(folder / safe)
            if note:
                notes.append((shown, note))
        report = self.store.index(saved, progress=progress) if saved else IndexReport()
        report.skipped = refused + report.skipped
        report.notes = notes
        return report

    def remove_documents(self, source_ids: Iterable[str]) -> IndexReport:
        """Take files out of the course's index; an uploaded file is deleted from its folder too
        (a file of a folder indexed from the CLI stays on disk: the next `scrumbot index` of that
        folder adds it again)."""
        source_ids = list(source_ids)
        report = self.store.remove_files(source_ids)
        uploaded = self.settings.course_files().resolve()
        for sid in source_ids:
            root, _, rel = sid.partition("::")
            if Path(root) == uploaded and "/" not in rel:
                (uploaded / rel).unlink(missing_ok=True)
        return report

    def reindex(self, progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Index again every folder the course holds files from (incremental: what changed)."""
        roots = sorted({d["root"] for d in self.store.documents()} | {self.settings.course_files().resolve().as_posix()})
        return self.store.index([Path(r) for r in roots if Path(r).is_dir()], progress=progress)

    def _examples_file(self) -> Path:
        records = self.store.records_path  # records.sqlite -> examples.json, records-x -> examples-x
        return records.with_name(records.stem.replace("records", "examples", 1) + ".json")

    def example_questions(self, n: int = 3, tries: int = 8) -> list[str]:
        """Questions a student can start from, made from the course's own headings and kept only
        when the pipeline answers them; worked out once per index version."""
        version = [self.store.count(), self.store.last_write()]
        saved = self._examples_file()
        with self._examples_lock:
            if self._examples is None:  # worked out by an earlier run for this index version?
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    kept_before = json.loads(saved.read_text())
                    self._examples = (kept_before["version"], [str(q) for q in kept_before["questions"]])
            if self._examples is not None and self._examples[0] == version:
                return list(self._examples[1])
            kept: list[str] = []
            if version[0]:
                for question in questions_from_headings(self.store.all_chunks())[:tries]:
                    try:
                        if not self._unlogged_answer(question).refused:  # (not a student's: not logged)
                            kept.append(question)
                    except ScrumbotError as err:
                        log.warning("example question %r not kept: %s", question, err)
                    if len(kept) == n:
                        break
            self._examples = (version, kept)
            with contextlib.suppress(OSError):
                saved.write_text(json.dumps({"version": version, "questions": kept}))
            return list(kept)

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
            list(self._stream("What is this course about?"))  # (not a student's question: not logged)

    # -- answering --------------------------------------------------------------------------

    def _unlogged_answer(self, question: str) -> Answer:
        final = None
        for final in self._stream(question):
            pass
        return final

    def answer(self, question: str, history: History | None = None, *,
               conversation_id: str | None = None) -> Answer:
        final = None
        for final in self.stream(question, history, conversation_id=conversation_id):
            pass
        return final

    def stream(self, question: str, history: History | None = None,
               stop: threading.Event | None = None, *, conversation_id: str | None = None) -> Iterator[Answer]:
        """Yields growing Answer snapshots (done=False) and finally the complete Answer.

        Every question that reaches the pipeline is logged for the trainer after its answer
        (answered, refused, failed, or stopped by the reader), off the answering thread;
        each snapshot carries the row's `log_id` and the `conversation_id`."""
        conversation = conversation_id or new_id()
        log_id = new_id() if self.settings.log_questions else ""
        t0 = time.perf_counter()
        final, error = None, None
        answers = self._stream(question, history, stop)
        try:
            for final in answers:
                yield replace(final, log_id=log_id, conversation_id=conversation)
        except BadQuestionError:
            log_id = ""  # nothing was asked: nothing to log
            raise
        except Exception as err:
            error = err
            raise
        finally:
            answers.close()  # a reader who stops early stops the model too (and frees its lock)
            if log_id:
                self._log(log_id, conversation, question, final, error, time.perf_counter() - t0)

    def _log(self, log_id: str, conversation: str, question, final: Answer | None,
             error: BaseException | None, seconds: float) -> None:
        try:
            if error is not None:
                msg = error.message if isinstance(error, ScrumbotError) else f"{type(error).__name__}: {error}"
                outcome, reason = "failed", f"failed: {msg}"
            elif final is None or not final.done:
                outcome, reason = "stopped", "stopped before the answer was complete"
            else:
                outcome, reason = ("refused" if final.refused else "answered"), final.reason
            timings = final.timings if final is not None else {}
            text = final.question if final is not None and final.question else clean_text(str(question))
            self.question_log.record(Row(
                id=log_id, course=course_of(self.settings), conversation=conversation,
                question=scrub(text, self.settings, self.settings.max_question_chars),
                outcome=outcome, refused=outcome != "answered", reason=scrub(reason, self.settings, 500),
                answer=scrub(final.text, self.settings) if final is not None else "",
                sources=[{"source": s.source, "heading": s.heading, "score": s.score}
                         for s in (final.sources if final is not None and not final.refused else [])],
                total_s=timings.get("total_s", round(seconds, 4)), first_token_s=timings.get("first_token_s")))
        except Exception:  # the log must never cost an answer
            log.exception("could not queue the question log row")

    def feedback(self, log_id: str, rating: str | None, reason: str = "") -> None:
        """A student's thumbs up ("up") or down ("down", None to take it back) on a logged
        answer, with an optional one-line reason; stored with the answer's row."""
        if rating not in ("up", "down", None):
            raise BadQuestionError(f"Feedback must be 'up' or 'down', not {rating!r}.")
        if not isinstance(log_id, str) or not log_id:
            return
        reason = scrub(clean_text(reason if isinstance(reason, str) else ""), self.settings, 200)
        self.question_log.feedback(log_id, rating, reason)

    def report(self, *, course: str | None = None, since: str | None = None) -> Report:
        """The trainer report over the question log (insights.build_report): `course` defaults
        to this assistant's; `since` is a span ("7d", "24h") or a date."""
        course = course or course_of(self.settings)
        start = parse_since(since)
        rows = self.question_log.rows(course=course, since=start)
        same = course == course_of(self.settings)
        return build_report(rows, course=course, since=start, embeddings=self.embeddings if rows else None,
                            nearest=self._nearest_passage if same else None)

    def _nearest_passage(self, question: str) -> dict | None:
        """The course passage closest to a question, whatever its score (for the report)."""
        try:
            passages = self.retriever.retrieve(question).passages
        except ScrumbotError:
            return None
        if not passages:
            return None
        p = passages[0]
        return {"source": p.source, "heading": p.heading, "score": p.score, "text": p.text}

    def _stream(self, question: str, history: History | None = None,
                stop: threading.Event | None = None) -> Iterator[Answer]:
        """The answer's snapshots, unlogged (stream() logs them).

        retrieve -> read (what the model sees) -> judge (do the passages answer it?) ->
        generate -> verify (every sentence grounded); the stage that refuses says why.
        Setting `stop` ends the stream after the model's next token, without a final Answer:
        the model's own stream is closed and the model is free for the next question."""
        t0 = time.perf_counter()
        question = clean_question(question, self.settings.max_question_chars)
        history = clean_history(history, self.settings)
        timings: dict = {}
        scores: dict = {}
        retrieved: list[Source] = []

        def refused(reason: str) -> Answer:
            timings["total_s"] = round(time.perf_counter() - t0, 4)
            return Answer(NOT_COVERED, True, [], question, True, timings, reason=reason, scores=scores,
                          retrieved=retrieved)

        # retrieve
        retrieval = self.retriever.retrieve(question, history)
        retrieved = list(retrieval.passages)
        timings["retrieval_s"] = round(time.perf_counter() - t0, 4)
        scores["retrieval"] = round(retrieval.top_score, 4)
        if not self.retriever.covered(retrieval):
            yield refused(f"no passage close enough to the question (best {retrieval.top_score:.2f}, "
                          f"needs {self.settings.min_score:.2f})")
            return
        # read
        reading = self._read(retrieval, history)
        passages, focused, inputs = reading.passages, reading.focused, reading.inputs
        if not any(p.text.strip() for p in focused):
            yield refused("the passages found hold nothing the model may read")
            return
        # judge
        p = self._answerable(inputs)
        if p is not None:
            scores["answerable"] = round(p, 4)
            timings["judge_s"] = round(time.perf_counter() - t0, 4)
            needs = self.settings.answerable_threshold
            if p < needs:
                yield refused(f"the passages do not answer it (p = {p:.2f}, needs {needs:.2f})")
                return
        # generate, showing only what is grounded so far
        grounding = Grounding(reading.readable, retrieval.query, SYSTEM)
        partial = Answer("", False, [], question, False, timings, scores=scores, retrieved=retrieved)
        yield partial
        text = shown = ""
        for piece in self._generate(retrieval.query, focused, reading.history, inputs, stop):
            if not text:
                timings["first_token_s"] = round(time.perf_counter() - t0, 4)
            text += piece
            visible = grounding.visible(text)
            if visible != shown and visible.startswith(shown):  # never take back what was shown
                shown = visible
                yield replace(partial, text=shown)
        if stop is not None and stop.is_set():
            return  # stopped: what was shown is all there is, unchecked, so no final Answer
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
        # cite: each sentence's quotes, from the passages as stored (the spans the page marks);
        # a sentence no passage sentence supports goes, as an ungrounded one does
        cited, citations, unsupported = cite(grounded, passages, retrieval.query, read=[p.text for p in focused])
        for sentence in unsupported:
            log.info("left out of the answer to %r (no passage sentence supports it): %r", question[:80], sentence)
        if not citations or not any(c.quotes for c in citations):
            yield refused("the answer was withheld: no passage sentence supports it")
            return
        sources, citations = renumber(citations, passages)
        timings["total_s"] = round(time.perf_counter() - t0, 4)
        if cited != shown and cited.startswith(shown):
            yield replace(partial, text=cited)
        yield Answer(cited, False, sources, question, True, timings, scores=scores, citations=citations,
                     retrieved=retrieved)

    def _read(self, retrieval: Retrieval, history: History | None = None) -> Reading:
        """What the model reads of what was retrieved: the passages close enough, without
        sentences addressed to the model (guard.py), cut to the sentences closest to the question
        (prefill is the cost); a follow-up as it was searched (rewritten to stand alone), and
        without the history once it stands alone. The answer (`_stream`), and the benchmarks
        that judge or cite outside it, read the same way."""
        passages = [p for p in retrieval.passages if p.score >= self.settings.min_score]
        readable = clean_passages(passages)
        focused = self.retriever.focus(retrieval, readable) if readable else []
        context = [] if retrieval.standalone else list(history or [])
        return Reading(passages, readable, focused, context,
                       chain_inputs(retrieval.question, focused, context, self.settings.max_context_chars))

    def _answerable(self, inputs: dict) -> float | None:
        """The model's probability that the passages answer the question (None: no model, or a
        backend without log-probabilities, or the check is off)."""
        if self.settings.llm == "extractive" or self.settings.answerable_threshold <= 0 and not self.settings.judge_always:
            return None
        from .llm import first_token_probabilities

        with self._model_call():
            probs = first_token_probabilities(self.llm, judge_messages(inputs), YES_NO)
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

    @contextlib.contextmanager
    def _model_call(self):
        """A model turn whose failure is told in words: an OpenAI-compatible server's error
        says what was tried and what to check."""
        with self._model_turn():
            try:
                yield
            except ScrumbotError:
                raise
            except Exception as err:
                if self.settings.llm == "openai":
                    from .llm import explain_openai_error

                    raise explain_openai_error(err, self.settings) from err
                raise

    def _generate(self, question: str, passages: list[Source], history: History, inputs: dict,
                  stop: threading.Event | None = None) -> Iterator[str]:
        if self.settings.llm == "extractive":
            for piece in extractive_answer(question, passages, self.embeddings):
                if stop is not None and stop.is_set():
                    return
                yield piece
            return
        # Stopping ends the model's own stream at its next token. Closing the chain's stream
        # would not: LangChain reads the model's stream to its end when its consumer stops.
        config = {"callbacks": [_StopAtNextToken(stop)]} if stop is not None else None
        with self._model_call():
            try:
                yield from self.chain.stream(inputs, config=config)
            except GenerationStopped:
                return


_ASKING = re.compile(r"(?i)(what|who|whom|whose|which|when|where|why|how|is|are|can|could|do|does|"
                     r"should|will|would)\b")


def questions_from_headings(chunks: Iterable) -> list[str]:
    """Candidate questions from the headings chunks sit under, one file at a time in turn (so
    the first few cover several documents): a heading phrased as a question is asked as it is,
    a short topic as "What is <topic>?"."""
    per_file: dict[str, list[str]] = {}
    seen: set[str] = set()
    for chunk in chunks:
        heading = " ".join(str(chunk.metadata.get("heading") or "").split()).strip(" :-#")
        if not heading or heading.lower() in seen or len(heading) > 80:
            continue
        seen.add(heading.lower())
        if heading.endswith("?") or _ASKING.match(heading):
            question = heading.rstrip("?.!") + "?"
        elif len(heading.split()) <= 5 and not heading.endswith((".", "!")):
            question = f"What is {re.sub(r'^(The|A|An) ', lambda m: m.group(1).lower() + ' ', heading)}?"
        else:
            continue
        per_file.setdefault(chunk.metadata.get("source_id", ""), []).append(question)
    queues = [per_file[k] for k in sorted(per_file)]
    out: list[str] = []
    while any(queues):
        out += [q.pop(0) for q in queues if q]
    return out


def _course_name(course: str) -> str:
    try:
        return check_course(course)
    except ValueError as err:
        raise ConfigError(str(err), "Pick an existing course, or type a new name in that form.") from None


class GenerationStopped(Exception):
    """The reader of an answer asked it to stop (raised inside the model's stream)."""


def _StopAtNextToken(stop: threading.Event):
    from langchain_core.callbacks import BaseCallbackHandler

    class StopAtNextToken(BaseCallbackHandler):
        raise_error = True  # so that the exception ends the model's stream instead of being logged

        def on_llm_new_token(self, token, **kwargs) -> None:
            if stop.is_set():
                raise GenerationStopped()

    return StopAtNextToken()


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


def answer(question: str, history: History | None = None, course: str | None = None, *,
           conversation_id: str | None = None) -> Answer:
    """Answer one question with the default settings (SCRUMBOT_*), from `course` (default:
    SCRUMBOT_COURSE, else the default course)."""
    return default_assistant().for_course(course).answer(question, history, conversation_id=conversation_id)


def stream(question: str, history: History | None = None, course: str | None = None, *,
           conversation_id: str | None = None) -> Iterator[Answer]:
    """Like answer(), yielding growing snapshots while the model writes."""
    return default_assistant().for_course(course).stream(question, history, conversation_id=conversation_id)


