"""The index survives what happens to it: `scrumbot index` interrupted (Ctrl-C, SIGKILL) while
it embeds or while it writes, re-indexing while the app answers (threads, another process), two
index runs at once, damaged or foreign index folders, a full disk.

`scrumbot index` runs as a real process (tests/cli_with_fakes.py: the real CLI with the fake
embedder, slowed down so a signal lands mid-batch). "As before" is checked on what Chroma holds
(every id, text and metadata) and on the answers of an app reading that folder; "without
duplicates" by comparing, id for id, with a clean build of the same files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, EchoChatModel, FakeEmbeddings
from scrumbot import Assistant, Settings
from scrumbot.errors import DiskFullError, IndexCorruptError
from scrumbot.store import LAST_WRITE, UNFINISHED

CLI = [sys.executable, str(REPO / "tests" / "cli_with_fakes.py")]
EMBEDDER = "fake-bag-of-words"
# each has one best passage in version 1 (the fake embedder's ties would make order arbitrary)
QUESTIONS = ["What is team velocity?", "How does backlog refinement work?", "What happens in the sprint review?"]
NEW = "What is topic07 part03 about?"  # only version 2 answers this


def sentences(topic: str, n: int = 5) -> str:
    return " ".join(f"Sentence {i} is about {topic} in the course." for i in range(n))


def write_version(docs: Path, version: int) -> Path:
    """Version 1: three small files. Version 2: one changed, one deleted, 12 new (~290 chunks)."""
    shutil.rmtree(docs, ignore_errors=True)
    docs.mkdir(parents=True)
    for name, topic in (("velocity.txt", "team velocity"), ("backlog.txt", "backlog refinement"),
                        ("review.txt", "the sprint review")):
        (docs / name).write_text(f"{sentences(topic)}\n\n{sentences(topic + ' again')}\n")
    if version == 2:
        (docs / "velocity.txt").write_text(sentences("team velocity, measured anew"))
        (docs / "review.txt").unlink()
        for i in range(12):
            (docs / f"big{i:02}.txt").write_text("\n\n".join(sentences(f"topic{i:02} part{j:02}") for j in range(12)))
    return docs


def env_for(index_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SCRUMBOT_INDEX_DIR": str(index_dir), "SCRUMBOT_CHUNK_SIZE": "200",
            "SCRUMBOT_CHUNK_OVERLAP": "20", "SCRUMBOT_MIN_SCORE": "0.2", **extra}


def run_index(docs: Path, index_dir: Path, *more: str, **extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(CLI + ["index", *more, str(docs)], env=env_for(index_dir, **extra),
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def snapshot(index_dir: Path) -> list[tuple[str, str, str]]:
    """Every (id, text, metadata) in the collection, read by a fresh client that is closed again."""
    import chromadb

    client = chromadb.PersistentClient(str(index_dir))
    try:
        data = client.get_collection("scrumbot").get(include=["documents", "metadatas"])
    finally:
        client.close()
    return sorted(zip(data["ids"], data["documents"], (json.dumps(m, sort_keys=True) for m in data["metadatas"])))


def reader(index_dir: Path) -> Assistant:
    settings = Settings.from_env(index_dir=index_dir, chunk_size=200, chunk_overlap=20, min_score=0.2)
    return Assistant(settings, embeddings=FakeEmbeddings(), embedder_name=EMBEDDER, llm=EchoChatModel())


def answers(index_dir: Path) -> list[tuple[str, bool, list[str]]]:
    bot = reader(index_dir)
    out = [(a.text, a.refused, [s.source for s in a.sources]) for a in map(bot.answer, QUESTIONS)]
    bot.store._reopen()  # close its client: the next reader must read the folder afresh
    return out


def assert_same_as_clean(index_dir: Path, clean: list) -> None:
    rows = snapshot(index_dir)
    ids = Counter(i for i, _, _ in rows)
    assert not [i for i, n in ids.items() if n > 1], "an id twice"
    places = Counter((json.loads(m)["source"], json.loads(m)["chunk"]) for _, _, m in rows)
    assert not [p for p, n in places.items() if n > 1], "a chunk twice"
    assert rows == clean


def clean_build(docs: Path, index_dir: Path) -> list:
    """What a clean build of `docs` holds (ids hash the text and metadata, folder path included,
    so the clean build reads the same folder)."""
    bot = reader(index_dir)
    bot.index([docs])
    bot.store._reopen()
    return snapshot(index_dir)


def start_index(docs: Path, index_dir: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["index", str(docs)], env=env_for(index_dir, **extra), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> list[str]:
    """Read the process's stderr until a line starts with `prefix`; returns the lines read."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        seen.append(line.rstrip())
        if line.startswith(prefix):
            return seen
        assert time.monotonic() < deadline, f"no {prefix!r} within {timeout}s: {seen[-5:]}"
    pytest.fail(f"the process ended before printing {prefix!r}: {seen[-10:]}")


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, rest


