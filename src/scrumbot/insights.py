"""Trainer insights: the question log, and the report a trainer reads from it.

The log is SQLite (`questions.sqlite`) in the index folder, one file per install with a
`course` column; with a Chroma server the index folder still exists on this machine (it holds
the record of what was indexed) and the log lives there too. A row is written after the answer,
by one background thread: answering never waits for the disk, and a full disk, a read-only
folder or a locked database costs the row (one warning in the log), never the answer.

A row holds what a trainer needs to improve the course and nothing about who asked: the time,
the course, a random conversation id, the question and the answer (secrets masked, e-mail
addresses removed), whether and why it was refused, the cited passages (file, heading, score),
the latency and the student's thumbs up/down with its reason. No IP address, no account name.

The report (build_report) clusters the refused and thumbs-down questions by topic with the
course's own embedder — the gaps in the material — and shows for each the nearest passage the
course has, so the trainer sees what is close but missing."""

from __future__ import annotations

import atexit
import base64
import csv
import html
import io
import json
import logging
import queue
import re
import sqlite3
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable

from .config import Settings
from .errors import ScrumbotError
from .store import INDEX_FORMAT, MARKER

log = logging.getLogger("scrumbot.insights")

LOG_FILE = "questions.sqlite"
FEEDBACK_REASONS = ("wrong", "not in the course but should be", "unclear")
MAX_TEXT = 4000  # characters of an answer kept in a row
# Cosine distance under which two groups of questions share a topic (average linkage over
# MiniLM vectors). Chosen on a synthetic log of 5 topics + noise (tests/test_insights_clustering.py,
# README "Trainer insights"): tighter cuts split a topic by its wording, looser ones let
# unrelated questions join the big topics.
CLUSTER_DISTANCE = 0.7
# A gap whose closest passage scores under this is far from everything in the course (the
# weather, a coding task): the report marks it as likely off-topic rather than missing.
OFF_TOPIC = 0.15

_SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    id TEXT PRIMARY KEY,            -- the answer's log_id (random)
    time TEXT NOT NULL,             -- UTC, ISO 8601 (sorts as text)
    course TEXT NOT NULL,
    conversation TEXT NOT NULL,     -- random, one per page conversation or API call
    question TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- answered | refused | failed | stopped
    refused INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    sources TEXT NOT NULL DEFAULT '[]',  -- JSON: [{"source", "heading", "score"}]
    total_s REAL,
    first_token_s REAL,
    rating TEXT,                    -- up | down | NULL
    feedback_reason TEXT NOT NULL DEFAULT '',
    feedback_time TEXT
);
CREATE INDEX IF NOT EXISTS questions_course_time ON questions (course, time);
"""
COLUMNS = ("id", "time", "course", "conversation", "question", "outcome", "refused", "reason",
           "answer", "sources", "total_s", "first_token_s", "rating", "feedback_reason", "feedback_time")


def course_of(settings: Settings) -> str:
    """The course a question belongs to (the one place that decides it)."""
    return settings.course


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def scrub(text: str, settings: Settings, limit: int = MAX_TEXT) -> str:
    """Text as a row may keep it: no secrets of these settings, no e-mail addresses."""
    return _EMAIL.sub("(an e-mail address)", settings.mask(text or ""))[:limit]


@dataclass(frozen=True)
class Row:
    id: str
    course: str
    conversation: str
    question: str
    outcome: str
    refused: bool
    reason: str = ""
    answer: str = ""
    sources: list[dict] = field(default_factory=list)
    total_s: float | None = None
    first_token_s: float | None = None
    time: str = field(default_factory=lambda: _iso(utcnow()))


class QuestionLog:
    """Writes rows and feedback in a background thread; reads them for the report.

    Every write is best-effort: when the folder is read-only, the disk full or the database
    locked, the row is dropped with one warning (until writing works again)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = Path(settings.index_dir) / LOG_FILE
        self.enabled = settings.log_questions
        self._queue: queue.Queue = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._failing = False  # a warning was logged; quiet until a write succeeds again
        self._purged = 0.0  # when old rows were last deleted (monotonic)

    # -- writing (from the answering threads: only enqueues) ---------------------------------

    def record(self, row: Row) -> None:
        self._put(("row", row))

    def feedback(self, log_id: str, rating: str | None, reason: str = "") -> None:
        self._put(("feedback", (log_id, rating, reason, _iso(utcnow()))))

    def _put(self, item) -> None:
        if not self.enabled:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the writer is stuck (a locked database): drop, never wait
            self._warn("the question log is behind (database locked?); a row was dropped")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued is written (or dropped); False on timeout."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scrumbot-question-log", daemon=True)
                self._thread.start()
                # `scrumbot ask` exits right after printing: give the row a moment to land
                atexit.register(self.flush, 2.0)

    def _run(self) -> None:
        while True:
            kind, payload = self._queue.get()
            try:
                db = self._open()
                if kind == "row":
                    self._insert(db, payload)
                else:
                    db.execute("UPDATE questions SET rating = ?, feedback_reason = ?, feedback_time = ? "
                               "WHERE id = ?", (payload[1], payload[2], payload[3], payload[0]))
                db.commit()
                if self._failing:
                    log.warning("the question log at %s is written again", self.path)
                    self._failing = False
            except (sqlite3.Error, OSError, ScrumbotError) as err:
                self._close()
                self._warn(f"the question log at {self.path} could not be written ({err}); "
                           "answering goes on, questions are not logged until it can be")
            except Exception:  # a bug here must not stop the thread (and with it, the log)
                self._close()
                log.exception("writing the question log failed")
            finally:
                self._queue.task_done()

    def _warn(self, message: str) -> None:
        if not self._failing:
            self._failing = True
            log.warning("%s", self.settings.mask(message))

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            folder = self.path.parent
            if not folder.exists() or not any(folder.iterdir()):
                # as the store does for its records: marked as ours, so an index can live here
                folder.mkdir(parents=True, exist_ok=True)
                (folder / MARKER).write_text(json.dumps({"format": INDEX_FORMAT}))
            elif not (folder / MARKER).exists():
                raise ScrumbotError(f"{folder} is not a scrumbot index folder")
            db = sqlite3.connect(self.path, timeout=2.0, check_same_thread=False)
            try:
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        if time.monotonic() - self._purged > 3600 or not self._purged:
            self._purge(self._db)
        return self._db

    def _purge(self, db: sqlite3.Connection) -> None:
        """Delete rows older than SCRUMBOT_LOG_RETENTION_DAYS (at open, then hourly)."""
        self._purged = time.monotonic()
        days = self.settings.log_retention_days
        if days > 0:
            db.execute("DELETE FROM questions WHERE time < ?", (_iso(utcnow() - timedelta(days=days)),))
            db.commit()

    def _insert(self, db: sqlite3.Connection, row: Row) -> None:
        values = asdict(row)
        values["refused"] = int(row.refused)
        values["sources"] = json.dumps(row.sources, ensure_ascii=False)
        names = [c for c in COLUMNS if c in values]
        db.execute(f"INSERT OR REPLACE INTO questions ({', '.join(names)}) VALUES "
                   f"({', '.join('?' for _ in names)})", [values[c] for c in names])

    def _close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    # -- reading -----------------------------------------------------------------------------

    def rows(self, course: str | None = None, since: datetime | None = None) -> list[dict]:
        """The logged rows (oldest first), of one course and since a moment if given."""
        self.flush()
        if not self.path.exists():
            return []
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as err:
            raise ScrumbotError(f"The question log at {self.path} cannot be read: {err}") from None
        try:
            db.row_factory = sqlite3.Row
            where, args = [], []
            if course:
                where.append("course = ?")
                args.append(course)
            if since:
                where.append("time >= ?")
                args.append(_iso(since))
            sql = "SELECT * FROM questions" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time"
            out = []
            for r in db.execute(sql, args):
                row = dict(r)
                row["refused"] = bool(row["refused"])
                row["sources"] = json.loads(row["sources"] or "[]")
                out.append(row)
            return out
        except sqlite3.Error as err:
            raise ScrumbotError(f"The question log at {self.path} cannot be read: {err}",
                                "Check that no other program holds it locked, then try again.") from None
        finally:
            db.close()


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'7d', '24h', '2w' or a date ('2026-11-01') -> the moment the report starts from."""
    if not text:
        return None
    now = now or utcnow()
    m = re.fullmatch(r"\s*(\d+)\s*([hdw])\s*", text.lower())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return now - {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScrumbotError(f"--since {text!r} is neither a span nor a date.",
                            "Use e.g. --since 7d, --since 24h, --since 2w or --since 2026-11-01.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Topic:
    """Questions on one subject: a cluster of the log."""

    label: str  # its most central question
    questions: list[str]  # every question of it, most central first (repeats kept)
    refused: int = 0
    disliked: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why refused / why disliked
    sources: dict[str, int] = field(default_factory=dict)  # passages its answers cited
    nearest: dict | None = None  # the course passage closest to the label

    @property
    def size(self) -> int:
        return len(self.questions)

    def examples(self, n: int = 5) -> list[str]:
        return list(dict.fromkeys(self.questions))[:n]

    def as_dict(self) -> dict:
        return {"label": self.label, "size": self.size, "refused": self.refused, "disliked": self.disliked,
                "examples": self.examples(), "questions": self.questions, "reasons": self.reasons,
                "sources": self.sources, "nearest": self.nearest}


@dataclass
class Report:
    course: str | None
    since: str | None
    generated: str
    totals: dict
    gaps: list[Topic]
    topics: list[Topic]
    disliked: list[dict]
    rows: list[dict]

    def as_dict(self) -> dict:
        return {"course": self.course, "since": self.since, "generated": self.generated,
                "totals": self.totals, "gaps": [t.as_dict() for t in self.gaps],
                "topics": [t.as_dict() for t in self.topics], "disliked": self.disliked}

    def write_csv(self, path: Path | str) -> Path:
        """Every row of the report's period, one line each (sources as JSON)."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(COLUMNS)
            for row in self.rows:
                out.writerow([_cell(json.dumps(row[c], ensure_ascii=False) if c == "sources" else row[c])
                              for c in COLUMNS])
        return path

    def text(self) -> str:
        """The report for a terminal."""
        t = self.totals
        lines = [f"course {self.course or '(all)'}, {self.since or 'all time'}: {t['questions']} questions, "
                 f"{t['answered']} answered, {t['refused']} refused, {t['failed']} failed; "
                 f"thumbs {t['up']} up / {t['down']} down; latency p50 {_seconds(t['p50_s'])}"]
        lines.append("\nGaps (refused or disliked questions, by topic):")
        for g in self.gaps[:10] or []:
            near = g.nearest
            lines.append(f"  {g.size:3d}  {g.label}   [{g.refused} refused, {g.disliked} disliked]")
            for q in g.examples(3)[1:]:
                lines.append(f"         · {q}")
            if near:
                lines.append(f"         closest passage: {near['source']}"
                             f"{' — ' + near['heading'] if near.get('heading') else ''} (score {near['score']:.2f}"
                             f"{', likely off-topic' if near['score'] < OFF_TOPIC else ''})")
        if not self.gaps:
            lines.append("  none")
        lines.append("\nMost asked (answered):")
        for t_ in self.topics[:10]:
            lines.append(f"  {t_.size:3d}  {t_.label}")
        if not self.topics:
            lines.append("  none")
        lines.append("\nThumbs down:")
        for d in self.disliked[:10]:
            lines.append(f"  {d['question']}  [{d['feedback_reason'] or 'no reason given'}]")
        if not self.disliked:
            lines.append("  none")
        return "\n".join(lines)

    def html(self, *, page: bool = True) -> str:
        """The report as one self-contained HTML page (or, page=False, a fragment for the app)."""
        return render_html(self, page=page)


