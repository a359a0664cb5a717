"""Measured answer quality: run question files through the real pipeline and score the answers.

A question file is JSON Lines. One question per line:

    {"id": "p01", "q": "Which cert suits a business analyst?",
     "must": [["CSPO", "Product Owner"]], "source": "product-owner-101"}
    {"id": "p08", "q": "How much does the CSPO course cost?", "refuse": true,
     "must_not": [["$", "dollar"]]}

or one conversation per line, its turns asked in order with the real answers as history:

    {"id": "d01", "turns": [{"q": "What does the Product Owner do?", ...},
                            {"q": "Which certification is meant for that role?", ...}]}

Scoring (case-insensitive substring matching, so a trainer can write the checks by hand):
an answerable question is correct when it was not refused, every `must` group has at least one
of its strings in the answer, and no `must_not` string is; an out-of-scope question
(`refuse: true`) is correct when it was refused and no `must_not` string is in the text.
Retrieval hit@k: one of the expected `source` file stems is among the answer's sources."""

from __future__ import annotations

import importlib.util
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

from .api import Answer, Assistant
from .config import Settings
from .errors import ScrumbotError

History = list[tuple[str, str]]

_REPO = Path(__file__).resolve().parents[2]
BASELINE_FILE = _REPO / "benchmarks" / "baseline.py"


class EvalFileError(ScrumbotError):
    """A question file cannot be read as an eval set."""


class Answerer(Protocol):
    def answer(self, question: str, history: History | None = None) -> Answer: ...


# -- the question files ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One question to ask; a turn of a conversation knows which one and where."""

    id: str
    q: str
    must: tuple[tuple[str, ...], ...] = ()
    must_not: tuple[str, ...] = ()
    refuse: bool = False
    sources: tuple[str, ...] = ()  # expected file stems; any one of them counts as a hit
    file: str = ""
    dialogue: str | None = None
    turn: int = 0


def load(paths: Iterable[Path | str], split: str | None = None) -> list[list[Case]]:
    """Conversations (a question alone is a conversation of one turn), in file order.

    With `split` ("dev" or "test"), only the lines of that split; a line without "split" is dev,
    so the question sets written before the split count as what was tuned on."""
    conversations: list[list[Case]] = []
    for path in map(Path, paths):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise EvalFileError(f"{path} does not exist.", "Check the path of the question file.") from None
        except (OSError, UnicodeDecodeError) as err:
            raise EvalFileError(f"{path} cannot be read: {err}", "Give a UTF-8 JSON Lines file.") from None
        seen: set[str] = set()
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            where = f"{path.name} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalFileError(f"{where} is not valid JSON: {err.msg}.",
                                    "Each line must be one JSON object (JSON Lines).") from None
            if not isinstance(row, dict):
                raise EvalFileError(f"{where} is not a JSON object.", _FORMAT_HINT)
            ident = str(row.get("id") or f"{path.stem}:{n}")
            if ident in seen:
                raise EvalFileError(f"{where}: the id {ident!r} is used twice.", "Give every line its own id.")
            seen.add(ident)
            if split and row.get("split", "dev") != split:
                continue
            if "turns" in row:
                turns = row["turns"]
                if not isinstance(turns, list) or not turns:
                    raise EvalFileError(f"{where}: \"turns\" must be a non-empty list.", _FORMAT_HINT)
                conversations.append([_case(t, f"{ident}.{i}", path.name, where, ident, i)
                                      for i, t in enumerate(turns, 1)])
            else:
                conversations.append([_case(row, ident, path.name, where)])
    if not conversations:
        if split:
            raise EvalFileError(f"The question files hold no questions of the {split} split.",
                                'Mark lines with "split": "dev" or "test", or leave out --split.')
        raise EvalFileError("The question files hold no questions.", _FORMAT_HINT)
    return conversations


def load_courses(path: Path) -> dict[str, tuple[list[Path], list[Path]]]:
    """Evaluation courses listed in a JSON file (eval/courses.json): {name: {"questions": [...],
    "corpus": [...]}}, paths relative to the file's folder; a key starting with "_" is a note.
    Returns name -> (question files of every split, folders the course is indexed from)."""
    here = Path(path).resolve().parent

    def paths(names: list[str]) -> list[Path]:
        return [(here / name).resolve() for name in names]

    return {name: (paths(course["questions"]), paths(course["corpus"]))
            for name, course in json.loads(Path(path).read_text(encoding="utf-8")).items()
            if not name.startswith("_")}


