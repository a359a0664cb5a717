"""The trainer's question log and report: real Chroma, real SQLite, the fake embedder and chat
model. Rows for answered, refused, failed and stopped questions; nothing personal in them;
retention; logging off; eval runs kept out; a read-only, full or locked log never costs an
answer; feedback from the page; the report, its HTML/CSV/JSON and the trainer-only tab."""

from __future__ import annotations

import re

import contextlib
import csv
import json
import logging
import shutil
import sqlite3
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CORPUS, EchoChatModel, FakeEmbeddings
from scrumbot import Assistant, Settings
from scrumbot.chain import NOT_COVERED
from scrumbot.errors import BadQuestionError, LLMUnavailableError, ScrumbotError
from scrumbot.insights import (LOG_FILE, QuestionLog, Row, _iso, adjusted_rand_index, build_report,
                               parse_since, utcnow)

ANSWERABLE = "Who is Braintrust Group?"
OUT_OF_SCOPE = "Which volcano erupted near Reykjavik yesterday?"


def rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM questions ORDER BY time, rowid")]
    finally:
        db.close()


def logged(bot: Assistant) -> list[dict]:
    assert bot.question_log.flush(10), "the question log did not drain"
    return rows(bot.settings.index_dir / LOG_FILE)


@pytest.fixture
def bot(fake_assistant):
    fake_assistant.index()
    return fake_assistant


class BrokenModel(EchoChatModel):
    def _stream(self, *a, **kw):
        raise RuntimeError("the model crashed")
        yield  # pragma: no cover


# -- rows -----------------------------------------------------------------------------------------


def test_answered_refused_and_failed_questions_are_logged(bot):
    ok = bot.answer(ANSWERABLE)
    no = bot.answer(OUT_OF_SCOPE)
    broken = Assistant(bot.settings, embeddings=bot.embeddings, embedder_name="fake-bag-of-words", llm=BrokenModel())
    with pytest.raises(RuntimeError):
        broken.answer(ANSWERABLE)
    assert broken.question_log.flush(10)

    answered, refused, failed = logged(bot)
    assert ok.log_id and answered["id"] == ok.log_id and answered["conversation"] == ok.conversation_id
    assert answered["outcome"] == "answered" and answered["refused"] == 0 and answered["reason"] == ""
    assert answered["question"] == ANSWERABLE and answered["answer"] == ok.text
    assert answered["course"] == bot.settings.course
    cited = json.loads(answered["sources"])
    assert cited[0] == {"source": ok.sources[0].source, "heading": ok.sources[0].heading,
                        "score": ok.sources[0].score}
    assert answered["total_s"] == ok.timings["total_s"] and answered["first_token_s"] == ok.timings["first_token_s"]
    assert answered["time"].endswith("Z") and answered["rating"] is None

    assert refused["id"] == no.log_id and refused["outcome"] == "refused" and refused["refused"] == 1
    assert refused["reason"] == no.reason and "no passage close enough" in refused["reason"]
    assert refused["answer"] == NOT_COVERED and refused["sources"] == "[]"

    assert failed["outcome"] == "failed" and failed["refused"] == 1
    assert "RuntimeError: the model crashed" in failed["reason"] and failed["question"] == ANSWERABLE
    # one random conversation per API call without one
    assert len({answered["conversation"], refused["conversation"], failed["conversation"]}) == 3


def test_a_conversation_id_groups_the_questions_of_a_conversation(bot):
    first = bot.answer(ANSWERABLE)
    second = bot.answer("Where does it help clients?", [(ANSWERABLE, first.text)],
                        conversation_id=first.conversation_id)
    assert second.conversation_id == first.conversation_id and second.log_id != first.log_id
    assert [r["conversation"] for r in logged(bot)] == [first.conversation_id] * 2


def test_a_stream_stopped_by_its_reader_is_logged_as_stopped(bot):
    answers = bot.stream(ANSWERABLE)
    partial = next(a for a in answers if a.text)
    answers.close()
    (row,) = logged(bot)
    assert row["outcome"] == "stopped" and row["id"] == partial.log_id and row["question"] == ANSWERABLE