def _cell(value):
    """A CSV cell a spreadsheet will not run: questions are typed by anyone."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def build_report(rows: list[dict], *, course: str | None, since: datetime | None,
                 embeddings=None, nearest: Callable[[str], dict | None] | None = None,
                 distance: float = CLUSTER_DISTANCE) -> Report:
    """Totals, gaps (refused + thumbs-down questions by topic, each with the nearest course
    passage), the most asked answered topics and the thumbs-down answers of `rows`."""
    latencies = [r["total_s"] for r in rows if r["total_s"] is not None and r["outcome"] in ("answered", "refused")]
    totals = {
        "questions": len(rows),
        "answered": sum(r["outcome"] == "answered" for r in rows),
        "refused": sum(r["outcome"] == "refused" for r in rows),
        "failed": sum(r["outcome"] == "failed" for r in rows),
        "stopped": sum(r["outcome"] == "stopped" for r in rows),
        "up": sum(r["rating"] == "up" for r in rows),
        "down": sum(r["rating"] == "down" for r in rows),
        "conversations": len({r["conversation"] for r in rows}),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p50_first_token_s": (round(statistics.median(ft), 3)
                              if (ft := [r["first_token_s"] for r in rows if r["first_token_s"] is not None]) else None),
    }
    gap_rows = [r for r in rows if r["outcome"] == "refused" or r["rating"] == "down"]
    answered = [r for r in rows if r["outcome"] == "answered" and r["rating"] != "down"]
    gaps = topics_of(gap_rows, embeddings, distance) if embeddings is not None else []
    for g in gaps:
        g.nearest = nearest(g.label) if nearest else None
    topics = topics_of(answered, embeddings, distance) if embeddings is not None else []
    disliked = [{k: r[k] for k in ("time", "question", "answer", "feedback_reason", "sources", "outcome", "reason")}
                for r in reversed(rows) if r["rating"] == "down"]
    return Report(course, _iso(since) if since else None, _iso(utcnow()), totals, gaps, topics, disliked, rows)


def topics_of(rows: list[dict], embeddings, distance: float = CLUSTER_DISTANCE) -> list[Topic]:
    """The rows' questions clustered by meaning, biggest topic first."""
    if not rows:
        return []
    questions = [r["question"] for r in rows]
    labels, vectors = cluster(questions, embeddings, distance)
    topics = []
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        order = _by_centrality(members, vectors)
        topic = Topic(questions[order[0]], [questions[i] for i in order])
        for i in members:
            r = rows[i]
            topic.refused += r["outcome"] == "refused"
            topic.disliked += r["rating"] == "down"
            why = r["feedback_reason"] if r["rating"] == "down" else _short_reason(r["reason"])
            if why:
                topic.reasons[why] = topic.reasons.get(why, 0) + 1
            for s in r["sources"]:
                topic.sources[s["source"]] = topic.sources.get(s["source"], 0) + 1
        topics.append(topic)
    return sorted(topics, key=lambda t: (-t.size, t.label))


