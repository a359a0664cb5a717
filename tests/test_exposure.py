"""Who can reach the page and what it gives away: a real `scrumbot serve` process (the real
embedder, extractive answers so it starts quickly) on 127.0.0.1 with SCRUMBOT_AUTH set: the
address it really bound, the login it really asks for, what its pages, answers and errors
show, what its log holds, and a few concurrent sessions through gradio_client. Traffic goes to
127.0.0.1 only; the refusal to bind 0.0.0.0 is checked without anything being bound."""

from __future__ import annotations

import http.server
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from conftest import CORPUS, REPO
from scrumbot import Settings
from scrumbot.ui import MaskSecrets, for_the_page

sys.path.insert(0, str(REPO / "benchmarks"))
import load_test  # noqa: E402

USER = "teacher"
PASSWORD = "pw-" + secrets.token_hex(8)
API_KEY = "sk-test-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    corpus = root / "course-files"
    shutil.copytree(CORPUS, corpus)
    env = {"SCRUMBOT_AUTH": f"{USER}:{PASSWORD}", "SCRUMBOT_CORPUS_DIR": str(corpus),
           # set but unused (extractive): a secret that must not show anywhere
           "SCRUMBOT_OPENAI_API_KEY": API_KEY}
    with load_test.Server("extractive", env, ready_timeout=300, keep=False) as server:
        server.corpus = corpus
        yield server


def listening(pid: int) -> set[tuple[str, int]]:
    import psutil

    found = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


@pytest.mark.slow
def test_the_real_server_binds_loopback_only(served):
    assert listening(served.proc.pid) == {("127.0.0.1", served.port)}


@pytest.mark.slow
def test_with_auth_configured_nothing_works_without_logging_in(served):
    from gradio_client import Client

    page = httpx.get(served.url)
    assert page.status_code == 200 and "Ask about the course" not in page.text  # an empty shell
    for path in ("config", "gradio_api/info"):
        assert httpx.get(served.url + path).status_code == 401
    joined = httpx.post(served.url + "gradio_api/queue/join",
                        json={"data": ["Who is Braintrust Group?", []], "fn_index": 0, "session_hash": "x1"})
    assert joined.status_code == 401
    assert httpx.post(served.url + "login", data={"username": USER, "password": "wrong"}).status_code == 400
    with pytest.raises(Exception, match="credentials"):
        Client(served.url, verbose=False)

    with httpx.Client() as browser:
        assert browser.post(served.url + "login", data={"username": USER, "password": PASSWORD}).json()["success"]
        assert browser.get(served.url + "config").status_code == 200
    _, chat, _ = Client(served.url, auth=(USER, PASSWORD), verbose=False).predict(
        "Who is Braintrust Group?", [], api_name="/ask")
    assert "worldwide leader in Agile transformations" in json.dumps(chat)


@pytest.mark.slow
def test_pages_answers_and_errors_show_no_local_paths_or_secrets(served):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    shown = []
    with httpx.Client() as browser:
        browser.post(served.url + "login", data={"username": USER, "password": PASSWORD})
        for path in ("", "config", "gradio_api/info?all_endpoints=true"):
            shown.append(browser.get(served.url + path).text)
    client = Client(served.url, auth=(USER, PASSWORD), verbose=False)
    shown.append(json.dumps(client.predict("Which cert suits a business analyst?", [], api_name="/ask")))
    with pytest.raises(AppError) as err:
        client.predict("   ", [], api_name="/ask")
    shown.append(str(err.value))
    assert "product-owner-101.txt" in shown[3]  # sources are named, relative to the corpus folder
    index_dir = Path(served.env["SCRUMBOT_INDEX_DIR"])
    for secret in (str(index_dir), str(served.corpus), str(served.dir), str(REPO), str(Path.home()),
                   API_KEY, PASSWORD):
        assert not [i for i, text in enumerate(shown) if secret in text], secret


@pytest.mark.slow
def test_five_concurrent_sessions_all_answered_memory_bounded(served):
    report = load_test.run(served.url, sessions=5, turns=3, deadline_s=240, auth=(USER, PASSWORD),
                           server_pid=served.proc.pid, llm="extractive")
    print(report.text())
    assert report.ok, report.text()
    assert report.answered == 15 and report.refusals >= 5  # "the capital of France" each time
    assert report.rss_mb["peak"] - report.rss_mb["ready"] < 400, report.rss_mb


@pytest.mark.slow
def test_the_log_holds_no_secrets(served):
    httpx.post(served.url + "login", data={"username": USER, "password": "wrong-" + PASSWORD})
    log = served.log()
    assert "Running on" in log or "127.0.0.1" in log  # it is the server's log
    assert PASSWORD not in log and API_KEY not in log


# -- refusing to be exposed ------------------------------------------------------------------------


