"""Server modes against the real servers on 127.0.0.1: a Chroma server (`chroma run`) instead of
the embedded store, and llama.cpp's OpenAI-compatible server (SCRUMBOT_LLM=openai) instead of
the in-process model. Also: what happens when they are down, freeze, die mid-answer or are
given a wrong model name, and how one app process queues concurrent questions."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _pytest.fixtures import FixtureFunctionDefinition

import test_api
import test_store
from conftest import FakeEmbeddings
from scrumbot import Settings
from scrumbot.errors import ConfigError, IndexMissingError, StoreUnavailableError
from servers import AuthProxy, chroma_server, free_port

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


def test_a_rebuild_by_another_instance_does_not_strand_this_one(settings, docs: Path, tmp_path: Path):
    """b holds the collection open; a rebuilds it (delete + create: a new collection id)."""
    a, _, b, _ = two_instances(settings, tmp_path)
    a.index([docs])
    assert not b.answer("What is team velocity?").refused
    a.index([docs], rebuild=True)
    answer = b.answer("What is team velocity?")
    assert not answer.refused and answer.sources[0].source == "velocity.txt"


# -- the Chroma server failing ---------------------------------------------------------------------

QUESTION = "What is team velocity?"


@contextlib.contextmanager
def socket_server_answering_404():
    """Some other web server on the port SCRUMBOT_CHROMA_URL names."""

    class NotChroma(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotChroma)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_chroma_down_at_start_is_a_fast_clear_error(settings, docs: Path):
    url = f"http://127.0.0.1:{free_port()}"
    bot = test_store.make_assistant(settings.replace(chroma_url=url))
    for attempt in (lambda: bot.index([docs]), lambda: bot.answer(QUESTION), bot.status):
        started = time.perf_counter()
        with pytest.raises(StoreUnavailableError) as err:
            attempt()
        assert time.perf_counter() - started < 3
        message = str(err.value)
        # what was tried, and what to check
        assert f"Could not reach the Chroma server at {url}" in message
        assert f"GET {url}/api/v2/heartbeat" in message and "ConnectError" in message
        assert "`chroma run" in message and "SCRUMBOT_CHROMA_URL" in message
        assert "--rebuild" not in message


def test_chroma_that_is_not_chroma_is_named(settings, docs: Path, chroma):
    bot = test_store.make_assistant(settings.replace(chroma_url=chroma.url + "/no/such/prefix"))
    # the path is ignored (Chroma has none): still the real server
    bot.index([docs])
    with socket_server_answering_404() as url:
        with pytest.raises(StoreUnavailableError, match="does not answer like a Chroma 1.x server"):
            test_store.make_assistant(settings.replace(chroma_url=url)).status()
    with pytest.raises(ConfigError, match="not a server address"):
        test_store.make_assistant(settings.replace(chroma_url="ftp://127.0.0.1:1")).status()


def test_frozen_chroma_server_times_out_then_recovers(settings, docs: Path, chroma):
    bot = test_store.make_assistant(settings.replace(request_timeout=1.5, connect_timeout=1.0))
    bot.index([docs])
    count = bot.status()["index"]["chunks"]
    chroma.pause()  # accepts connections, never answers
    try:
        started = time.perf_counter()
        with pytest.raises(StoreUnavailableError) as err:
            bot.answer(QUESTION)
        assert time.perf_counter() - started < 6
        assert "did not answer within 1.5s" in str(err.value) and "SCRUMBOT_REQUEST_TIMEOUT" in str(err.value)
        # an instance starting now fails as fast, at its first request
        fresh = test_store.make_assistant(settings.replace(request_timeout=1.5, connect_timeout=1.0))
        started = time.perf_counter()
        with pytest.raises(StoreUnavailableError, match="did not answer .*ReadTimeout"):
            fresh.status()
        assert time.perf_counter() - started < 4
    finally:
        chroma.resume()
    # the same instances carry on once the server answers again; nothing was lost
    assert not bot.answer(QUESTION).refused
    assert fresh.status()["index"]["chunks"] == count


def test_chroma_killed_then_restarted(settings, docs: Path, tmp_path: Path):
    server = chroma_server(tmp_path / "own-chroma", tmp_path / "own-chroma.log").start()
    try:
        emb = FakeEmbeddings()
        bot = test_store.make_assistant(settings.replace(chroma_url=server.url), emb)
        bot.index([docs])
        before = bot.status()["index"]
        server.kill()

        for attempt in (lambda: bot.answer(QUESTION), bot.status, lambda: bot.index([docs])):
            started = time.perf_counter()
            with pytest.raises(StoreUnavailableError) as err:
                attempt()
            assert time.perf_counter() - started < 3
            assert f"The Chroma server at {server.url} stopped answering" in str(err.value)
            assert "--rebuild" not in str(err.value)

        server.start()  # same data folder, same port
        assert bot.status()["index"] == before
        assert not bot.answer(QUESTION).refused
        emb.embedded.clear()
        assert bot.index([docs]).chunks_embedded == 0 and emb.embedded == []
    finally:
        server.stop()


def test_token_and_headers_reach_a_checking_proxy(settings, docs: Path, chroma):
    """Chroma 1.x's own server has no authentication; deployments put a proxy that checks a
    token in front of it. SCRUMBOT_CHROMA_TOKEN / SCRUMBOT_CHROMA_HEADERS are what it checks."""
    with AuthProxy(chroma.port, "Authorization", "Bearer s3cret") as proxy:
        without = test_store.make_assistant(settings.replace(chroma_url=proxy.url))
        with pytest.raises(StoreUnavailableError) as err:
            without.index([docs])
        assert "refused scrumbot's credentials" in str(err.value) and "HTTP 401" in str(err.value)
        assert "SCRUMBOT_CHROMA_TOKEN" in str(err.value)

        wrong = test_store.make_assistant(settings.replace(chroma_url=proxy.url, chroma_token="guess"))
        with pytest.raises(StoreUnavailableError, match="HTTP 401"):
            wrong.status()

        proxy.seen.clear()
        bot = test_store.make_assistant(settings.replace(chroma_url=proxy.url, chroma_token="s3cret"))
        report = bot.index([docs])
        assert not bot.answer(QUESTION).refused
        # every request carried the token (the one 404 is "no such collection yet")
        assert len(proxy.seen) > 5 and not [r for r in proxy.seen if r[2] in (401, 502)]
        assert bot.status()["settings"]["chroma_token"] == "****"

    with AuthProxy(chroma.port, "X-Chroma-Token", "s3cret") as proxy:
        headers = '{"X-Chroma-Token": "s3cret"}'
        other = test_store.make_assistant(settings.replace(chroma_url=proxy.url, chroma_headers=headers))
        assert other.status()["index"]["chunks"] == report.chunks_embedded
        assert other.status()["settings"]["chroma_headers"] == "****"

    with pytest.raises(ConfigError, match="SCRUMBOT_CHROMA_HEADERS"):
        test_store.make_assistant(settings.replace(chroma_headers="X-Chroma-Token: s3cret")).status()
