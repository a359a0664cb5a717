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
from scrumbot.ui import _history, build_app, check_exposure, make_respond

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
    # each sentence's number links to its passage in this answer (turn 0)
    assert ANSWER.replace(".", " [[1]](#cite-0-1).") in text
    assert footer.startswith("[product-owner-101.txt › ") and footer.endswith("](#cite-0-1)")
    expected = fake_assistant.answer(QUESTION)
    assert footer.count("\n") == len(expected.sources) - 1  # one line per source, numbered
    assert "<b>[1]</b> product-owner-101.txt" in sources
    assert f"<mark>{ANSWER}</mark>" in sources  # the passage text itself, the quote marked
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


def test_a_refusal_has_no_sources_and_says_why_under_it(fake_assistant):
    fake_assistant.index()
    steps = run_respond(make_respond(fake_assistant), "Which volcano erupted near Reykjavik yesterday?", [])
    _, chat, sources = steps[-1]
    answer, _, why = chat[-1]["content"].partition("\n\n")
    assert answer == NOT_COVERED and why.startswith("*Why: no passage close enough to the question (best 0.")
    assert sources.startswith("<p><b>Not in the course.</b> Closest passages:</p>")
    assert sources.count('<details class="not-answering"') in (1, 2) and "<mark>" not in sources
    # sent back as history, the note is not part of what was answered
    assert _history(chat) == [("Which volcano erupted near Reykjavik yesterday?", NOT_COVERED)]


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


# -- the workspace: courses, documents, stop, export ---------------------------------------------


class Visitor:
    """What Gradio hands a handler as gr.Request: the session and the logged-in account."""

    def __init__(self, username: str | None = None, session_hash: str = "s1"):
        self.username, self.session_hash = username, session_hash


def test_every_handler_that_takes_the_request_gets_it_from_gradio(fake_assistant, gr):
    import inspect

    from gradio.utils import get_type_hints

    app = build_app(fake_assistant)
    takers = [fn.fn for fn in app.fns.values() if fn.fn is not None
              and "request" in inspect.signature(fn.fn).parameters]
    assert {f.__name__ for f in takers} >= {"respond", "stop", "upload", "remove", "reindex", "export", "on_load"}
    assert all(get_type_hints(f).get("request") is gr.Request for f in takers)


def handler(app, name: str):
    return next(fn.fn for fn in app.fns.values() if fn.fn is not None and fn.fn.__name__ == name)


def test_only_a_trainer_may_upload_remove_or_reindex(settings, tmp_path, gr):
    bot = Assistant(settings.replace(auth="trainer:pw-one,student:pw-two", trainers="trainer", min_score=0.2),
                    embeddings=FakeEmbeddings(), embedder_name="fake", llm=EchoChatModel())
    app = build_app(bot)
    handout = tmp_path / "handout.md"
    handout.write_text("# Kanban\n\nKanban limits work in progress on a board.\n")
    for name, args in (("upload", ([str(handout)], "default")), ("remove", (["x::y"], "default")),
                       ("reindex", ("default",))):
        for visitor in (Visitor("student"), Visitor(None), None):
            with pytest.raises(gr.Error, match="Only a trainer"):
                handler(app, name)(*args, request=visitor)
    assert bot.store.count() == 0 and not settings.course_files().exists()

    summary, *_ = handler(app, "upload")([str(handout)], "kanban", request=Visitor("trainer"))
    assert "kanban**: added 1" in summary
    assert [d["source"] for d in bot.for_course("kanban").documents()] == ["handout.md"]
    # a student cannot conjure a course by naming one
    with pytest.raises(gr.Error, match="no course 'nope'"):
        run_respond(lambda m, c: handler(app, "respond")(m, c, "nope", request=Visitor("student")),
                    "What is kanban?", [])
    assert "nope" not in bot._courses


STREAMED: list[int] = []  # how many words each SlowEcho stream gave before it ended