_FORMAT_HINT = ('A line looks like {"id": "q1", "q": "...", "must": [["a", "b"]], "source": "file-stem"} '
                'or {"id": "q2", "q": "...", "refuse": true}; a conversation is {"id": "d1", "turns": [...]}.')


def _case(row: object, ident: str, file: str, where: str, dialogue: str | None = None,
          turn: int = 0) -> Case:
    if not isinstance(row, dict) or not isinstance(row.get("q"), str) or not row["q"].strip():
        raise EvalFileError(f"{where}: every question needs a non-empty \"q\".", _FORMAT_HINT)
    try:
        must = tuple(tuple(_strings(g)) for g in _list(row.get("must")))
        must_not = tuple(s for g in _list(row.get("must_not")) for s in _strings(g))
        sources = tuple(_strings(row.get("source") or []))
    except TypeError:
        raise EvalFileError(f"{where}: \"must\" is a list of lists of strings, \"must_not\" and "
                            "\"source\" strings or lists of strings.", _FORMAT_HINT) from None
    if any(not g for g in must):
        raise EvalFileError(f"{where}: a \"must\" group is empty.", _FORMAT_HINT)
    refuse = bool(row.get("refuse", False))
    return Case(ident, row["q"], must, must_not, refuse, () if refuse else sources, file, dialogue, turn)


def _list(value: object) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(value)
    return value


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(value)


# -- scoring ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    answer: str
    refused: bool
    sources: list[str]  # file stems of the answer's sources, in citation order
    seconds: float
    correct: bool = False
    hit: bool | None = None  # None: no expected source (out-of-scope questions)
    failures: list[str] = field(default_factory=list)
    reason: str = ""  # why it was refused (Answer.reason)
    scores: dict = field(default_factory=dict)  # the evidence behind the decision (Answer.scores)

    @property
    def kind(self) -> str:
        """What went wrong, in the summary's terms ('' when correct)."""
        if self.correct:
            return ""
        if self.case.refuse:
            return "false answer"
        return "false refusal" if self.refused else "wrong answer"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["case"] = {k: v for k, v in asdict(self.case).items()}
        d["kind"] = self.kind
        return d


def score(case: Case, answer: str, refused: bool, sources: list[str], seconds: float = 0.0) -> Outcome:
    """Judge one answer against its case (see the module docstring for the rules)."""
    text = answer.lower()
    failures: list[str] = []
    present = [s for s in case.must_not if s.lower() in text]
    if present:
        failures.append(f"says {', '.join(map(repr, present))}")
    if case.refuse:
        if not refused:
            failures.insert(0, "answered an out-of-scope question")
    elif refused:
        failures.insert(0, "refused an answerable question")
    else:
        for group in case.must:
            if not any(s.lower() in text for s in group):
                failures.append(f"missing one of {list(group)}")
    hit = None
    if case.sources:
        hit = any(s in sources for s in case.sources)
    return Outcome(case, answer, refused, sources, seconds, not failures, hit, failures)


def answer_read(bot, retrieval, case: Case) -> bool:
    """Did the answer reach the model: has every `must` group a string in the text the model
    reads of `retrieval` (Assistant._read; nothing when the gate refuses)? For the benchmarks
    that tell retrieval's losses from the model's."""
    text = bot._read(retrieval).inputs["context"].lower() if bot.retriever.covered(retrieval) else ""
    return all(any(m.lower() in text for m in group) for group in case.must)


def source_stem(source: str) -> str:
    return Path(source).stem


# -- running ---------------------------------------------------------------------------------


