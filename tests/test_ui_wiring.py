"""The chat page without a browser: build_app wires the handler, and the handler (make_respond)
streams the answer, adds the numbered citations and fills the sources panel."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from conftest import EchoChatModel, FakeEmbeddings
from scrumbot import Assistant
from scrumbot.chain import NOT_COVERED
from scrumbot.config import Settings
from scrumbot.errors import ConfigError
from scrumbot.ui import build_app, check_exposure, make_respond

QUESTION = "Who is Braintrust Group?"
ANSWER = "Braintrust Group is a worldwide leader in Agile transformations."


@pytest.fixture
def gr():
    import gradio

    return gradio


def run_respond(respond, message: str, chat: list[dict]) -> list[tuple[str, list[dict], str]]:
    # the handler mutates and re-yields one list, as Gradio allows: keep each step as it was
    return [copy.deepcopy(step) for step in respond(message, chat)]


def test_build_app_wires_the_ask_endpoint(fake_assistant, gr):
    app = build_app(fake_assistant)
    assert isinstance(app, gr.Blocks)
    fns = {fn.api_name: fn for fn in app.fns.values()}
    ask = fns["ask"]
    assert [c.elem_id for c in ask.inputs] == ["question", "chat", "course"]
    assert [c.elem_id for c in ask.outputs] == ["question", "chat", "sources"]
    assert ask.fn.__name__ == "respond" and ask.api_visibility == "public"
    # Enter in the textbox and Retry run the same handler, without a second public endpoint
    others = [fn for fn in app.fns.values() if fn.fn is not None and fn.fn.__name__ == "respond"
              and fn is not ask]
    assert len(others) == 2 and all(fn.api_visibility == "private" for fn in others)


def test_respond_streams_answer_with_citations_and_sources(fake_assistant):
    fake_assistant.index()
    steps = run_respond(make_respond(fake_assistant), QUESTION, [])

    assert all(box == "" for box, _, _ in steps)  # the textbox is cleared
    chats = [chat for _, chat, _ in steps]
    assert all(c[0] == {"role": "user", "content": QUESTION} for c in chats)
    partial = [c[-1]["content"] for c in chats[:-1] if c[-1]["content"] != "…"]
    assert len(partial) >= 3 and all(b.startswith(a) for a, b in zip(partial, partial[1:]))

    final_chat, sources = chats[-1], steps[-1][2]
    assert len(final_chat) == 2 and final_chat[-1]["role"] == "assistant"
    text, _, footer = final_chat[-1]["content"].partition("\n\n[1] ")
    assert ANSWER in text
    assert footer.startswith("product-owner-101.txt")
    expected = fake_assistant.answer(QUESTION)
    assert footer.count("\n") == len(expected.sources) - 1  # one line per source, numbered
    assert "product-owner-101.txt" in sources and "**[1] product-owner-101.txt" in sources
    assert f"> {ANSWER}" in sources  # the passage text itself, quoted
    assert "score 0." in sources


def test_follow_up_gets_the_history_without_the_footer(fake_assistant):
    fake_assistant.index()
    respond = make_respond(fake_assistant)
    first_chat = run_respond(respond, QUESTION, [])[-1][1]
    assert "\n\n[1] " in first_chat[-1]["content"]

    second = run_respond(respond, "Where does it help clients?", first_chat)

    final_chat = second[-1][1]
    assert [m["role"] for m in final_chat] == ["user", "assistant", "user", "assistant"]
    prompt = fake_assistant.llm.calls[-1]
    history = [m.content for m in prompt[1:-1]]
    assert history[0] == QUESTION
    assert ANSWER in history[1] and "[1]" not in history[1] and "product-owner-101.txt" not in history[1]


def test_refusal_has_no_footer(fake_assistant):
    fake_assistant.index()
    steps = run_respond(make_respond(fake_assistant), "Which volcano erupted near Reykjavik yesterday?", [])
    _, chat, sources = steps[-1]
    assert chat[-1]["content"] == NOT_COVERED
    assert sources == "*No passage of the course answers this question.*"


def test_passage_html_is_escaped_in_the_sources(settings, tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "evil.txt").write_text('Sprint retrospective notes. <img src=x onerror="alert(1)"> '
                                   "The sprint retrospective improves the process.\n")
    bot = Assistant(settings.replace(min_score=0.2), embeddings=FakeEmbeddings(), embedder_name="fake",
                    llm=EchoChatModel())
    bot.index([docs])
    _, chat, sources = run_respond(make_respond(bot), "What does the sprint retrospective improve?", [])[-1]
    assert "evil.txt" in sources
    assert "<img" not in sources and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in sources


def test_known_errors_become_gr_error(fake_assistant, gr):
    respond = make_respond(fake_assistant)
    with pytest.raises(gr.Error) as err:  # no index yet
        run_respond(respond, QUESTION, [])
    assert "scrumbot index" in err.value.message

    fake_assistant.index()
    with pytest.raises(gr.Error) as err:
        run_respond(respond, "   ", [])
    assert "The question is empty." in err.value.message


def test_unexpected_errors_become_a_generic_gr_error(fake_assistant, gr, monkeypatch, caplog):
    def broken(*_a, **_kw):
        raise RuntimeError("secret internal detail")
        yield  # pragma: no cover - makes this a generator like the real one

    monkeypatch.setattr(fake_assistant, "stream", broken)
    with pytest.raises(gr.Error) as err:
        run_respond(make_respond(fake_assistant), QUESTION, [])
    assert "Something went wrong" in err.value.message
    assert "secret internal detail" not in err.value.message
    assert "secret internal detail" in caplog.text  # ...but the server log has it


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_password(host):
    check_exposure(Settings(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "myhost.example"])
def test_network_exposure_without_auth_is_refused(host):
    with pytest.raises(ConfigError) as err:
        check_exposure(Settings(host=host))
    assert "SCRUMBOT_AUTH" in str(err.value) and "SCRUMBOT_ALLOW_UNAUTHENTICATED" in str(err.value)


def test_network_exposure_with_auth_or_explicit_opt_out(caplog):
    check_exposure(Settings(host="0.0.0.0", auth="teacher:s3cret"))
    assert "WITHOUT AUTHENTICATION" not in caplog.text
    check_exposure(Settings.from_env({"SCRUMBOT_HOST": "0.0.0.0", "SCRUMBOT_ALLOW_UNAUTHENTICATED": "1"}))
    assert "WITHOUT AUTHENTICATION" in caplog.text