def serve_process(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(tmp_path / "index"), **env}
    return subprocess.run([sys.executable, "-m", "scrumbot.cli", "serve", *args], env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_binding_all_interfaces_without_a_password_is_refused_before_anything_starts(tmp_path):
    done = serve_process(tmp_path, "--host", "0.0.0.0")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Binding 0.0.0.0 would expose the chat to the network without a password." in done.stderr
    assert "SCRUMBOT_AUTH=user:password" in done.stderr and "SCRUMBOT_ALLOW_UNAUTHENTICATED=1" in done.stderr
    assert not (tmp_path / "index").exists()  # it stopped before indexing or loading anything


def test_the_explicit_opt_out_is_loudly_warned_before_serving(tmp_path):
    """With SCRUMBOT_ALLOW_UNAUTHENTICATED=1 the warning comes first; the index folder is made a
    file so the run stops right after it, before anything is bound to 0.0.0.0."""
    (tmp_path / "index").write_text("not a folder")
    done = serve_process(tmp_path, "--host", "0.0.0.0", SCRUMBOT_ALLOW_UNAUTHENTICATED="1")
    warning = "SERVING 0.0.0.0 WITHOUT AUTHENTICATION: anyone who can reach this port can use it."
    assert warning in done.stderr
    assert done.stderr.index(warning) < done.stderr.index("is a file, not an index folder")
    assert done.returncode == 1


@pytest.mark.parametrize("auth", ["teacher", "teacher:", ":secret"])
def test_a_malformed_password_setting_is_refused(tmp_path, auth):
    done = serve_process(tmp_path, SCRUMBOT_AUTH=auth)
    assert done.returncode == 1 and "SCRUMBOT_AUTH must be user:password" in done.stderr
    assert "Traceback" not in done.stderr


# -- secrets and paths in messages and logs ----------------------------------------------------------


def test_error_messages_for_the_page_lose_folders_and_secrets(tmp_path):
    settings = Settings(index_dir=tmp_path / "idx", corpus_dir=tmp_path / "course", auth="teacher:hunter22",
                        openai_api_key="sk-abc123456", openai_base_url="http://bob:pa55word@127.0.0.1:9/v1")
    message = (f"There is no index at {tmp_path / 'idx'} yet. Files in {tmp_path / 'course'}/a.txt, "
               f"{Path.home()}/notes, /etc/passwd. Server http://bob:pa55word@127.0.0.1:9/v1 said: "
               "bad key sk-abc123456 for teacher:hunter22")
    shown = for_the_page(message, settings)
    assert shown == ("There is no index at the index folder yet. Files in the corpus folder/a.txt, ~/notes, "
                     "(a local path). Server http://****@127.0.0.1:9/v1 said: bad key **** for ****")


class EchoKeyServer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that fails and quotes the request's key in its error, as
    some proxies do."""

    def do_GET(self):  # /v1/models
        self._reply(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(500, {"error": {"message": f"upstream rejected {self.headers.get('Authorization')}",
                                    "type": "server_error"}})

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.slow  # CLI processes
def test_the_openai_error_path_masks_the_key(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoKeyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(tmp_path / "index"), "SCRUMBOT_MIN_SCORE": "0.2",
               "SCRUMBOT_LLM": "openai", "SCRUMBOT_OPENAI_MODEL": "m", "SCRUMBOT_OPENAI_API_KEY": API_KEY,
               "SCRUMBOT_OPENAI_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1"}
        cli = [sys.executable, str(REPO / "tests" / "cli_with_fakes.py")]
        assert subprocess.run(cli + ["index", str(CORPUS)], env=env, capture_output=True, timeout=120).returncode == 0
        done = subprocess.run(cli + ["ask", "Who is Braintrust Group?"], env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        server.shutdown()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "upstream rejected Bearer ****" in done.stderr or "HTTP 500" in done.stderr, done.stderr
    assert API_KEY not in done.stderr + done.stdout


def test_log_lines_and_tracebacks_are_masked():
    settings = Settings(openai_api_key="sk-live-0123456789", auth="teacher:hunter22")
    handler = logging.StreamHandler()
    handler.addFilter(MaskSecrets(settings))
    records = []
    handler.emit = lambda record: records.append(handler.format(record))
    log = logging.getLogger("scrumbot.test-mask")
    log.addHandler(handler)
    try:
        log.warning("calling with key %s", "sk-live-0123456789")
        try:
            raise RuntimeError("server said: invalid key sk-live-0123456789 (user teacher:hunter22)")
        except RuntimeError:
            log.exception("answering failed")
    finally:
        log.removeHandler(handler)
    assert records[0] == "calling with key ****"
    assert "invalid key **** (user ****)" in records[1] and "Traceback" in records[1]
    assert not [r for r in records if "sk-live" in r or "hunter22" in r]