def _short_reason(reason: str) -> str:
    """A refusal's reason without its particulars (scores, the words withheld), so that the
    refusals of one stage count together."""
    reason = re.sub(r"\s*\(.*?\)", "", reason or "")
    return reason.split(":", 1)[0].strip()


def cluster(texts: list[str], embeddings, distance: float = CLUSTER_DISTANCE):
    """Agglomerative clustering (average linkage, cosine distance cut at `distance`):
    -> (a cluster number per text, the normalised vectors)."""
    import numpy as np

    unique = list(dict.fromkeys(texts))
    vectors = np.asarray(embeddings.embed_documents(unique), dtype=float)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    if len(unique) == 1:
        per_unique = [1]
    else:
        from scipy.cluster.hierarchy import fcluster, linkage

        tree = linkage(vectors, method="average", metric="cosine")
        per_unique = list(fcluster(tree, t=distance, criterion="distance"))
    index = {t: i for i, t in enumerate(unique)}
    return [per_unique[index[t]] for t in texts], vectors[[index[t] for t in texts]]


def _by_centrality(members: list[int], vectors) -> list[int]:
    """Members ordered by mean similarity to the others: the first is the most central."""
    sub = vectors[members]
    mean = (sub @ sub.T).mean(axis=1)
    return [members[i] for i in sorted(range(len(members)), key=lambda i: -mean[i])]


