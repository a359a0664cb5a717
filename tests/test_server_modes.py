"""Server modes against the real servers on 127.0.0.1: a Chroma server (`chroma run`) instead of
the embedded store, and llama.cpp's OpenAI-compatible server (SCRUMBOT_LLM=openai) instead of
the in-process model. Also: what happens when they are down, freeze, die mid-answer or are
given a wrong model name, and how one app process queues concurrent questions."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from _pytest.fixtures import FixtureFunctionDefinition

import test_api
import test_store
from conftest import FakeEmbeddings
from scrumbot import Settings
from scrumbot.errors import IndexMissingError
from servers import chroma_server

pytestmark = pytest.mark.slow


# -- the Chroma server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    """One `chroma run` for the module; every test gets its own collection in it."""
    root = tmp_path_factory.mktemp("chroma")
    with chroma_server(root / "data", root / "chroma.log") as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, chroma) -> Settings:
    """Overrides conftest's `settings`: the same tests, with the index in the Chroma server."""
    return Settings.from_env(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index",
                             chroma_url=chroma.url, collection=f"t-{uuid.uuid4().hex[:12]}")


# The embedded store's own tests, run again here against the server (the overriding `settings`
# fixture above is what they get). Only tests about the local index folder itself are left out.
EMBEDDED_ONLY = {
    "test_foreign_folder_as_index_dir_is_refused_and_kept",  # the server has no index folder to guard
}
for _module in (test_store, test_api):
    for _name, _obj in vars(_module).items():
        is_test = _name.startswith("test_") and callable(_obj)
        is_fixture = isinstance(_obj, FixtureFunctionDefinition) and _name != "settings"
        if (is_test and _name not in EMBEDDED_ONLY) or is_fixture:
            globals()[_name] = _obj


def chroma_rows(url: str, collection: str) -> list[tuple[str, str, dict]]:
    """(id, text, metadata) of every chunk, read straight from the server by a client of our own."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    host, port = url.removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port), settings=ChromaSettings(anonymized_telemetry=False))
    data = client.get_collection(collection).get(include=["documents", "metadatas"])
    return list(zip(data["ids"], data["documents"], data["metadatas"]))


def test_the_index_lives_in_the_server_not_on_disk(settings, docs: Path):
    bot = test_store.make_assistant(settings)
    report = bot.index([docs])

    stored = chroma_rows(settings.chroma_url, settings.collection)
    assert report.chunks_embedded == len(stored) > 3
    assert {m["source"] for _, _, m in stored} == {"backlog.md", "review.txt", "velocity.txt"}
    # only LangChain's record manager stays local: no Chroma files, no index marker
    assert sorted(p.name for p in settings.index_dir.iterdir()) == ["records.sqlite"]
    status = bot.status()["index"]
    assert status["location"] == settings.chroma_url and status["chunks"] == len(stored)


def two_instances(settings, tmp_path: Path):
    """Two app instances on one Chroma server, each with its own local record manager (as on
    two machines): same collection, different SCRUMBOT_INDEX_DIR."""
    a_emb, b_emb = FakeEmbeddings(), FakeEmbeddings()
    a = test_store.make_assistant(settings.replace(index_dir=tmp_path / "app-a"), a_emb)
    b = test_store.make_assistant(settings.replace(index_dir=tmp_path / "app-b"), b_emb)
    return a, a_emb, b, b_emb


def test_two_app_instances_see_each_others_indexing(settings, docs: Path, tmp_path: Path):
    a, a_emb, b, b_emb = two_instances(settings, tmp_path)
    with pytest.raises(IndexMissingError):
        b.answer("What is team velocity?")

    first = a.index([docs])
    # b never indexed anything, yet answers from what a indexed
    answer = b.answer("What is team velocity?")
    assert not answer.refused and answer.sources[0].source == "velocity.txt"
    assert b.status()["index"]["chunks"] == first.chunks_embedded
    # ... and b re-indexing the same folder embeds nothing: the files' hashes are in the server
    again = b.index([docs])
    assert b_emb.embedded == [] and again.chunks_embedded == 0
    assert sorted(again.unchanged) == ["backlog.md", "review.txt", "velocity.txt"]
    test_store.assert_no_duplicates(a)


def test_two_app_instances_editing_the_same_file_leave_one_version(settings, docs: Path, tmp_path: Path):
    """a indexes v1, b indexes the edited v2, then a indexes v1 again: after each step the server
    holds exactly the chunks of the file as it is, whichever instance wrote the older ones."""
    a, _, b, _ = two_instances(settings, tmp_path)
    v1 = (docs / "velocity.txt").read_text()
    a.index([docs])
    v1_chunks = sorted(test_store.texts_of(a, "velocity.txt"))

    (docs / "velocity.txt").write_text(test_store.paragraph("forecasting with yesterday's weather"))
    report = b.index([docs])
    assert report.updated == ["velocity.txt"]
    v2_chunks = sorted(test_store.texts_of(b, "velocity.txt"))
    assert v2_chunks and all("yesterday's weather" in t for t in v2_chunks)
    assert report.chunks_deleted == len(v1_chunks)  # a's chunks of v1, unknown to b's records

    (docs / "velocity.txt").write_text(v1)
    report = a.index([docs])
    assert report.updated == ["velocity.txt"]
    # a's records still list v1's chunks (b deleted them): they must be written again, not skipped
    assert sorted(test_store.texts_of(a, "velocity.txt")) == v1_chunks
    assert report.chunks_deleted == len(v2_chunks)
    test_store.assert_no_duplicates(a)
    # and a fresh index of the same files holds exactly the same chunks
    assert sorted(t for _, t, _ in test_store.rows(a)) == sorted(t for _, t, _ in test_store.rows(b))
    assert b.index([docs]).chunks_embedded == 0
