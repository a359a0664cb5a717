"""Several courses in one install, and documents added and removed through the API the page
uses: real Chroma and SQLite, the fake embedder and echo model of conftest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import FakeEmbeddings
from scrumbot.errors import ConfigError
from scrumbot.config import Settings
from test_store import make_assistant, paragraph, vector_folders, write_corpus


@pytest.fixture
def alpha_docs(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "alpha", {"kanban.txt": "kanban boards and work in progress limits"})


@pytest.fixture
def beta_docs(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "beta", {"estimation.txt": "planning poker estimation sessions"})


def record_rows(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return db.execute("SELECT namespace, group_id FROM upsertion_record").fetchall()


def test_courses_are_isolated(settings, alpha_docs, beta_docs):
    default = make_assistant(settings)
    default.index([beta_docs])
    alpha = default.for_course("alpha")
    alpha.index([alpha_docs])

    in_alpha = alpha.answer("What are kanban boards and work in progress limits?")
    assert not in_alpha.refused and {s.source for s in in_alpha.sources} == {"kanban.txt"}
    # the other course's topic, asked in alpha: never answered from beta's file
    crossed = alpha.answer("How do planning poker estimation sessions work?")
    assert all(s.source == "kanban.txt" for s in crossed.sources)
    in_default = default.answer("How do planning poker estimation sessions work?")
    assert not in_default.refused and {s.source for s in in_default.sources} == {"estimation.txt"}

    listed = {c["course"]: c for c in default.courses()}
    assert listed["default"]["collection"] == settings.collection and listed["default"]["documents"] == 1
    assert listed["alpha"]["collection"] == f"{settings.collection}.alpha" and listed["alpha"]["documents"] == 1
    assert listed["alpha"]["chunks"] == alpha.store.count() > 0


def test_the_default_course_keeps_the_names_an_index_had_before_courses(settings, beta_docs):
    """An index folder written before courses existed is the default course: same collection,
    same records file and namespace, so its chunks answer and re-indexing embeds nothing."""
    first = make_assistant(settings)
    first.index([beta_docs])
    names = {p.name for p in settings.index_dir.iterdir()}
    assert Settings().course_collection() == "scrumbot"  # the name every index had before courses
    assert "records.sqlite" in names and not any(n.startswith("records-") for n in names)
    assert first.store.client().get_collection(settings.collection).count() == first.store.count()
    root = beta_docs.resolve().as_posix()
    assert {ns for ns, _ in record_rows(settings.index_dir / "records.sqlite")} == {f"{settings.collection}:{root}"}

    embeddings = FakeEmbeddings()
    fresh = Settings.from_env(index_dir=settings.index_dir, chroma_url=settings.chroma_url,
                              collection=settings.collection)
    again = make_assistant(fresh, embeddings)
    assert again.course == "default"
    report = again.index([beta_docs])
    assert report.unchanged == ["estimation.txt"] and embeddings.embedded == []
    assert not again.answer("How do planning poker estimation sessions work?").refused


def test_removing_a_course_deletes_its_chunks_records_and_files(settings, alpha_docs, beta_docs, tmp_path):
    default = make_assistant(settings)
    default.index([beta_docs])
    alpha = default.for_course("alpha")
    alpha.index([alpha_docs])
    upload = tmp_path / "upload.md"
    upload.write_text("# Retrospectives\n\n" + paragraph("sprint retrospectives"))
    alpha.add_files([("upload.md", upload)])
    records = settings.index_dir / "records-alpha.sqlite"
    assert record_rows(records) and settings.course_files("alpha").joinpath("upload.md").exists()

    held = default.remove_course("alpha")
    assert held["documents"] == 2 and held["chunks"] > 0
    assert [c["course"] for c in default.courses()] == ["default"]
    assert not records.exists() and not settings.course_files("alpha").exists()
    # the default course is untouched, and the name can start afresh
    assert not default.answer("How do planning poker estimation sessions work?").refused
    assert default.for_course("alpha").store.count() == 0


def vector_segments(index_dir: Path) -> set[str]:
    import contextlib

    with contextlib.closing(sqlite3.connect(f"file:{index_dir / 'chroma.sqlite3'}?mode=ro", uri=True)) as db:
        return {r[0] for r in db.execute("SELECT id FROM segments WHERE scope = 'VECTOR'")}


def times_open(path: Path) -> int:
    """How many file descriptors of this process point at `path` (other tests' files may be open too)."""
    import os

    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve())
        except OSError:
            pass
    return count


def test_a_course_created_and_removed_again_and_again_leaves_nothing_behind(settings, alpha_docs, beta_docs):
    """The page's process lives long: courses come and go. Chroma leaves a deleted collection's
    vector folder on disk (chroma-core/chroma#3296) and every course had its own question-log
    writer with its own connection; neither may pile up."""
    import threading

    writers_before = sum(t.name == "scrumbot-question-log" for t in threading.enumerate())  # other tests'
    default = make_assistant(settings)
    default.index([beta_docs])
    default.answer("How do planning poker estimation sessions work?")
    for _ in range(4):
        alpha = default.for_course("alpha")
        alpha.index([alpha_docs])
        assert not alpha.answer("What are kanban boards and work in progress limits?").refused
        default.remove_course("alpha")
    default.question_log.flush()

    index_dir = settings.index_dir
    if not settings.chroma_url:  # (a Chroma server keeps its folders in its own data directory)
        assert vector_folders(index_dir) <= vector_segments(index_dir)  # no folder of a deleted course
        assert len(vector_folders(index_dir)) <= 1  # the default course's
    assert times_open(index_dir / "questions.sqlite") == 1
    assert sum(t.name == "scrumbot-question-log" for t in threading.enumerate()) <= writers_before + 1
    # and what is left still works: the default course answers, a new course starts empty
    assert not default.answer("How do planning poker estimation sessions work?").refused
    assert default.for_course("alpha").store.count() == 0