def adjusted_rand_index(truth: Iterable, found: Iterable) -> float:
    """How well two labelings of the same items agree, 1.0 = identical, ~0 = chance (Hubert &
    Arabie 1985); for checking the clustering against known topics."""
    from math import comb

    truth, found = list(truth), list(found)
    pairs: dict = {}
    for t, f in zip(truth, found):
        pairs[(t, f)] = pairs.get((t, f), 0) + 1
    rows_, cols = {}, {}
    for (t, f), n in pairs.items():
        rows_[t] = rows_.get(t, 0) + n
        cols[f] = cols.get(f, 0) + n
    index = sum(comb(n, 2) for n in pairs.values())
    a, b = sum(comb(n, 2) for n in rows_.values()), sum(comb(n, 2) for n in cols.values())
    expected = a * b / comb(len(truth), 2) if len(truth) > 1 else 0.0
    top = (a + b) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)


# -- HTML ----------------------------------------------------------------------------------------

_CSS = """
.sb-report { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; max-width: 1100px; }
.sb-report h1 { font-size: 1.5em; margin: 0 0 .2em; }
.sb-report h2 { font-size: 1.15em; margin: 1.4em 0 .3em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
.sb-report .muted { color: #656d76; font-size: .9em; }
.sb-report .totals { display: flex; flex-wrap: wrap; gap: .6em; margin: .8em 0; }
.sb-report .totals div { border: 1px solid #d0d7de; border-radius: 6px; padding: .4em .8em; min-width: 6.5em; }
.sb-report .totals b { display: block; font-size: 1.4em; }
.sb-report table { border-collapse: collapse; width: 100%; font-size: .92em; }
.sb-report th, .sb-report td { border-bottom: 1px solid #e6e8eb; padding: .35em .5em; text-align: left; vertical-align: top; }
.sb-report th { background: #f6f8fa; }
.sb-report td.n { text-align: right; white-space: nowrap; }
.sb-report ul { margin: .2em 0; padding-left: 1.2em; }
.sb-report blockquote { margin: .3em 0 0; padding: .2em .6em; border-left: 3px solid #d0d7de; color: #444; font-size: .9em; }
.sb-report .tag { display: inline-block; background: #eef1f4; border-radius: 4px; padding: 0 .35em; margin: 0 .2em .2em 0; font-size: .85em; }
.sb-report img { max-width: 100%; }
"""


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ") + " UTC"


def _e(value) -> str:
    return html.escape(str(value if value is not None else ""))


def _tags(counts: dict) -> str:
    return "".join(f'<span class="tag">{_e(k)} ×{n}</span>' for k, n in sorted(counts.items(), key=lambda x: -x[1]))


