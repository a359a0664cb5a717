"""Incremental indexing through Assistant.index, over a real Chroma, with the fake embedder
that records every text it embeds (so "re-embedded only X" is checked, not assumed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import EchoChatModel, FakeEmbeddings
from scrumbot import Assistant
from scrumbot.errors import EmbedderMismatchError, IndexCorruptError
from scrumbot.store import MARKER

EMBEDDER = "fake-bag-of-words"


def paragraph(topic: str, n: int = 5) -> str:
    return " ".join(f"Sentence {i} is about {topic} in the course." for i in range(n))


def write_corpus(folder: Path, topics: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, topic in topics.items():
        (folder / name).write_text(f"{paragraph(topic)}\n\n{paragraph(topic + ' again')}\n")
    return folder


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs", {"velocity.txt": "team velocity",
                                            "backlog.md": "backlog refinement",
                                            "review.txt": "the sprint review"})


def make_assistant(settings, embeddings: FakeEmbeddings | None = None, name: str = EMBEDDER) -> Assistant:
    return Assistant(settings.replace(chunk_size=200, chunk_overlap=20, min_score=0.2),
                     embeddings=embeddings or FakeEmbeddings(), embedder_name=name, llm=EchoChatModel())


def rows(assistant: Assistant) -> list[tuple[str, str, dict]]:
    """(id, text, metadata) of every chunk in the Chroma collection, read from Chroma itself."""
    col = assistant.store.client().get_collection(assistant.settings.collection)
    data = col.get(include=["documents", "metadatas"])
    return list(zip(data["ids"], data["documents"], data["metadatas"]))


def texts_of(assistant: Assistant, source: str, root: Path | None = None) -> list[str]:
    return [t for _, t, m in rows(assistant)
            if m["source"] == source and (root is None or m["root"] == root.resolve().as_posix())]


def assert_no_duplicates(assistant: Assistant) -> None:
    all_rows = rows(assistant)
    ids = Counter(i for i, _, _ in all_rows)
    assert not [i for i, n in ids.items() if n > 1]
    places = Counter((m["root"], m["source"], m["chunk"]) for _, _, m in all_rows)
    assert not [p for p, n in places.items() if n > 1], "a chunk is in the index twice"


def test_first_run_embeds_everything_second_nothing(settings, docs: Path):
    emb = FakeEmbeddings()
    bot = make_assistant(settings, emb)
    first = bot.index([docs])

    stored = rows(bot)
    assert sorted(first.added) == ["backlog.md", "review.txt", "velocity.txt"]
    assert first.chunks_embedded == len(stored) == len(emb.embedded) > 3
    assert sorted(emb.embedded) == sorted(t for _, t, _ in stored)
    assert {m["source"] for _, _, m in stored} == {"backlog.md", "review.txt", "velocity.txt"}

    emb.embedded.clear()
    second = bot.index([docs])
    assert emb.embedded == []
    assert second.chunks_embedded == 0 and second.chunks_deleted == 0
    assert sorted(second.unchanged) == ["backlog.md", "review.txt", "velocity.txt"]
    assert second.added == second.updated == second.removed == []
    assert "Nothing changed" in second.summary()
    assert "Nothing changed" not in first.summary()
    assert rows(bot) == stored

    # a new process (new Assistant, new embedder object) sees the same: nothing to embed
    emb2 = FakeEmbeddings()
    third = make_assistant(settings, emb2).index([docs])
    assert emb2.embedded == [] and third.chunks_embedded == 0


def test_editing_one_file_reembeds_only_it(settings, docs: Path):
    emb = FakeEmbeddings()
    bot = make_assistant(settings, emb)
    bot.index([docs])
    before = {i: (t, m) for i, t, m in rows(bot)}
    old_velocity = texts_of(bot, "velocity.txt")

    (docs / "velocity.txt").write_text(paragraph("forecasting with yesterday's weather"))
    emb.embedded.clear()
    report = bot.index([docs])

    new_velocity = texts_of(bot, "velocity.txt")
    assert report.updated == ["velocity.txt"] and report.added == [] and report.removed == []
    assert sorted(report.unchanged) == ["backlog.md", "review.txt"]
    assert emb.embedded and sorted(emb.embedded) == sorted(new_velocity)
    assert all("yesterday's weather" in t for t in new_velocity)
    # the old chunks of the edited file are gone from Chroma, not just shadowed
    assert not [t for t in new_velocity if "team velocity" in t]
    assert report.chunks_deleted == len(old_velocity)
    # the other files' chunks were not touched (same ids, same text)
    after = {i: (t, m) for i, t, m in rows(bot)}
    others = {i: v for i, v in before.items() if v[1]["source"] != "velocity.txt"}
    assert {i: v for i, v in after.items() if v[1]["source"] != "velocity.txt"} == others
    assert_no_duplicates(bot)


def test_a_new_ingest_version_rechunks_every_file_once(settings, docs: Path, monkeypatch):
    """Files whose bytes did not change are re-chunked when ingest changed what it makes of
    them (an index built by an older scrumbot), and then never again."""
    import scrumbot.ingest
    import scrumbot.store

    current = scrumbot.ingest.INGEST_VERSION
    with monkeypatch.context() as older:  # the index as an older ingest wrote it
        older.setattr(scrumbot.ingest, "INGEST_VERSION", current - 1)
        older.setattr(scrumbot.store, "INGEST_VERSION", current - 1)
        emb = FakeEmbeddings()
        bot = make_assistant(settings, emb)
        bot.index([docs])
    old_ids = {i for i, _, _ in rows(bot)}
    assert {m["ingest_version"] for _, _, m in rows(bot)} == {current - 1}

    emb.embedded.clear()
    report = bot.index([docs])
    assert sorted(report.updated) == ["backlog.md", "review.txt", "velocity.txt"] and report.unchanged == []
    assert report.chunks_deleted == len(old_ids) and not old_ids & {i for i, _, _ in rows(bot)}
    assert {m["ingest_version"] for _, _, m in rows(bot)} == {current}
    assert sorted(emb.embedded) == sorted(t for _, t, _ in rows(bot))
    assert_no_duplicates(bot)

    emb.embedded.clear()
    again = bot.index([docs])
    assert emb.embedded == [] and again.chunks_embedded == again.chunks_deleted == 0
    assert sorted(again.unchanged) == ["backlog.md", "review.txt", "velocity.txt"]


def test_deleting_a_file_removes_its_chunks(settings, docs: Path):
    bot = make_assistant(settings)
    bot.index([docs])
    total = len(rows(bot))
    n_review = len(texts_of(bot, "review.txt"))
    assert n_review > 0

    (docs / "review.txt").unlink()
    report = bot.index([docs])

    assert report.removed == ["review.txt"] and report.chunks_deleted == n_review
    assert texts_of(bot, "review.txt") == []
    assert len(rows(bot)) == total - n_review
    assert "review.txt" not in bot.status()["index"]["sources"][docs.resolve().as_posix()]


def test_emptied_file_loses_its_chunks(settings, docs: Path):
    """An emptied file is skipped from now on; its old text must not keep answering questions."""
    bot = make_assistant(settings)
    bot.index([docs])
    (docs / "review.txt").write_text("")
    report = bot.index([docs])
    assert ("review.txt", "empty file") in report.skipped
    assert texts_of(bot, "review.txt") == []
    assert report.removed == ["review.txt"]


def test_file_turned_binary_loses_its_chunks(settings, docs: Path):
    bot = make_assistant(settings)
    bot.index([docs])
    (docs / "review.txt").write_bytes(b"\x00\x01\x02 no longer text")
    report = bot.index([docs])
    assert ("review.txt", "binary content in a text file") in report.skipped
    assert report.removed == ["review.txt"] and texts_of(bot, "review.txt") == []


def test_file_unreadable_for_now_keeps_its_chunks(settings, docs: Path, monkeypatch):
    """A passing read error (permissions, a network share) must not wipe a file from the index."""
    import scrumbot.ingest as ingest

    bot = make_assistant(settings)
    bot.index([docs])
    old = sorted(texts_of(bot, "review.txt"))
    (docs / "review.txt").write_text(paragraph("a change nobody can read yet"))
    real_load = ingest._load

    def flaky_load(path: Path):
        if path.name == "review.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path)

    monkeypatch.setattr(ingest, "_load", flaky_load)
    report = bot.index([docs])
    assert ("review.txt", "cannot read: Permission denied") in report.skipped
    assert report.removed == [] and sorted(texts_of(bot, "review.txt")) == old

    monkeypatch.setattr(ingest, "_load", real_load)
    assert bot.index([docs]).updated == ["review.txt"]
    assert all("nobody can read yet" in t for t in texts_of(bot, "review.txt"))


def test_binary_txt_is_reported_skipped(settings, docs: Path):
    (docs / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)))
    report = make_assistant(settings).index([docs])
    assert ("photo.txt", "binary content in a text file") in report.skipped
    assert "skipped photo.txt: binary content" in report.summary()
    assert sorted(report.added) == ["backlog.md", "review.txt", "velocity.txt"]


def test_second_folder_is_untouched_by_reindexing_the_first(settings, docs: Path, tmp_path: Path):
    other = write_corpus(tmp_path / "extra", {"velocity.txt": "kanban flow", "scaling.txt": "LeSS and SAFe"})
    emb = FakeEmbeddings()
    bot = make_assistant(settings, emb)
    bot.index([docs])
    bot.index([other])
    other_rows = sorted(r for r in rows(bot) if r[2]["root"] == other.resolve().as_posix())
    assert {m["source"] for _, _, m in other_rows} == {"velocity.txt", "scaling.txt"}

    # change and delete in the first folder, including a file with the same name as one in `other`
    (docs / "velocity.txt").write_text(paragraph("a new velocity text"))
    (docs / "backlog.md").unlink()
    emb.embedded.clear()
    report = bot.index([docs])

    assert report.updated == ["velocity.txt"] and report.removed == ["backlog.md"]
    assert sorted(r for r in rows(bot) if r[2]["root"] == other.resolve().as_posix()) == other_rows
    assert not [t for t in emb.embedded if "kanban flow" in t or "LeSS" in t]
    sources = bot.status()["index"]["sources"]
    assert set(sources) == {docs.resolve().as_posix(), other.resolve().as_posix()}
    assert_no_duplicates(bot)


def test_indexing_a_single_file(settings, docs: Path, tmp_path: Path):
    emb = FakeEmbeddings()
    bot = make_assistant(settings, emb)
    bot.index([docs])
    before_others = sorted(r for r in rows(bot) if r[2]["source"] != "review.txt")

    (docs / "review.txt").write_text(paragraph("the demo to stakeholders"))
    (docs / "velocity.txt").write_text(paragraph("changed, but not asked for"))
    emb.embedded.clear()
    report = bot.index([docs / "review.txt"])

    assert report.updated == ["review.txt"] and report.removed == [] and report.unchanged == []
    assert sorted(emb.embedded) == sorted(texts_of(bot, "review.txt"))
    assert all("demo to stakeholders" in t for t in texts_of(bot, "review.txt"))
    # indexing one file must not treat the folder's other files as deleted or changed
    assert sorted(r for r in rows(bot) if r[2]["source"] != "review.txt") == before_others

    # a lone file never indexed before: its source is its own name
    lone = tmp_path / "elsewhere" / "charter.md"
    lone.parent.mkdir()
    lone.write_text(paragraph("the team charter"))
    assert bot.index([lone]).added == ["charter.md"]
    assert texts_of(bot, "charter.md", root=lone.parent)
    assert_no_duplicates(bot)


def test_indexing_a_deleted_single_file_removes_it(settings, docs: Path):
    bot = make_assistant(settings)
    bot.index([docs])
    kept = sorted(r for r in rows(bot) if r[2]["source"] != "backlog.md")

    (docs / "backlog.md").unlink()
    report = bot.index([docs / "backlog.md"])

    assert report.removed == ["backlog.md"]
    assert texts_of(bot, "backlog.md") == []
    assert sorted(rows(bot)) == kept

    with pytest.raises(FileNotFoundError, match="never indexed"):
        bot.index([docs / "never-there.txt"])


def vector_folders(index_dir: Path) -> set[str]:
    """The HNSW folders in an embedded index (named by their segment's UUID)."""
    return {p.name for p in index_dir.iterdir() if p.is_dir() and p.name.count("-") == 4}


def test_rebuild_reembeds_everything(settings, docs: Path):
    emb = FakeEmbeddings()
    bot = make_assistant(settings, emb)
    bot.index([docs])
    n = len(rows(bot))
    emb.embedded.clear()

    report = bot.index([docs], rebuild=True)

    assert report.chunks_embedded == n == len(emb.embedded)
    assert sorted(report.added) == ["backlog.md", "review.txt", "velocity.txt"]
    assert len(rows(bot)) == n
    assert_no_duplicates(bot)
    # the collection it replaced leaves no vector folder behind (Chroma's delete_collection does)
    bot.index([docs], rebuild=True)
    assert len(vector_folders(settings.index_dir)) <= 1, vector_folders(settings.index_dir)


def test_no_duplicate_chunks_after_many_reindexes(settings, docs: Path):
    bot = make_assistant(settings)
    for step in range(3):
        bot.index([docs])
        (docs / "velocity.txt").write_text(paragraph(f"velocity version {step}"))
        bot.index([docs / "velocity.txt"])
        bot.index([docs])
    assert_no_duplicates(bot)
    # exactly the chunks the files produce now, nothing left over
    fresh = make_assistant(settings.replace(index_dir=settings.index_dir.parent / "fresh"))
    fresh.index([docs])
    assert sorted(t for _, t, _ in rows(bot)) == sorted(t for _, t, _ in rows(fresh))


def test_index_from_another_embedder_is_refused(settings, docs: Path):
    make_assistant(settings, name="embedder-a").index([docs])
    other = make_assistant(settings, name="embedder-b")

    with pytest.raises(EmbedderMismatchError, match="scrumbot index --rebuild") as err:
        other.answer("What is team velocity?")
    assert "embedder-a" in str(err.value) and "embedder-b" in str(err.value)
    with pytest.raises(EmbedderMismatchError):
        other.index([docs])

    # --rebuild is the way out, as the message says
    other.index([docs], rebuild=True)
    assert other.status()["index"]["embedder"] == "embedder-b"
    assert not other.answer("What is team velocity?").refused


@pytest.mark.parametrize("rebuild", [False, True])
def test_foreign_folder_as_index_dir_is_refused_and_kept(settings, docs: Path, tmp_path: Path, rebuild: bool):
    foreign = tmp_path / "my-thesis"
    (foreign / "chapters").mkdir(parents=True)
    (foreign / "thesis.tex").write_text("\\chapter{Intro}")
    (foreign / "chapters" / "one.tex").write_text("text")
    before = sorted((p.relative_to(foreign), p.read_bytes() if p.is_file() else None)
                    for p in foreign.rglob("*"))

    bot = make_assistant(settings.replace(index_dir=foreign))
    with pytest.raises(IndexCorruptError, match="not a scrumbot index"):
        bot.index([docs], rebuild=rebuild)

    after = sorted((p.relative_to(foreign), p.read_bytes() if p.is_file() else None)
                   for p in foreign.rglob("*"))
    assert after == before
    assert not (foreign / MARKER).exists()