class SlowEcho(EchoChatModel):
    """The echo model repeating its answer 50 times: a long answer to stop."""

    def _stream(self, messages, stop=None, run_manager=None, **kw):
        from langchain_core.messages import AIMessageChunk
        from langchain_core.outputs import ChatGenerationChunk

        STREAMED.append(0)
        for i, word in enumerate(self._reply(messages).split(" ") * 50):
            STREAMED[-1] += 1
            yield ChatGenerationChunk(message=AIMessageChunk(content=("" if i == 0 else " ") + word))


def test_stop_keeps_the_partial_answer_closes_the_model_stream_and_frees_the_model(settings, corpus):
    from scrumbot.ui import Sessions

    bot = Assistant(settings.replace(min_score=0.2), embeddings=FakeEmbeddings(), embedder_name="fake",
                    llm=SlowEcho())
    bot.index()
    sessions = Sessions()
    respond = make_respond(bot, sessions)
    steps = []
    for step in respond(QUESTION, [], None, Visitor()):
        steps.append(copy.deepcopy(step))
        if len(steps) == 3:
            sessions.get(Visitor()).stop.set()
    final = steps[-1][1][-1]["content"]
    assert final.endswith("*(stopped)*") and final.startswith("Braintrust")
    assert "[1] " not in final  # an unfinished answer carries no citations
    assert STREAMED[0] < 20  # the model's stream ended long before its last word (~450)
    assert not bot._generate_lock.locked()
    assert sessions.get(Visitor()).answers[-1]["stopped"] is True
    # the next question is answered in full
    again = run_respond(lambda m, c: respond(m, c, None, Visitor()), "Who is Braintrust Group?", [])
    assert "[1] [product-owner-101.txt" in again[-1][1][-1]["content"]


def test_export_writes_the_conversation_with_citations_and_passages(fake_assistant):
    import json

    from scrumbot.ui import Sessions, export_files

    fake_assistant.index()
    sessions = Sessions()
    respond = make_respond(fake_assistant, sessions)
    run_respond(lambda m, c: respond(m, c, None, Visitor()), QUESTION, [])
    md_path, json_path = export_files(sessions.get(Visitor()).answers)
    md = Path(md_path).read_text()
    assert f"## 1. {QUESTION}" in md and ANSWER in md
    assert "[1] product-owner-101.txt" in md and f"> {ANSWER}" in md
    turns = json.loads(Path(json_path).read_text())["turns"]
    assert turns[0]["question"] == QUESTION and ANSWER in turns[0]["answer"]
    assert turns[0]["sources"][0]["source"] == "product-owner-101.txt" and ANSWER in turns[0]["sources"][0]["text"]


def test_retry_asks_the_last_question_again_without_its_answer(fake_assistant, gr):
    fake_assistant.index()
    app = build_app(fake_assistant)
    chat = run_respond(make_respond(fake_assistant), QUESTION, [])[-1][1]
    question, rest = handler(app, "retry")(chat, request=Visitor())
    assert question == QUESTION and rest == []
    with pytest.raises(gr.Error, match="no question"):
        handler(app, "retry")([], request=Visitor())


def test_a_markdown_heading_in_a_passage_stays_a_line_of_the_passage():
    from scrumbot.api import Answer
    from scrumbot.retrieve import Source
    from scrumbot.ui import sources_markdown

    panel = sources_markdown(Answer("x", False, [Source("a.md", "# The Sprint\n\nBody\n## Who", 0.5)]))
    assert '<div class="passage"># The Sprint\n\nBody\n## Who</div>' in panel  # text, in HTML


def test_several_accounts_in_scrumbot_auth_each_masked_and_one_password_may_hold_a_comma():
    settings = Settings(host="0.0.0.0", auth="anna:pw-anna-1,ben:pw-ben-2", trainers="anna")
    assert settings.accounts() == [("anna", "pw-anna-1"), ("ben", "pw-ben-2")]
    check_exposure(settings)
    masked = settings.mask("login pw-anna-1 then pw-ben-2")
    assert "pw-anna" not in masked and "pw-ben" not in masked
    assert settings.redacted()["auth"] == "****"
    assert Settings(auth="teacher:a,long,password").accounts() == [("teacher", "a,long,password")]
    from scrumbot.ui import is_trainer

    assert is_trainer(settings, "anna") and not is_trainer(settings, "ben") and not is_trainer(settings, None)
