"""Server modes against the real servers on 127.0.0.1: a Chroma server (`chroma run`) instead of
the embedded store, and llama.cpp's OpenAI-compatible server (SCRUMBOT_LLM=openai) instead of
the in-process model. Also: what happens when they are down, freeze, die mid-answer or are
given a wrong model name, and how one app process queues concurrent questions."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from _pytest.fixtures import FixtureFunctionDefinition

import test_api
import test_courses
import test_store
from conftest import CORPUS, REAL_MODELS_DIR, REPO, EchoChatModel, FakeEmbeddings
from scrumbot import Assistant, Settings
from scrumbot.models import EMBEDDER_NAME
from scrumbot.store import MARKER
from scrumbot.errors import ConfigError, IndexMissingError, LLMUnavailableError, StoreUnavailableError
from servers import AuthProxy, ServerProcess, chroma_server, free_port, http_status, llama_server

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
for _module in (test_store, test_api, test_courses):
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
    # only LangChain's record manager stays local (and the marker saying the folder is ours)
    assert sorted(p.name for p in settings.index_dir.iterdir()) == ["records.sqlite", MARKER]
    status = bot.status()["index"]
    assert status["location"] == settings.chroma_url and status["chunks"] == len(stored)


def test_back_to_the_embedded_index_in_the_same_folder(settings, docs: Path):
    """Server mode keeps its records in SCRUMBOT_INDEX_DIR; unsetting SCRUMBOT_CHROMA_URL later
    must give a working embedded index there, not "holds files that are not a scrumbot index"."""
    test_store.make_assistant(settings).index([docs])
    embedded = test_store.make_assistant(settings.replace(chroma_url=None))
    report = embedded.index([docs])
    # the records of chunks that live in the server are not taken for chunks in this index
    assert sorted(report.added) == ["backlog.md", "review.txt", "velocity.txt"]
    assert report.chunks_embedded == len(chroma_rows(settings.chroma_url, settings.collection))
    assert embedded.status()["index"]["location"] == str(settings.index_dir)
    assert not embedded.answer(QUESTION).refused


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


def test_two_instances_indexing_at_the_same_time(settings, docs: Path, tmp_path: Path):
    """Nothing locks the shared server (a lock file would not reach another machine): two runs
    over the same files at once must still leave each file once, in its current version."""
    a, _, b, _ = two_instances(settings, tmp_path)
    a.index([docs])
    (docs / "velocity.txt").write_text(test_store.paragraph("forecasting with yesterday's weather"))
    (docs / "review.txt").unlink()
    (docs / "retro.md").write_text(test_store.paragraph("the retrospective"))
    start = threading.Barrier(2)

    def run(bot):
        start.wait()
        return bot.index([docs])

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(run, [a, b]))
    assert all(r.skipped == [] for r in reports)
    test_store.assert_no_duplicates(a)
    assert sorted({m["source"] for _, _, m in test_store.rows(a)}) == ["backlog.md", "retro.md", "velocity.txt"]
    assert all("yesterday's weather" in t for t in test_store.texts_of(a, "velocity.txt"))
    fresh = test_store.make_assistant(settings.replace(index_dir=tmp_path / "fresh", collection="fresh-" + settings.collection))
    fresh.index([docs])
    assert sorted(t for _, t, _ in test_store.rows(a)) == sorted(t for _, t, _ in test_store.rows(fresh))


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


# -- the OpenAI-compatible server (llama.cpp's) ----------------------------------------------------

MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"  # the default model, so answers match
ALIAS = "qwen2.5-coder-1.5b"
API_KEY = "test-key-0123"
# Answered alike in-process and behind the server, and through prompt changes: its answer is
# nearly a sentence of the course. Borderline questions flip between an answer and a refusal
# (the server runs Qwen with the GGUF's RoPE base, ChatLlamaCpp with 10000).
IN_SCOPE = "Which certification focuses on the Scrum framework and Agile principles?"
EXPECTED = ("CSM", "ScrumMaster", "Scrum Master")
OUT_OF_SCOPE = "Which volcano erupted near Reykjavik yesterday?"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """`python -m llama_cpp.server` with the packaged default model, behind an API key.

    Tests that crash or freeze it leave it running again (same port) when they finish."""
    model = REAL_MODELS_DIR / MODEL_FILE
    if not model.exists():
        pytest.fail(f"{model} is missing: run `scrumbot models fetch` (make setup does).")
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    with llama_server(model, ALIAS, log, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def openai_env(monkeypatch, llama):
    """SCRUMBOT_LLM=openai and friends, set the way a deployment sets them: in the environment."""
    env = {"SCRUMBOT_LLM": "openai", "SCRUMBOT_OPENAI_BASE_URL": f"{llama.url}/v1",
           "SCRUMBOT_OPENAI_MODEL": ALIAS, "SCRUMBOT_OPENAI_API_KEY": API_KEY,
           # short answers keep the tests quick on a shared 2-core CPU (shorter prompts, fewer
           # passages, made the model refuse: prompts stay as in production)
           "SCRUMBOT_MAX_TOKENS": "40"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="module")
def real_embeddings():
    """all-MiniLM-L6-v2, loaded once for the module (each Assistant would load its own)."""
    from scrumbot.api import _huggingface_embeddings

    return _huggingface_embeddings()


@pytest.fixture
def openai_assistant(settings: Settings, openai_env, real_embeddings):
    """Builds Assistants from the environment (SCRUMBOT_LLM=openai ...), with the index in the
    Chroma server: the real embedder, prompt, chain and ChatOpenAI against the real servers."""

    def build(**changes) -> Assistant:
        s = Settings.from_env(corpus_dir=CORPUS, index_dir=settings.index_dir, chroma_url=settings.chroma_url,
                              collection=settings.collection).replace(**changes)
        return Assistant(s, embeddings=real_embeddings, embedder_name=EMBEDDER_NAME)

    return build


def test_openai_backend_streams_and_answers(openai_assistant):
    bot = openai_assistant()
    assert bot.settings.llm == "openai"
    bot.index()

    snapshots = list(bot.stream(IN_SCOPE))
    partial = [s.text for s in snapshots if not s.done and s.text]
    final = snapshots[-1]
    assert final.done and not final.refused
    assert len(partial) >= 3, "the answer should arrive in pieces"
    assert all(b.startswith(a) for a, b in zip(partial, partial[1:]))
    assert any(w in final.text for w in EXPECTED), final.text
    assert final.sources and final.sources[0].source == "product-owner-101.txt"
    assert 0 < final.timings["first_token_s"] < final.timings["total_s"]

    # the same question again (llama.cpp reuses the cached prompt: quick) through answer()
    answer = bot.answer(IN_SCOPE)
    assert not answer.refused and any(w in answer.text for w in EXPECTED), answer.text
    assert answer.timings["total_s"] < final.timings["total_s"]
    assert "openai-compatible qwen2.5-coder-1.5b at http://127.0.0.1:" in bot.status()["llm"]
    assert bot.status()["settings"]["openai_api_key"] == "****"


def test_server_down_at_start_is_a_fast_clear_error(openai_assistant, monkeypatch):
    base = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("SCRUMBOT_OPENAI_BASE_URL", base)
    bot = openai_assistant()
    bot.index()
    for _ in range(2):  # and again: nothing stays stuck (the lock, a half-built model)
        started = time.perf_counter()
        with pytest.raises(LLMUnavailableError) as err:
            bot.answer(IN_SCOPE)
        assert time.perf_counter() - started < 3
        message = str(err.value)
        assert f"Could not reach the OpenAI-compatible server at {base}" in message
        assert f"tried GET {base}/models: ConnectError" in message
        assert "SCRUMBOT_OPENAI_BASE_URL" in message
    # questions the course doesn't cover are still answered: they never need the model
    assert bot.answer(OUT_OF_SCOPE).refused


def test_wrong_model_name(openai_assistant, llama, monkeypatch):
    # llama.cpp's server answers any model name with the model it has, and echoes the name back:
    request = {"model": "no-such-model", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    raw = httpx.post(f"{llama.url}/v1/chat/completions", json=request, timeout=120,
                     headers={"Authorization": f"Bearer {API_KEY}"})
    assert raw.status_code == 200 and raw.json()["model"] == "no-such-model"
    # ... so scrumbot checks the name against the server's model list before the first question
    monkeypatch.setenv("SCRUMBOT_OPENAI_MODEL", "qwen2.5-7b")
    bot = openai_assistant()
    bot.index()
    started = time.perf_counter()
    with pytest.raises(LLMUnavailableError) as err:
        bot.answer(IN_SCOPE)
    assert time.perf_counter() - started < 3
    assert "does not serve the model 'qwen2.5-7b'; it serves: qwen2.5-coder-1.5b" in str(err.value)
    assert "SCRUMBOT_OPENAI_MODEL" in str(err.value)


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_wrong_or_missing_api_key(openai_assistant, monkeypatch, key):
    monkeypatch.delenv("SCRUMBOT_OPENAI_API_KEY")
    if key:
        monkeypatch.setenv("SCRUMBOT_OPENAI_API_KEY", key)
    bot = openai_assistant()
    bot.index()
    with pytest.raises(LLMUnavailableError) as err:
        bot.answer(IN_SCOPE)
    assert "refused scrumbot's API key" in str(err.value) and "HTTP 401" in str(err.value)
    assert "SCRUMBOT_OPENAI_API_KEY" in str(err.value)


def test_frozen_server_times_out(openai_assistant, llama, monkeypatch):
    monkeypatch.setenv("SCRUMBOT_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("SCRUMBOT_CONNECT_TIMEOUT", "1")
    checked = openai_assistant()  # its model list was fetched before the freeze
    checked.index()
    assert checked.llm is not None
    llama.pause()
    try:
        started = time.perf_counter()
        with pytest.raises(LLMUnavailableError) as err:
            checked.answer(IN_SCOPE)
        took = time.perf_counter() - started
        assert took < 8  # two tries (max_retries=1) of 2 s each, plus a back-off
        assert "did not answer within 2s" in str(err.value) and "SCRUMBOT_REQUEST_TIMEOUT" in str(err.value)
        assert f"tried POST {llama.url}/v1/chat/completions with model '{ALIAS}'" in str(err.value)

        fresh = openai_assistant()
        started = time.perf_counter()
        with pytest.raises(LLMUnavailableError, match=r"did not answer \(tried GET .*/models: ReadTimeout"):
            fresh.answer(IN_SCOPE)
        assert time.perf_counter() - started < 4
    finally:
        llama.resume()


def test_server_killed_mid_answer_then_back(openai_assistant, llama):
    bot = openai_assistant(max_tokens=120)
    bot.index()
    chunks = bot.status()["index"]["chunks"]
    seen = ""
    stream = bot.stream("How do I get the CSPO certification? Explain every step.")
    with pytest.raises(LLMUnavailableError) as err:
        for snapshot in stream:
            if snapshot.text and not seen:
                seen = snapshot.text
                llama.kill()
                killed = time.perf_counter()
    assert seen, "the answer had started when the server died"
    assert time.perf_counter() - killed < 3
    assert "connection was lost mid-answer" in str(err.value)
    assert f"POST {llama.url}/v1/chat/completions" in str(err.value)

    # nothing corrupted, and the same Assistant keeps serving what it can while the server is down
    assert bot.status()["index"]["chunks"] == chunks
    assert bot.answer(OUT_OF_SCOPE).refused
    with pytest.raises(LLMUnavailableError, match="could not be reached"):
        bot.answer(IN_SCOPE)

    llama.start()  # back, same port
    answer = bot.answer(IN_SCOPE)
    assert not answer.refused and any(w in answer.text for w in EXPECTED), answer.text


# -- many questions at once, inside one app process -----------------------------------------------


class Overlaps:
    """Counts how many generations run at the same moment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = self.most = self.calls = 0

    @contextlib.contextmanager
    def running(self):
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1