# -- interrupted indexing ------------------------------------------------------------------------


@pytest.fixture
def previous(tmp_path):
    """An index of version 1 and what it holds and answers; the folder switched to version 2,
    and what a clean build of version 2 holds."""
    docs, index_dir = tmp_path / "docs", tmp_path / "index"
    assert run_index(write_version(docs, 1), index_dir).returncode == 0
    before = snapshot(index_dir), answers(index_dir)
    write_version(docs, 2)
    return docs, index_dir, before, clean_build(docs, tmp_path / "clean")


@pytest.mark.slow  # three CLI processes
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_mid_batch_the_index_answers_as_before_and_the_next_run_finishes(previous, sig):
    docs, index_dir, (rows_before, answers_before), clean_v2 = previous
    # 290 chunks: a batch of 256, then one of 34 that takes ~1 s, inside which the signal lands
    proc = start_index(docs, index_dir, SCRUMBOT_TEST_EMBED_DELAY="0.03")
    wait_for(proc, "embedded 256")
    proc.send_signal(sig)
    code, rest = finish(proc)

    if sig == signal.SIGINT:
        assert code == 130 and "Interrupted. Nothing was left half-written" in rest, rest
        assert "Traceback" not in rest
    else:
        assert code == -signal.SIGKILL
    assert snapshot(index_dir) == rows_before
    assert answers(index_dir) == answers_before
    assert not any(s.source.startswith("big") for s in reader(index_dir).answer(NEW).sources)
    assert not (index_dir / UNFINISHED).exists()

    again = run_index(docs, index_dir)
    assert again.returncode == 0
    assert_same_as_clean(index_dir, clean_v2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_while_writing_the_next_run_repairs_without_duplicates(previous):
    """SIGKILL cannot be held: a kill between the write of the new chunks and the removal of the
    old leaves both (measured here, reported as such), and a journal that the next run redoes."""
    docs, index_dir, (rows_before, _), clean_v2 = previous
    gate = index_dir.parent / "gate"
    gate.touch()
    proc = start_index(docs, index_dir, SCRUMBOT_TEST_WRITE_GATE=str(gate))
    wait_for(proc, "wrote ")
    proc.kill()
    finish(proc)

    mixed = snapshot(index_dir)
    assert set(rows_before) <= set(mixed) and set(clean_v2) - set(rows_before) <= set(mixed)
    assert json.loads((index_dir / UNFINISHED).read_text())["sources"]

    again = run_index(docs, index_dir)
    assert again.returncode == 0
    assert_same_as_clean(index_dir, clean_v2)
    assert not (index_dir / UNFINISHED).exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_while_writing_waits_until_the_write_is_whole(previous):
    docs, index_dir, _, clean_v2 = previous
    gate = index_dir.parent / "gate"
    gate.touch()
    proc = start_index(docs, index_dir, SCRUMBOT_TEST_WRITE_GATE=str(gate))
    wait_for(proc, "wrote ")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # held: it does not stop in the middle of its writes
    gate.unlink()
    code, rest = finish(proc)
    assert code == 130 and "Interrupted" in rest and "Traceback" not in rest
    assert_same_as_clean(index_dir, clean_v2)  # the write it was in the middle of was completed
    assert not (index_dir / UNFINISHED).exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_index_run_at_the_same_time_is_refused(previous):
    docs, index_dir, _, clean_v2 = previous
    gate = index_dir.parent / "gate"
    gate.touch()
    first = start_index(docs, index_dir, SCRUMBOT_TEST_WRITE_GATE=str(gate))
    wait_for(first, "wrote ")  # it holds the index, in the middle of its run
    second = run_index(docs, index_dir)
    assert second.returncode == 1
    assert f"Another `scrumbot index` (process {first.pid}) is updating" in second.stderr
    assert "Wait for it to finish" in second.stderr
    gate.unlink()
    code, _ = finish(first)
    assert code == 0
    assert_same_as_clean(index_dir, clean_v2)


# -- re-indexing while the app answers ----------------------------------------------------------------


class SlowFakeEmbeddings(FakeEmbeddings):
    def embed_documents(self, texts):
        time.sleep(0.008 * len(texts))  # indexing must last long enough to answer during it
        return super().embed_documents(texts)


def keep_asking(bot: Assistant, stop: threading.Event, log: list, errors: list) -> None:
    while not stop.is_set():
        for question in QUESTIONS:
            try:
                asked = time.monotonic()
                a = bot.answer(question)
                log.append((time.monotonic(), question, a.refused, [s.source for s in a.sources], asked))
            except Exception as err:  # the test fails on any
                errors.append(repr(err))


@pytest.mark.timeout(120)
def test_reindexing_in_the_serving_process_keeps_answers_coming(tmp_path):
    docs, index_dir = tmp_path / "docs", tmp_path / "index"
    write_version(docs, 1)
    settings = Settings.from_env(index_dir=index_dir, chunk_size=200, chunk_overlap=20, min_score=0.2)
    bot = Assistant(settings, embeddings=SlowFakeEmbeddings(), embedder_name=EMBEDDER, llm=EchoChatModel())
    bot.index([docs])
    assert not any(s.source.startswith("big") for s in bot.answer(NEW).sources)

    stop, log, errors = threading.Event(), [], []
    askers = [threading.Thread(target=keep_asking, args=(bot, stop, log, errors)) for _ in range(3)]
    for t in askers:
        t.start()
    time.sleep(0.3)
    write_version(docs, 2)
    started = time.monotonic()
    report = bot.index([docs])  # the same Assistant the askers use
    ended = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for t in askers:
        t.join(30)

    assert errors == []
    during = [entry for entry in log if started <= entry[0] <= ended]
    assert ended - started > 1 and len(during) > 10  # answers kept coming while it indexed
    assert len(report.added) == 12 and report.removed == ["review.txt"]
    a = bot.answer(NEW)
    assert not a.refused and a.sources[0].source == "big07.txt"
    # a question asked once the index is written never finds the removed file (one asked while
    # it was written may, and may finish after it)
    assert "review.txt" not in {s for entry in log if entry[4] > ended for s in entry[3]}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_reindexing_from_another_process_while_serving(tmp_path):
    """Chroma's embedded client keeps its vectors in memory: after another process writes, it
    goes on searching the old ones (deleted chunks come back as missing documents, new ones are
    never found). The store re-opens the index when the folder's LAST_WRITE stamp moves."""
    docs, index_dir = tmp_path / "docs", tmp_path / "index"
    assert run_index(write_version(docs, 1), index_dir).returncode == 0
    bot = reader(index_dir)
    assert not any(s.source.startswith("big") for s in bot.answer(NEW).sources)
    stamp = (index_dir / LAST_WRITE).stat().st_mtime_ns

    stop, log, errors = threading.Event(), [], []
    askers = [threading.Thread(target=keep_asking, args=(bot, stop, log, errors)) for _ in range(2)]
    for t in askers:
        t.start()
    write_version(docs, 2)
    writer = run_index(docs, index_dir, SCRUMBOT_TEST_EMBED_DELAY="0.002")
    time.sleep(0.5)
    stop.set()
    for t in askers:
        t.join(30)

    assert writer.returncode == 0, writer.stderr
    assert errors == [] and len(log) > 20
    assert (index_dir / LAST_WRITE).stat().st_mtime_ns != stamp
    a = bot.answer(NEW)  # the new content, from the same app
    assert not a.refused and a.sources[0].source == "big07.txt"
    assert not any("review.txt" in entry[3] for entry in log[-8:])  # the deleted file is gone
    assert "review.txt" not in [s.source for s in bot.answer("What happens in the sprint review?").sources]


# -- damaged, foreign, misplaced index folders ---------------------------------------------------------


@pytest.fixture(scope="module")
def big_index(tmp_path_factory) -> Path:
    """An index big enough (1,200 chunks) that Chroma has written its vector files to disk."""
    root = tmp_path_factory.mktemp("big")
    docs = root / "docs"
    docs.mkdir()
    for i in range(50):
        (docs / f"part{i:02}.txt").write_text("\n\n".join(sentences(f"subject{i:02} point{j:02}") for j in range(24)))
    assert run_index(docs, root / "index").returncode == 0
    segments = [p for p in (root / "index").iterdir() if (p / "data_level0.bin").exists()]
    assert segments and (segments[0] / "data_level0.bin").stat().st_size > 100_000
    return root


def damage(index_dir: Path, how: str) -> None:
    segment = next(p for p in index_dir.iterdir() if (p / "header.bin").exists())
    if how == "database overwritten":
        (index_dir / "chroma.sqlite3").write_bytes(os.urandom(300_000))
    elif how == "database cut short":
        data = (index_dir / "chroma.sqlite3").read_bytes()
        (index_dir / "chroma.sqlite3").write_bytes(data[: len(data) // 3])
    elif how == "vector file cut short":  # this one crashes Chroma's native code if opened
        data = (segment / "data_level0.bin").read_bytes()
        (segment / "data_level0.bin").write_bytes(data[:1000])
    elif how == "vector files overwritten":
        for f in segment.iterdir():
            f.write_bytes(os.urandom(max(f.stat().st_size, 100)))
    elif how == "vector files deleted":
        shutil.rmtree(segment)
    elif how == "records overwritten":
        (index_dir / "records.sqlite").write_bytes(os.urandom(20_000))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["database overwritten", "vector file cut short",
                                 "vector files overwritten", "vector files deleted", "records overwritten"])
def test_a_damaged_index_says_so_and_rebuild_fixes_it(big_index, tmp_path, how):
    index_dir = tmp_path / "index"
    shutil.copytree(big_index / "index", index_dir)
    docs = big_index / "docs"
    damage(index_dir, how)

    # `index` for the records (the app never reads them), `ask` for everything else
    args = ["index", str(docs)] if how == "records overwritten" else ["ask", "What is subject07 point03 about?"]
    broken = subprocess.run(CLI + args, env=env_for(index_dir, SCRUMBOT_LLM="extractive"), capture_output=True,
                            text=True, timeout=120)
    assert broken.returncode == 1, (broken.returncode, broken.stdout, broken.stderr)  # not a crash (-11)
    assert "damaged" in broken.stderr or "could not be opened" in broken.stderr, broken.stderr
    assert "Run `scrumbot index --rebuild` to build it again." in broken.stderr
    assert "Traceback" not in broken.stderr

    fixed = run_index(docs, index_dir, "--rebuild")
    assert fixed.returncode == 0, fixed.stderr
    assert reader(index_dir).answer("What is subject07 point03 about?").sources[0].source == "part07.txt"


def test_an_index_folder_that_is_a_file_or_foreign_is_refused_untouched(tmp_path):
    docs = write_version(tmp_path / "docs", 1)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("my notes")
    with pytest.raises(IndexCorruptError, match="is a file, not an index folder") as err:
        reader(a_file).index([docs])
    assert "SCRUMBOT_INDEX_DIR" in err.value.hint and a_file.read_text() == "my notes"

    chroma_of_another_app = tmp_path / "other-app"
    chroma_of_another_app.mkdir()
    (chroma_of_another_app / "chroma.sqlite3").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(IndexCorruptError, match="not a scrumbot index"):
        reader(chroma_of_another_app).answer("What is team velocity?")
    with pytest.raises(IndexCorruptError, match="not a scrumbot index"):
        reader(chroma_of_another_app).index([docs], rebuild=True)  # --rebuild deletes nothing of theirs
    assert sorted(p.name for p in chroma_of_another_app.iterdir()) == ["chroma.sqlite3"]


@pytest.mark.slow  # loads the real embedder
@pytest.mark.timeout(300)
def test_an_index_built_by_another_embedder_names_the_fix(tmp_path):
    docs, index_dir = write_version(tmp_path / "docs", 1), tmp_path / "index"
    assert run_index(docs, index_dir).returncode == 0
    real = subprocess.run([sys.executable, "-m", "scrumbot.cli", "ask", "What is team velocity?"],
                          env=env_for(index_dir), capture_output=True, text=True, timeout=240)
    assert real.returncode == 1 and "Traceback" not in real.stderr
    assert f"was built with the embedder '{EMBEDDER}'" in real.stderr
    assert "Run `scrumbot index --rebuild` to re-embed everything with the current embedder." in real.stderr


# -- a full disk ----------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs), when this test runs as root and may mount one."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root; test_full_disk_at_the_write_boundary covers it")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected ENOSPC test covers it")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.timeout(120)
def test_a_write_the_disk_cannot_hold_is_refused_before_it_starts(tiny_disk, tmp_path):
    docs, index_dir = tmp_path / "docs", tiny_disk / "index"
    write_version(docs, 1)
    reader(index_dir).index([docs])
    rows_before, answers_before = snapshot(index_dir), answers(index_dir)
    write_version(docs, 2)
    for i in range(12, 40):  # more than the disk holds
        (docs / f"big{i:02}.txt").write_text("\n\n".join(sentences(f"topic{i:02} part{j:02}") for j in range(12)))

    bot = reader(index_dir)
    with pytest.raises(DiskFullError) as err:
        bot.index([docs])
    assert f"The disk holding the index ({index_dir}) has" in err.value.message
    assert "Nothing was written: the index answers as before." in err.value.message
    assert "then run `scrumbot index` again" in err.value.hint
    bot.store._reopen()
    assert snapshot(index_dir) == rows_before
    assert answers(index_dir) == answers_before

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    report = reader(index_dir).index([docs])
    assert len(report.added) == 40
    assert_same_as_clean(index_dir, clean_build(docs, tmp_path / "clean"))


@pytest.mark.slow  # CLI processes
@pytest.mark.timeout(300)
def test_the_disk_filling_up_during_the_write(tiny_disk, tmp_path):
    """The room check passed, then another program filled the disk: Chroma's real failure on a
    real full filesystem, in a process of its own (so a hang would be a failed test, not a stuck
    run): a clear message, the index as it was, and after freeing space a clean next run."""
    docs, index_dir, filler = tmp_path / "docs", tiny_disk / "index", tiny_disk / "filler"
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)  # room enough, at first
    assert run_index(write_version(docs, 1), index_dir).returncode == 0
    rows_before = snapshot(index_dir)
    write_version(docs, 2)

    full = run_index(docs, index_dir, SCRUMBOT_TEST_FILL_DISK=str(filler))
    assert "disk filled" in full.stderr
    assert full.returncode == 1, full.stdout
    assert "is full" in full.stderr and "then run `scrumbot index` again" in full.stderr, full.stderr
    filler.unlink()
    assert snapshot(index_dir) == rows_before

    again = run_index(docs, index_dir)
    assert again.returncode == 0, again.stderr
    assert_same_as_clean(index_dir, clean_build(docs, tmp_path / "clean"))


def test_full_disk_at_the_write_boundary(tmp_path, monkeypatch):
    """The same through an injected ENOSPC where Chroma writes chunks (for machines that cannot
    mount a small filesystem): a clear message, the index as it was, and a clean next run."""
    from chromadb.api.models.Collection import Collection

    docs, index_dir = tmp_path / "docs", tmp_path / "index"
    write_version(docs, 1)
    reader(index_dir).index([docs])
    rows_before = snapshot(index_dir)
    write_version(docs, 2)

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Collection, "upsert", no_space)
        with pytest.raises(DiskFullError, match="is full"):
            reader(index_dir).index([docs])
    assert snapshot(index_dir) == rows_before
    assert len(reader(index_dir).index([docs]).added) == 12
    assert_same_as_clean(index_dir, clean_build(docs, tmp_path / "clean"))