def render_html(report: Report, *, page: bool = True) -> str:
    t = report.totals
    out = ['<div class="sb-report">', f"<h1>Trainer report — {_e(report.course or 'all courses')}</h1>",
           f'<p class="muted">{_e(("since " + _when(report.since)) if report.since else "all logged questions")}'
           f" · generated {_e(_when(report.generated))} · questions are logged without names</p>",
           '<div class="totals">']
    for label, value in (("questions", t["questions"]), ("answered", t["answered"]), ("refused", t["refused"]),
                         ("failed", t["failed"]), ("thumbs up", t["up"]), ("thumbs down", t["down"]),
                         ("p50 latency", _seconds(t["p50_s"])), ("conversations", t["conversations"])):
        out.append(f"<div>{_e(label)}<b>{_e(value)}</b></div>")
    out.append("</div>")
    chart = gap_chart(report)
    out.append("<h2>Gaps: what the course does not answer</h2>")
    out.append('<p class="muted">Refused and thumbs-down questions, grouped by topic (biggest first). '
               "The closest passage is what the course has nearest to the topic: a new section, or a "
               "clearer one there, closes the gap.</p>")
    if chart:
        out.append(f'<img alt="gap topics by size" src="data:image/png;base64,{chart}">')
    if report.gaps:
        out.append("<table><tr><th>#</th><th>Topic (most central question)</th><th>Asked</th>"
                   "<th>Example questions and why</th><th>Closest course passage</th></tr>")
        for i, g in enumerate(report.gaps, 1):
            near = g.nearest
            near_html = "–" if not near else (
                f"<b>{_e(near['source'])}</b>{(' — ' + _e(near['heading'])) if near.get('heading') else ''}"
                f' <span class="muted">score {near["score"]:.2f}'
                f'{" · far from all the course: likely off-topic" if near["score"] < OFF_TOPIC else ""}</span>'
                f"<blockquote>{_e(near['text'][:280])}{'…' if len(near['text']) > 280 else ''}</blockquote>")
            out.append(f"<tr><td class='n'>{i}</td><td><b>{_e(g.label)}</b></td>"
                       f"<td class='n'>{g.size}<br><span class='muted'>{g.refused} refused<br>{g.disliked} thumbs down</span></td>"
                       f"<td><ul>{''.join(f'<li>{_e(q)}</li>' for q in g.examples()[1:]) or '<li class=muted>(only this one)</li>'}"
                       f"</ul>{_tags(g.reasons)}</td><td>{near_html}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No refused or thumbs-down questions in this period.</p>")
    out.append("<h2>Most asked topics (answered)</h2>")
    if report.topics:
        out.append("<table><tr><th>Topic</th><th>Asked</th><th>Examples</th><th>Passages cited</th></tr>")
        for tp in report.topics[:15]:
            out.append(f"<tr><td><b>{_e(tp.label)}</b></td><td class='n'>{tp.size}</td>"
                       f"<td><ul>{''.join(f'<li>{_e(q)}</li>' for q in tp.examples(4)[1:])}</ul></td>"
                       f"<td>{_tags(tp.sources)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No answered questions in this period.</p>")
    out.append("<h2>Thumbs-down answers</h2>")
    if report.disliked:
        out.append("<table><tr><th>When</th><th>Question</th><th>Reason given</th><th>Answer</th><th>Its sources</th></tr>")
        for d in report.disliked[:30]:
            sources = "".join(f'<span class="tag">{_e(s["source"])}{(" — " + _e(s["heading"])) if s.get("heading") else ""}'
                              f' ({s["score"]:.2f})</span>' for s in d["sources"]) or "–"
            out.append(f"<tr><td class='n'>{_e(d['time'][:16].replace('T', ' '))}</td><td>{_e(d['question'])}</td>"
                       f"<td>{_e(d['feedback_reason'] or '–')}</td><td>{_e(d['answer'][:400])}</td><td>{sources}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No thumbs-down in this period.</p>")
    out.append("</div>")
    body = "\n".join(out)
    if not page:
        return f"<style>{_CSS}</style>\n{body}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>scrumbot trainer report — {_e(report.course or 'all courses')}</title>"
            f"<style>body {{ margin: 2em; }} {_CSS}</style></head><body>\n{body}\n</body></html>\n")


def gap_chart(report: Report, top: int = 8) -> str | None:
    """A small horizontal bar chart of the biggest gap topics (refused / thumbs down), as
    base64 PNG; None without matplotlib or gaps."""
    if not report.gaps:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: the report has no chart")
        return None
    gaps = report.gaps[:top][::-1]
    names = [g.label if len(g.label) <= 60 else g.label[:57] + "…" for g in gaps]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(gaps) + 0.9), dpi=110)
    refused = [g.refused for g in gaps]
    disliked = [g.size - g.refused for g in gaps]
    ax.barh(names, refused, color="#cf4f3f", label="refused")
    ax.barh(names, disliked, left=refused, color="#e6a23c", label="answered, thumbs down")
    ax.set_xlabel("questions")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