class SlowEcho(EchoChatModel):
    """EchoChatModel that takes its time over every word (like a real model) and reports to an
    Overlaps; `gate`, when given, holds the answer after its first word until it is set."""

    overlaps: Any = None
    gate: Any = None

    def _stream(self, messages, stop=None, run_manager=None, **kw):
        with self.overlaps.running():
            for i, chunk in enumerate(super()._stream(messages, stop, run_manager, **kw)):
                yield chunk
                if i == 0 and self.gate is not None:
                    assert self.gate.wait(60), "the test never released the answer"
                time.sleep(0.01)


@pytest.mark.parametrize("backend", ["llamacpp", "openai"])
def test_threads_asking_at_once(settings, backend):
    """The in-process model is not thread-safe: with it, generations never overlap. A server
    backend queues (or batches) on its side, so there they may. The second case is also the
    proof that the detector sees overlap when nothing prevents it."""
    overlaps = Overlaps()
    bot = Assistant(settings.replace(corpus_dir=CORPUS, llm=backend, min_score=0.2),
                    embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words",
                    llm=SlowEcho(overlaps=overlaps))
    bot.index()
    start = threading.Barrier(4)

    def ask(question: str):
        start.wait()
        return bot.answer(question)

    questions = [IN_SCOPE, "What does the CSPO certification focus on?"] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, questions))
    assert overlaps.calls == 4
    assert all(not a.refused and a.text for a in answers)
    assert answers[0].text == answers[2].text and answers[1].text == answers[3].text
    assert (overlaps.most == 1) if backend == "llamacpp" else (overlaps.most > 1)


