"""A password written into a server URL (SCRUMBOT_OPENAI_BASE_URL=http://bob:pa55word@host/v1,
the same for SCRUMBOT_CHROMA_URL) never shows: not in `scrumbot status` or its JSON, not in the
errors of the API, the CLI or the page, not in the log. Port 9 on 127.0.0.1 has no server, so
every connection is refused at once."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

import scrumbot.cli as cli
from conftest import EchoChatModel, FakeEmbeddings
from scrumbot import Assistant, Settings
from scrumbot.errors import ScrumbotError
from scrumbot.ui import MaskSecrets, make_respond

PASSWORD = "pa55word-7f3e"
OPENAI_URL = f"http://bob:{PASSWORD}@127.0.0.1:9/v1"
CHROMA_URL = f"http://alice:{PASSWORD}@127.0.0.1:9"
QUESTION = "Which certification suits a business analyst?"


@pytest.fixture
def openai_env(monkeypatch, corpus):
    monkeypatch.setenv("SCRUMBOT_LLM", "openai")
    monkeypatch.setenv("SCRUMBOT_OPENAI_BASE_URL", OPENAI_URL)
    monkeypatch.setenv("SCRUMBOT_OPENAI_MODEL", "m")
    monkeypatch.setenv("SCRUMBOT_CORPUS_DIR", str(corpus))
    monkeypatch.setenv("SCRUMBOT_MIN_SCORE", "0.2")


def fake_embedder(settings: Settings) -> Assistant:
    """The real Assistant and LLM backend (an OpenAI client), with the fake embedder."""
    return Assistant(settings, embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words")


def test_status_and_its_json_mask_a_password_in_the_server_url(openai_env):
    text = CliRunner().invoke(cli.main, ["status"])
    as_json = CliRunner().invoke(cli.main, ["status", "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0
    assert "openai-compatible m at http://****@127.0.0.1:9/v1" in text.output
    assert json.loads(as_json.output)["settings"]["openai_base_url"] == "http://****@127.0.0.1:9/v1"
    assert PASSWORD not in text.output + as_json.output


def test_status_against_a_chroma_url_with_a_password_masks_it_in_the_error(monkeypatch):
    monkeypatch.setenv("SCRUMBOT_CHROMA_URL", CHROMA_URL)
    monkeypatch.setenv("SCRUMBOT_CONNECT_TIMEOUT", "2")
    result = CliRunner().invoke(cli.main, ["status"])
    assert result.exit_code == 1 and "Chroma server at http://****@127.0.0.1:9" in result.output
    assert PASSWORD not in result.output


def test_api_and_cli_errors_mask_a_password_in_the_server_url(openai_env, monkeypatch):
    assistant = fake_embedder(Settings.from_env())
    assistant.index()
    with pytest.raises(ScrumbotError) as err:
        assistant.answer(QUESTION)
    assert "server at http://****@127.0.0.1:9/v1" in str(err.value), str(err.value)
    assert PASSWORD not in str(err.value)

    monkeypatch.setattr(cli, "_assistant", fake_embedder)
    assert CliRunner().invoke(cli.main, ["index"]).exit_code == 0
    result = CliRunner().invoke(cli.main, ["ask", QUESTION])
    assert result.exit_code == 1 and "http://****@127.0.0.1:9/v1" in result.output
    assert PASSWORD not in result.output


def test_the_page_masks_a_password_in_the_server_url(openai_env):
    import gradio as gr

    assistant = fake_embedder(Settings.from_env())
    assistant.index()
    with pytest.raises(gr.Error) as err:
        for _ in make_respond(assistant)(QUESTION, []):
            pass
    assert "****@" in err.value.message and PASSWORD not in err.value.message


def test_log_lines_mask_a_password_in_a_url_and_on_its_own():
    settings = Settings(llm="openai", openai_base_url=OPENAI_URL, chroma_url=CHROMA_URL)
    handler = logging.StreamHandler()
    handler.addFilter(MaskSecrets(settings))
    records = []
    handler.emit = lambda record: records.append(handler.format(record))
    log = logging.getLogger("scrumbot.test-url-mask")
    log.addHandler(handler)
    try:
        log.warning("retrying %s", OPENAI_URL)
        log.warning("server said: bad password %r for alice", PASSWORD)
    finally:
        log.removeHandler(handler)
    assert records == ["retrying http://****@127.0.0.1:9/v1", "server said: bad password '****' for alice"]


def test_settings_shown_keep_urls_without_credentials_as_they_are():
    shown = Settings(openai_base_url="http://127.0.0.1:8001/v1").redacted()
    assert shown["openai_base_url"] == "http://127.0.0.1:8001/v1"