def test_bad_questions_and_the_warm_up_are_not_logged(bot):
    with pytest.raises(BadQuestionError):
        bot.answer("   ")
    bot.warm()
    assert logged(bot) == []


def test_nothing_personal_is_stored(settings, corpus, tmp_path):
    secret_key, password = "sk-test-0123456789abcdef", "pw-very-secret-42"
    bot = Assistant(settings.replace(min_score=0.2, auth=f"teacher:{password}", openai_api_key=secret_key),
                    embeddings=FakeEmbeddings(), embedder_name="fake", llm=EchoChatModel())
    bot.index()
    bot.answer(f"Who is Braintrust Group? My key is {secret_key}, mail me at jane.doe@example.com")
    bot.answer(f"Is {password} the password of the course?")
    (first, second) = logged(bot)
    raw = (settings.index_dir / LOG_FILE).read_bytes()
    for personal in (secret_key, password, "jane.doe", "example.com", "teacher", "127.0.0.1"):
        assert personal.encode() not in raw
    assert "My key is ****, mail me at (an e-mail address)" in first["question"]
    assert "Is **** the password" in second["question"]
    # what a row holds, and nothing else (no address, no account)
    assert set(first) == {"id", "time", "course", "conversation", "question", "outcome", "refused", "reason",
                          "answer", "sources", "total_s", "first_token_s", "rating", "feedback_reason",
                          "feedback_time"}


def test_logging_off_writes_nothing(settings, corpus):
    off = Settings.from_env({"SCRUMBOT_LOG_QUESTIONS": "0"}, corpus_dir=corpus, index_dir=settings.index_dir,
                            min_score=0.2)
    assert off.log_questions is False
    bot = Assistant(off, embeddings=FakeEmbeddings(), embedder_name="fake", llm=EchoChatModel())
    bot.index()
    a = bot.answer(ANSWERABLE)
    bot.feedback(a.log_id, "down", "wrong")
    assert a.log_id == "" and a.conversation_id and not a.refused
    assert bot.question_log.flush() and not (off.index_dir / LOG_FILE).exists()


def test_eval_on_the_users_index_does_not_log(bot, tmp_path):
    from scrumbot.evaluate import evaluate

    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "a", "q": ANSWERABLE, "must": [["Braintrust"]]}) + "\n"
                     + json.dumps({"id": "b", "q": OUT_OF_SCOPE, "refuse": True}) + "\n")
    report = evaluate([cases], bot.settings, assistant=bot)
    assert len(report.systems["scrumbot"]) == 2
    assert logged(bot) == []
    assert bot.answer(ANSWERABLE).log_id  # the assistant itself still logs


def test_retention_deletes_old_rows_when_the_log_opens(bot):
    old = Row(id="old", course="scrumbot", conversation="c", question="old question", outcome="answered",
              refused=False, time=_iso(utcnow() - timedelta(days=91)))
    recent = Row(id="recent", course="scrumbot", conversation="c", question="recent question",
                 outcome="answered", refused=False, time=_iso(utcnow() - timedelta(days=89)))
    keep_all = QuestionLog(bot.settings.replace(log_retention_days=0))
    keep_all.record(old)
    keep_all.record(recent)
    assert keep_all.flush(10)
    assert [r["id"] for r in logged(bot)] == ["old", "recent"]

    fresh = Assistant(bot.settings, embeddings=bot.embeddings, embedder_name="fake-bag-of-words",
                      llm=EchoChatModel())  # default: 90 days
    fresh.answer(ANSWERABLE)
    assert [r["id"] for r in logged(fresh)][:1] == ["recent"] and len(logged(fresh)) == 2

    with pytest.raises(ValueError):
        Settings(log_retention_days=-1)


# -- a log that cannot be written never costs an answer ---------------------------------------------


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _can_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