def test_the_page_queues_questions_and_says_so(settings, monkeypatch):
    """`scrumbot serve` with the in-process model (llamacpp) answers one question at a time; a
    second visitor's question waits in Gradio's queue, and their page shows 'queue: 1/1'."""
    from playwright.sync_api import expect, sync_playwright

    import scrumbot.ui as ui

    overlaps, gate = Overlaps(), threading.Event()
    gate.set()  # serve() warms the model up with one question first
    apps = []
    def assistant(s):
        built = Assistant(s, embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words",
                          llm=SlowEcho(overlaps=overlaps, gate=gate))
        # the page's example questions are worked out in the background at start: not the
        # visitors' questions this test counts
        built.example_questions = lambda *args, **kwargs: []
        return built

    monkeypatch.setattr(ui, "Assistant", assistant)
    monkeypatch.setattr(ui, "build_app", lambda assistant, _build=ui.build_app: apps.append(_build(assistant)) or apps[-1])
    port = free_port()
    served = settings.replace(corpus_dir=CORPUS, min_score=0.2, port=port)
    assert served.llm == "llamacpp"
    thread = threading.Thread(target=ui.serve, args=(served,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while http_status(url) != 200:
        assert thread.is_alive() and time.monotonic() < deadline, "the page did not come up"
        time.sleep(0.2)
    try:
        gate.clear()
        warm_up_calls = overlaps.calls
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            first, second = browser.new_page(), browser.new_page()
            for page in (first, second):
                page.goto(url, wait_until="load")
                expect(page.locator("#question textarea")).to_be_visible(timeout=30_000)
            first.locator("#question textarea").fill(IN_SCOPE)
            first.locator("#ask").click()
            # the first answer has begun, and is held after its first word
            deadline = time.monotonic() + 20
            while overlaps.calls < warm_up_calls + 1:
                assert time.monotonic() < deadline, "the first question never reached the model"
                time.sleep(0.05)
            second.locator("#question textarea").fill("What does the CSPO certification focus on?")
            second.locator("#ask").click()
            expect(second.locator("#chat")).to_contain_text("queue: 1/1", timeout=20_000)
            assert overlaps.active == 1
            gate.set()
            for page in (first, second):
                expect(page.locator("#chat")).to_contain_text("[1] product-owner-101.txt", timeout=30_000)
            browser.close()
        assert overlaps.calls == warm_up_calls + 2 and overlaps.most == 1  # one at a time
    finally:
        gate.set()
        for app in apps:
            app.close()
        thread.join(timeout=10)


# -- the README's "Deploying for many users", followed as written ---------------------------------

# The file whose section is followed (a draft can be checked before it goes into README.md).
DEPLOY_DOC = Path(os.environ.get("SCRUMBOT_DEPLOY_DOC", REPO / "README.md"))
DEPLOY_SECTION = "## Deploying for many users"


def deploy_commands(tmp_path: Path) -> list[str]:
    """The shell lines of the section's ```sh blocks, with its ports, data path and model folder
    swapped for free ports, a temporary folder and this machine's model cache; nothing else."""
    text = DEPLOY_DOC.read_text()
    if DEPLOY_SECTION not in text:
        pytest.fail(f"{DEPLOY_DOC} has no '{DEPLOY_SECTION}' section to follow.")
    section = text.split(DEPLOY_SECTION, 1)[1].split("\n## ", 1)[0]
    for port in set(re.findall(r"(?:--port |SCRUMBOT_PORT=)(\d+)", section)):
        section = re.sub(rf"\b{port}\b", str(free_port()), section)
    for i, path in enumerate(sorted(set(re.findall(r"--path (\S+)", section)))):
        section = section.replace(path, str(tmp_path / f"chroma-data-{i}"))
    section = section.replace("~/.cache/scrumbot/models", str(REAL_MODELS_DIR))
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return lines


def expand(word: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), os.path.expanduser(word))


def test_deploying_for_many_users_as_written(tmp_path: Path):
    """Runs every command of the README section in order, with the real embedder, a real Chroma
    server and llama.cpp's server: servers and `&` lines in the background, the rest to
    completion. Each process is separate, so the app instances share nothing but the servers."""
    env = {**os.environ, "SCRUMBOT_MAX_TOKENS": "40"}  # (the one addition: shorter answers, quicker test)
    background: list[ServerProcess] = []
    outputs: dict[str, str] = {}
    try:
        for n, line in enumerate(deploy_commands(tmp_path)):
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").partition("=")
                env[key] = expand(" ".join(shlex.split(value)), env)
                continue
            words = shlex.split(line.removesuffix("&").strip())
            local = dict(env)
            while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value command
                key, _, value = words.pop(0).partition("=")
                local[key] = expand(value, local)
            argv = [expand(w, local) for w in words]
            argv[0] = str(REPO / argv[0]) if argv[0].startswith(".venv/") else argv[0]
            log = tmp_path / f"step-{n}.log"
            if argv[1:3] == ["run", "--path"] and argv[0].endswith("chroma"):
                port = int(argv[argv.index("--port") + 1])
                background.append(ServerProcess("chroma", argv, port, "/api/v2/heartbeat", log, env=local).start())
            elif "llama_cpp.server" in argv:
                port = int(argv[argv.index("--port") + 1])
                key = argv[argv.index("--api_key") + 1] if "--api_key" in argv else None
                background.append(ServerProcess("llama_cpp.server", argv, port, "/v1/models", log,
                                                ready_headers={"Authorization": f"Bearer {key}"} if key else None,
                                                ready_timeout=240, env=local).start())
            elif line.endswith("&"):
                port = int(local.get("SCRUMBOT_PORT", "7860"))
                background.append(ServerProcess(" ".join(words), argv, port, "/", log, ready_timeout=240,
                                                env=local).start())
            else:
                done = subprocess.run(argv, env=local, cwd=REPO, capture_output=True, text=True, timeout=600)
                assert done.returncode == 0, f"`{line}` failed:\n{done.stdout}\n{done.stderr}"
                outputs[" ".join(words[:2]).removeprefix(".venv/bin/")] = done.stdout

        chroma_url, base_url = env["SCRUMBOT_CHROMA_URL"], env["SCRUMBOT_OPENAI_BASE_URL"]
        assert "added 1" in outputs["scrumbot index"]
        status = outputs["scrumbot status"]
        assert f"index:    {chroma_url} (exists)" in status
        assert f"openai-compatible {env['SCRUMBOT_OPENAI_MODEL']} at {base_url}" in status
        assert "product-owner-101.txt" in status
        asked = outputs["scrumbot ask"]
        assert any(w in asked.lower() for w in ("facilitat", "obstacle", "coach")), asked
        assert "[1] product-owner-101.txt" in asked
        # the index lives in the server: the instances' own folder holds no Chroma files
        assert not list(Path(env["SCRUMBOT_INDEX_DIR"]).glob("chroma.sqlite3"))

        instances = [p for p in background if p.ready_path == "/"]
        assert len(instances) >= 2, "the section should start several app instances"
        from gradio_client import Client

        for instance in instances:
            client = Client(instance.url, verbose=False, analytics_enabled=False)
            _, chat, sources = client.predict("What does a ScrumMaster do?", [], api_name="/ask")
            content = chat[-1]["content"]  # Gradio 6: a list of {"type": "text", "text": ...}
            reply = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            assert any(w in reply.lower() for w in ("facilitat", "obstacle", "coach")), reply
            assert "[1] [product-owner-101.txt" in reply, reply  # a marker links to its source
            assert "product-owner-101.txt" in sources
    finally:
        for process in reversed(background):
            process.stop()