def run(answerer: Answerer, conversations: list[list[Case]],
        on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Ask every question (each conversation with its own growing history) and score it."""
    outcomes = []
    for turns in conversations:
        history: History = []
        for case in turns:
            t0 = time.perf_counter()
            a = answerer.answer(case.q, history)
            seconds = time.perf_counter() - t0
            outcome = score(case, a.text, a.refused, [source_stem(s.source) for s in a.sources], seconds)
            outcome.reason, outcome.scores = a.reason, dict(a.scores)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
            history.append((case.q, a.text))
    return outcomes


@dataclass
class Summary:
    answerable: int
    answerable_correct: int
    out_of_scope: int
    refusals_correct: int
    false_refusals: int
    false_answers: int  # out-of-scope questions answered
    wrong_answers: int  # answerable, answered, but the checks failed
    hits: int
    hit_cases: int
    p50_s: float
    p95_s: float

    @property
    def answerable_pct(self) -> float:
        return _pct(self.answerable_correct, self.answerable)

    @property
    def refusal_pct(self) -> float:
        return _pct(self.refusals_correct, self.out_of_scope)

    @property
    def hit_pct(self) -> float:
        return _pct(self.hits, self.hit_cases)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(answerable_pct=self.answerable_pct, refusal_pct=self.refusal_pct, hit_pct=self.hit_pct)
        return d


def _pct(n: int, total: int) -> float:
    return round(100.0 * n / total, 1) if total else 100.0


def summarize(outcomes: list[Outcome]) -> Summary:
    answerable = [o for o in outcomes if not o.case.refuse]
    out = [o for o in outcomes if o.case.refuse]
    with_source = [o for o in outcomes if o.hit is not None]
    seconds = [o.seconds for o in outcomes]
    return Summary(
        answerable=len(answerable),
        answerable_correct=sum(o.correct for o in answerable),
        out_of_scope=len(out),
        refusals_correct=sum(o.correct for o in out),
        false_refusals=sum(o.refused for o in answerable),
        false_answers=sum(not o.refused for o in out),
        wrong_answers=sum(not o.refused and not o.correct for o in answerable),
        hits=sum(bool(o.hit) for o in with_source),
        hit_cases=len(with_source),
        p50_s=round(_quantile(seconds, 0.50), 2),
        p95_s=round(_quantile(seconds, 0.95), 2),
    )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# -- the report ------------------------------------------------------------------------------


@dataclass
class Report:
    files: list[str]
    k: int
    systems: dict[str, list[Outcome]]  # "scrumbot", and "baseline" when asked

    def summaries(self) -> dict[str, Summary]:
        return {name: summarize(o) for name, o in self.systems.items()}

    @property
    def passed(self) -> bool:
        """Every question of the main system right (what CI and `make eval` can insist on)."""
        return all(o.correct for o in self.systems["scrumbot"])

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "k": self.k,
            "systems": {name: {"summary": summarize(o).as_dict(), "results": [x.as_dict() for x in o]}
                        for name, o in self.systems.items()},
        }

    def table(self) -> str:
        sums = self.summaries()
        names = list(sums)
        rows = [
            ("answerable correct", lambda s: f"{s.answerable_correct}/{s.answerable} {s.answerable_pct:.1f}%"),
            ("correct refusals", lambda s: f"{s.refusals_correct}/{s.out_of_scope} {s.refusal_pct:.1f}%"),
            ("false refusals", lambda s: str(s.false_refusals)),
            ("false answers", lambda s: str(s.false_answers)),
            ("wrong answers", lambda s: str(s.wrong_answers)),
            (f"retrieval hit@{self.k}", lambda s: f"{s.hits}/{s.hit_cases} {s.hit_pct:.1f}%"),
            ("latency p50 / p95", lambda s: f"{s.p50_s:.1f}s / {s.p95_s:.1f}s"),
        ]
        width = max(len(r[0]) for r in rows) + 2
        cols = [max(16, len(n) + 2) for n in names]
        lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols))]
        for label, cell in rows:
            lines.append(label.ljust(width) + "".join(cell(sums[n]).rjust(c) for n, c in zip(names, cols)))
        failed = [(name, o) for name in names for o in self.systems[name] if not o.correct]
        if failed:
            lines += ["", "what failed:"]
            for name, o in failed:
                tag = f"[{name}] " if len(names) > 1 else ""
                miss = "" if o.hit in (None, True) else "; expected source not cited"
                lines.append(f"  {tag}{o.case.id} {o.kind}: {'; '.join(o.failures)}{miss}")
                lines.append(f"      Q: {o.case.q}")
                lines.append(f"      A: {_short(o.answer)}")
        else:
            lines += ["", "every question right."]
        return "\n".join(lines)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot(report: Report, path: Path) -> Path:
    """A PNG for people: accuracy bars per system, and the latency of every answer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ScrumbotError("--plot needs matplotlib.", "Run `pip install matplotlib`.") from None
    sums = report.summaries()
    names = list(sums)
    metrics = [("answerable\ncorrect", "answerable_pct"), ("correct\nrefusals", "refusal_pct"),
               (f"retrieval\nhit@{report.k}", "hit_pct")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [getattr(sums[name], attr) for _, attr in metrics]
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(metrics))]
        bars = ax1.bar(xs, values, width, label=name)
        ax1.bar_label(bars, fmt="%.0f%%", fontsize=8)
    ax1.set_xticks(range(len(metrics)), [m for m, _ in metrics])
    ax1.set_ylim(0, 110)
    ax1.set_ylabel("%")
    ax1.legend(loc="lower right")
    ax1.set_title(f"{sum(len(o) for o in report.systems.values()) // len(names)} questions: "
                  + ", ".join(Path(f).name for f in report.files), fontsize=9)
    ax2.boxplot([[o.seconds for o in report.systems[n]] for n in names], tick_labels=names)
    ax2.set_ylabel("seconds per answer")
    ax2.set_title("latency", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- the whole evaluation, as `scrumbot eval` runs it ------------------------------------------


def evaluate(files: list[Path], settings: Settings, *, corpus: list[Path] | None = None,
             baseline: bool = False, progress: Callable[[str, Outcome], None] | None = None,
             assistant: Assistant | None = None, split: str | None = None) -> Report:
    """Score the real pipeline (and the naive baseline) on the questions in `files` (of `split`).

    With `corpus`, those paths are indexed into a temporary index first and the user's index
    is not touched; without, the current index is used as it is."""
    conversations = load(files, split)
    with _index_for(settings, corpus, assistant) as bot:
        if bot.store.count() == 0:
            from .errors import IndexMissingError

            raise IndexMissingError(f"The index at {bot.store.location} is empty.",
                                    "Run `scrumbot index`, or give `--corpus PATH`.")
        systems = {"scrumbot": run(bot, conversations, _tag(progress, "scrumbot"))}
        if baseline:
            naive = load_baseline(bot, corpus)
            systems["baseline"] = run(naive, conversations, _tag(progress, "baseline"))
    return Report([str(f) for f in files], settings.k, systems)


def _tag(progress, name):
    return None if progress is None else (lambda o: progress(name, o))


@contextmanager
def _index_for(settings: Settings, corpus: list[Path] | None,
               assistant: Assistant | None) -> Iterator[Assistant]:
    # An evaluation's questions are not students': they stay out of the trainer's question log.
    settings = settings.replace(log_questions=False)
    if not corpus:
        if assistant is None or assistant.settings.log_questions:
            assistant = Assistant(settings if assistant is None else assistant.settings.replace(log_questions=False),
                                  embeddings=assistant._embeddings if assistant else None,
                                  embedder_name=assistant.embedder_name if assistant else None,
                                  llm=assistant._llm if assistant else None)
        yield assistant
        return
    with tempfile.TemporaryDirectory(prefix="scrumbot-eval-") as tmp:
        temp = settings.replace(index_dir=Path(tmp) / "index", chroma_url=None)
        bot = Assistant(temp, embeddings=assistant._embeddings if assistant else None,
                        embedder_name=assistant.embedder_name if assistant else None,
                        llm=assistant._llm if assistant else None)
        report = bot.index(corpus)
        if not bot.store.count():
            raise EvalFileError(f"Nothing could be indexed from {', '.join(map(str, corpus))}.",
                                report.summary())
        yield bot


def indexed_files(bot: Assistant, corpus: list[Path] | None) -> list[Path]:
    """The files the pipeline answers from, for the baseline to index the same text."""
    if corpus:
        from .ingest import discover

        return [sf.path for p in corpus for sf in discover(Path(p))[0]]
    status = bot.store.status()
    return [Path(root) / rel for root, files in status["sources"].items() for rel in sorted(files)]


def load_baseline(bot: Assistant, corpus: list[Path] | None):
    """The naive LangChain-tutorial pipeline of benchmarks/baseline.py, over the same files,
    embedder and LLM as `bot`."""
    if not BASELINE_FILE.exists():
        raise ScrumbotError(f"--baseline needs {BASELINE_FILE}, which only a source checkout has.",
                            "Run it from the scrumbot repository.")
    spec = importlib.util.spec_from_file_location("scrumbot_baseline", BASELINE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NaivePipeline(indexed_files(bot, corpus), bot.embeddings, bot.llm)