def _answers_intact(bot: Assistant, caplog) -> None:
    t0 = time.perf_counter()
    first, second = bot.answer(ANSWERABLE), bot.answer(OUT_OF_SCOPE)
    assert time.perf_counter() - t0 < 1.5  # the log's trouble is the writer thread's
    assert not first.refused and "Braintrust Group" in first.text and second.refused
    bot.question_log.flush(15)
    warnings = [r for r in caplog.records if r.name == "scrumbot.insights" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not be written" in warnings[0].getMessage()


def test_a_read_only_log_leaves_answering_intact(bot, tmp_path, caplog):
    bot.answer(ANSWERABLE)
    path = bot.settings.index_dir / LOG_FILE
    assert len(logged(bot)) == 1
    if _can_mount(tmp_path):  # root: a read-only bind mount (file modes do not stop root)
        _mount("--bind", str(path), str(path))
        _mount("-o", "remount,ro,bind", str(path))
        undo = lambda: subprocess.run(["umount", str(path)], check=True)  # noqa: E731
    else:
        path.chmod(0o444)
        undo = lambda: path.chmod(0o644)  # noqa: E731
    try:
        bot.question_log._close()  # as a new server process would find it
        _answers_intact(bot, caplog)
        assert len(rows(path)) == 1
    finally:
        undo()
    bot.answer(ANSWERABLE)  # writable again: rows are written again
    assert len(logged(bot)) == 2
    assert "written again" in caplog.text


def test_a_full_disk_leaves_answering_intact(fake_assistant, settings, tmp_path, caplog):
    if not _can_mount(tmp_path):
        pytest.skip("needs root to mount a small tmpfs (the read-only and locked cases run anyway)")
    fake_assistant.index()
    built = settings.index_dir
    disk = tmp_path / "small-disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    try:
        shutil.copytree(built, disk / "index")
        bot = Assistant(settings.replace(index_dir=disk / "index", min_score=0.2), embeddings=FakeEmbeddings(),
                        embedder_name="fake-bag-of-words", llm=EchoChatModel())
        bot.answer(ANSWERABLE)  # the log exists, with a row
        assert len(logged(bot)) == 1
        filler = disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        assert shutil.disk_usage(disk).free < 65536
        _answers_intact(bot, caplog)
        assert len(rows(disk / "index" / LOG_FILE)) == 1
        filler.unlink()
        bot.answer(ANSWERABLE)
        assert len(logged(bot)) == 2
        bot.store._reopen()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_locked_log_leaves_answering_intact(bot, caplog):
    bot.answer(ANSWERABLE)
    assert len(logged(bot)) == 1
    lock = sqlite3.connect(bot.settings.index_dir / LOG_FILE, timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        _answers_intact(bot, caplog)
    finally:
        lock.rollback()
        lock.close()
    bot.answer(ANSWERABLE)
    assert len(logged(bot)) == 2  # the rows of the locked moment were dropped, later ones are written


def test_a_folder_that_is_not_an_index_is_not_written_into(settings, corpus, tmp_path, caplog):
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    log = QuestionLog(settings.replace(index_dir=foreign))
    log.record(Row(id="x", course="c", conversation="c", question="q", outcome="answered", refused=False))
    assert log.flush(10)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert "not a scrumbot index folder" in caplog.text


# -- feedback, the page ------------------------------------------------------------------------------


def test_feedback_is_stored_with_the_row_and_can_be_taken_back(bot):
    a = bot.answer(ANSWERABLE)
    bot.feedback(a.log_id, "down", "wrong: the dates\n are off")
    (row,) = logged(bot)
    assert row["rating"] == "down" and row["feedback_reason"] == "wrong: the dates are off" and row["feedback_time"]
    bot.feedback(a.log_id, None)
    assert logged(bot)[0]["rating"] is None
    with pytest.raises(BadQuestionError):
        bot.feedback(a.log_id, "meh")


class _Like:
    def __init__(self, index, liked):
        self.index, self.liked, self.value = index, liked, None


def test_the_page_keeps_one_conversation_and_attaches_thumbs_to_the_answer(bot):
    from scrumbot.ui import Sessions, make_feedback, make_respond

    sessions = Sessions()
    respond = make_respond(bot, sessions)
    *_, (_, chat, _) = list(respond(ANSWERABLE, []))
    *_, (_, chat, _) = list(respond(OUT_OF_SCOPE, chat))
    first, second = logged(bot)
    session = sessions.get(None)
    assert first["conversation"] == second["conversation"] == session.conversation
    assert session.log_ids == {1: first["id"], 3: second["id"]}

    on_like, send_reason = make_feedback(bot, sessions)
    form, pending = on_like(_Like(3, False), None)
    assert form["visible"] is True and pending == second["id"]
    form, *_ = send_reason(pending, "not in the course but should be", " volcanoes <b>please</b> ")
    assert form["visible"] is False
    form, pending = on_like(_Like(1, True), None)
    assert form["visible"] is False and pending is None
    first, second = logged(bot)
    assert first["rating"] == "up" and second["rating"] == "down"
    assert second["feedback_reason"] == "not in the course but should be: volcanoes <b>please</b>"

    # a new conversation gets a new id
    old = session.conversation
    session.new_conversation()
    list(respond(ANSWERABLE, []))
    assert logged(bot)[-1]["conversation"] == session.conversation != old


def test_the_footer_notice_shows_only_when_logging_is_on(bot):
    from scrumbot.ui import build_app

    def notices(app):
        return [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "log-notice"]

    (notice,) = notices(build_app(bot))
    assert notice.value == "Questions are logged for the trainer, without names."
    off = Assistant(bot.settings.replace(log_questions=False), embeddings=bot.embeddings, embedder_name="x",
                    llm=EchoChatModel())
    assert notices(build_app(off)) == []


def test_the_trainer_report_handler_refuses_students(bot):
    import gradio as gr

    from scrumbot.ui import make_trainer_report

    exposed = Assistant(bot.settings.replace(host="0.0.0.0", auth="teacher:pw-123456", trainers="teacher"),
                        embeddings=bot.embeddings, embedder_name="fake-bag-of-words", llm=EchoChatModel())
    exposed.answer(OUT_OF_SCOPE)
    report = make_trainer_report(exposed)
    with pytest.raises(gr.Error) as err:
        report("7d", None, gr.Request(username="student"))
    assert "trainer account" in err.value.message
    with pytest.raises(gr.Error):
        report("7d", None, None)  # no account at all
    page = report("7d", None, gr.Request(username="teacher"))
    assert "Gaps" in page and "Which volcano erupted near Reykjavik yesterday?" in page
    # on loopback without accounts the local user is the trainer
    assert "Trainer report" in make_trainer_report(bot)("all", None, gr.Request())


# -- the report ---------------------------------------------------------------------------------------


def test_report_totals_gaps_topics_and_disliked(bot):
    refused = [bot.answer(q) for q in ("Which volcano erupted near Reykjavik yesterday?",
                                       "Which volcano erupted in Iceland?", "How many penguins nest on glaciers?")]
    liked = bot.answer(ANSWERABLE)
    bot.feedback(liked.log_id, "up")
    disliked = bot.answer("Braintrust Group is a worldwide leader in what?")
    bot.feedback(disliked.log_id, "down", "unclear")
    assert [a.refused for a in (*refused, liked, disliked)] == [True, True, True, False, False]
    report = bot.report()
    t = report.totals
    assert (t["questions"], t["answered"], t["refused"], t["up"], t["down"]) == (5, 2, 3, 1, 1)
    assert t["p50_s"] is not None and t["conversations"] == 5
    # the two volcano questions share a topic; each gap has its nearest course passage
    assert report.gaps[0].size == 2 and "volcano" in report.gaps[0].label
    assert report.gaps[0].reasons == {"no passage close enough to the question": 2}
    assert sum(g.size for g in report.gaps) == 4  # 3 refused + 1 thumbs-down
    assert all(g.nearest and g.nearest["source"].endswith(".txt") for g in report.gaps)
    assert any(g.disliked == 1 and g.reasons == {"unclear": 1} for g in report.gaps)
    assert [tp.label for tp in report.topics] == [ANSWERABLE]
    assert report.disliked[0]["question"] == "Braintrust Group is a worldwide leader in what?"
    assert report.disliked[0]["sources"] and report.disliked[0]["feedback_reason"] == "unclear"


def test_report_html_escapes_what_students_typed(bot, tmp_path):
    bot.answer('<script>alert("x")</script> which volcano erupted?')
    page = bot.report().html()
    assert page.startswith("<!doctype html>") and "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "data:image/png;base64," in page  # the chart, embedded


def test_report_since_and_course(bot):
    bot.answer(OUT_OF_SCOPE)
    assert bot.report(since="1h").totals["questions"] == 1
    assert bot.report(course="another-course").totals["questions"] == 0
    with pytest.raises(ScrumbotError) as err:
        bot.report(since="last tuesday")
    assert "--since 7d" in err.value.hint
    assert parse_since("2w", utcnow()) < parse_since("7d", utcnow()) < parse_since("24h", utcnow())
    assert parse_since("2026-11-01").tzinfo is not None


def test_report_command_writes_html_json_and_csv(bot, tmp_path, monkeypatch):
    import scrumbot.api as api
    from scrumbot import cli

    bot.answer("=HYPERLINK(\"http://x\") volcano?")
    a = bot.answer(ANSWERABLE)
    bot.feedback(a.log_id, "down", "wrong")
    bot.question_log.flush()
    monkeypatch.setattr(api, "_huggingface_embeddings", lambda: bot.embeddings)
    monkeypatch.setattr(api, "EMBEDDER_NAME", bot.embedder_name)
    monkeypatch.setenv("SCRUMBOT_INDEX_DIR", str(bot.settings.index_dir))
    runner = CliRunner()
    html_file, csv_file = tmp_path / "r.html", tmp_path / "r.csv"
    out = runner.invoke(cli.main, ["report", "--since", "7d", "--html", str(html_file), "--csv", str(csv_file)])
    assert out.exit_code == 0, out.output
    assert "2 questions, 1 answered, 1 refused" in out.output and "Gaps" in out.output
    assert "Who is Braintrust Group?  [wrong]" in out.output
    assert "Trainer report" in html_file.read_text()
    lines = list(csv.reader(csv_file.open()))
    assert lines[0][:5] == ["id", "time", "course", "conversation", "question"] and len(lines) == 3
    assert lines[1][4].startswith("'=HYPERLINK")  # a spreadsheet shows it, does not run it
    data = json.loads(runner.invoke(cli.main, ["report", "--json"]).output)
    assert data["totals"]["questions"] == 2 and data["gaps"][0]["nearest"]["source"]
    bad = runner.invoke(cli.main, ["report", "--since", "yesterday-ish"])
    assert bad.exit_code == 1 and "--since 7d" in bad.output


def test_adjusted_rand_index():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0
    assert abs(adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) - 0.24242) < 1e-4  # sklearn's value


def test_build_report_without_rows_or_embedder():
    report = build_report([], course="c", since=None)
    assert report.totals["questions"] == 0 and report.gaps == [] and "No refused" in report.html()


@pytest.mark.slow  # two processes importing the whole stack
def test_scrumbot_ask_logs_its_question_before_the_process_exits(tmp_path):
    import os
    import sys

    from conftest import REPO

    env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(tmp_path / "index")}
    cli = [sys.executable, str(REPO / "tests" / "cli_with_fakes.py")]
    subprocess.run([*cli, "index", str(CORPUS)], env=env, check=True, capture_output=True, timeout=300)
    done = subprocess.run([*cli, "ask", "--llm", "extractive", ANSWERABLE], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = rows(tmp_path / "index" / LOG_FILE)
    assert row["question"] == ANSWERABLE and row["outcome"] == "answered" and row["answer"] in re.sub(r" \[\d+\]", "", done.stdout)  # without markers