@pytest.mark.parametrize("name", ["../x", "Alpha", "a b", "", "x" * 41, "-x", "a.b"])
def test_a_course_name_that_is_unsafe_is_refused_with_the_rule(settings, name):
    with pytest.raises(ConfigError, match="lowercase letters, digits"):
        make_assistant(settings).for_course(name or " ")
    with pytest.raises(ValueError, match="cannot name a course"):
        Settings(course=name)


def test_upload_indexes_lists_and_removes_a_document(settings, tmp_path):
    assistant = make_assistant(settings).for_course("uploads")
    sent = tmp_path / "browser-temp" / "Team Charter.md"
    sent.parent.mkdir()
    sent.write_text("# Team charter\n\n" + paragraph("the team charter and working agreements"))
    seen: list[tuple[int, int]] = []
    report = assistant.add_files([("Team Charter.md", sent)], progress=lambda d, t: seen.append((d, t)))
    assert report.added == ["Team Charter.md"] and report.chunks_embedded > 0 and seen
    stored = settings.course_files("uploads") / "Team Charter.md"
    assert stored.read_bytes() == sent.read_bytes()

    docs = assistant.documents()
    assert [(d["source"], d["uploaded"]) for d in docs] == [("Team Charter.md", True)]
    assert docs[0]["chunks"] == assistant.store.count() and docs[0]["indexed_at"] > 0
    answer = assistant.answer("What are the team charter and working agreements?")
    assert {s.source for s in answer.sources} == {"Team Charter.md"}

    removed = assistant.remove_documents([docs[0]["source_id"]])
    assert removed.removed == ["Team Charter.md"] and removed.chunks_deleted == docs[0]["chunks"]
    assert assistant.store.count() == 0 and assistant.documents() == []
    assert not stored.exists()
    assert record_rows(assistant.store.records_path) == []


def test_uploads_with_unsafe_names_or_too_big_or_unsupported_are_refused(settings, tmp_path):
    assistant = make_assistant(settings.replace(max_file_mb=1)).for_course("uploads")
    body = tmp_path / "body.txt"
    body.write_text(paragraph("safe uploads"))
    big = tmp_path / "big.txt"
    big.write_text("word " * 300_000)  # 1.5 MB
    report = assistant.add_files([
        ("../../etc/passwd", body),
        ("/etc/cron.d/evil.txt", body),
        ("nul\x00byte.txt", body),
        ("CON.txt", body),
        ("program.exe", body),
        ("big.txt", big),
        ("..\\..\\windows\\notes.txt", body),
    ])
    reasons = dict(report.skipped)
    assert "unsupported type (none)" in reasons["../../etc/passwd"]
    assert "NUL byte" in reasons["nul\\0byte.txt"]
    assert "reserved device name" in reasons["CON.txt"]
    assert "unsupported type .exe" in reasons["program.exe"]
    assert "larger than the 1 MB limit" in reasons["big.txt"]
    # a path is reduced to its base name inside the course's folder, and the summary says so
    assert sorted(report.added) == ["evil.txt", "notes.txt"]
    assert "saved as evil.txt" in report.summary() and "skipped big.txt" in report.summary()
    folder = settings.course_files("uploads")
    assert sorted(p.name for p in folder.iterdir()) == ["evil.txt", "notes.txt"]
    assert not (tmp_path / "etc").exists() and not Path("/etc/cron.d/evil.txt").exists()


def test_example_questions_come_from_the_course_and_are_answerable(settings, tmp_path):
    docs = tmp_path / "handbook"
    docs.mkdir()
    (docs / "handbook.md").write_text(
        "# Definition of Done\n\nThe Definition of Done is the checklist every increment meets.\n\n"
        "# How are sprints planned?\n\nSprints are planned in sprint planning by the whole team.\n\n"
        "# Quantum chromodynamics\n")  # a heading with nothing under it: no passage answers it
    assistant = make_assistant(settings)
    assistant.index([docs])
    first = assistant.example_questions()
    assert "What is Definition of Done?" in first and "How are sprints planned?" in first
    assert "What is Quantum chromodynamics?" not in first  # refused by the pipeline: left out
    for q in first:
        assert not assistant.answer(q).refused
    # once per index version: asked again, or by the next run of the app, nothing is answered again
    assistant.answer = None  # would fail if called
    assert assistant.example_questions() == first
    restarted = make_assistant(settings)
    restarted.answer = None
    assert restarted.example_questions() == first
    # a changed course gets its examples worked out again
    (docs / "more.md").write_text("# Sprint review\n\nThe sprint review inspects the increment with stakeholders.\n")
    restarted.index([docs])
    del restarted.answer
    assert "What is Sprint review?" in restarted.example_questions()


def test_questions_from_headings_read_as_questions_and_take_turns_between_files():
    from langchain_core.documents import Document

    from scrumbot.api import questions_from_headings

    def chunk(source, heading):
        return Document(page_content="x", metadata={"source_id": source, "heading": heading})

    chunks = [chunk("a", "The Sprint Retrospective"), chunk("a", "Who attends and how long it takes"),
              chunk("a", "The Sprint Retrospective"), chunk("b", "Kanban board"),
              chunk("b", "This heading is far too long to be a topic anyone would ask about."), chunk("b", "")]
    assert questions_from_headings(chunks) == [
        "What is the Sprint Retrospective?", "What is Kanban board?", "Who attends and how long it takes?"]
