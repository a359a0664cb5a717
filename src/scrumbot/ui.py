"""The chat page: build_app(assistant) -> gradio Blocks. Nothing launches at import.

Answers stream into the chat; the passages each answer came from (file name, heading, text)
are shown beside it, numbered like the citations under the answer."""

from __future__ import annotations

import html
import ipaddress
import logging
import sys

from .api import Assistant, Answer
from .config import Settings, apply_offline_env
from .errors import ConfigError, ScrumbotError

log = logging.getLogger("scrumbot.ui")

EXAMPLES = [
    "Which cert suits a business analyst?",
    "What does a ScrumMaster do?",
    "How do I get the CSPO certification?",
]
NO_SOURCES = "*Sources of the answer appear here.*"
CSS = """
#sources blockquote { font-size: 0.9em; white-space: pre-wrap; }
footer { display: none !important; }
"""


def citations(answer: Answer) -> str:
    """The numbered source list shown under an answer in the chat."""
    if answer.refused or not answer.sources:
        return ""
    return "\n\n" + "  \n".join(f"[{i}] {html.escape(s.label)}" for i, s in enumerate(answer.sources, 1))


def sources_markdown(answer: Answer | None) -> str:
    if answer is None or not answer.sources:
        if answer is not None and answer.refused:
            return "*No passage of the course answers this question.*"
        return NO_SOURCES
    parts = []
    for i, s in enumerate(answer.sources, 1):
        quoted = "\n".join(f"> {html.escape(line)}" for line in s.text.splitlines() if line.strip())
        parts.append(f"**[{i}] {html.escape(s.label)}** · score {s.score:.2f}\n\n{quoted}")
    return "\n\n".join(parts)


def _history(messages: list[dict]) -> list[tuple[str, str]]:
    """(question, answer) pairs from Gradio's messages, without the citation footers."""
    pairs, question = [], None
    for m in messages or []:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, str):
            continue
        if m.get("role") == "user":
            question = content
        elif m.get("role") == "assistant" and question is not None:
            pairs.append((question, content.split("\n\n[1] ")[0]))
            question = None
    return pairs


def make_respond(assistant: Assistant):
    """The chat handler: (message, chat) -> streamed (textbox, chat, sources) updates.
    A function of its own so tests can drive it without a browser or a server."""
    apply_offline_env()
    import gradio as gr

    def respond(message: str, chat: list[dict]):
        chat = list(chat or [])
        history = _history(chat)
        chat += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            final = None
            for final in assistant.stream(message, history):
                chat[-1] = {"role": "assistant", "content": final.text or "…"}
                yield "", chat, sources_markdown(final)
            chat[-1] = {"role": "assistant", "content": final.text + citations(final)}
            yield "", chat, sources_markdown(final)
        except ScrumbotError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:
            log.exception("answering failed")
            raise gr.Error("Something went wrong while answering. The details are in the server log; "
                           "please try again.", print_exception=False) from None

    return respond


def build_app(assistant: Assistant):
    apply_offline_env()
    import gradio as gr

    respond = make_respond(assistant)
    with gr.Blocks(title="scrumbot") as app:
        gr.Markdown("## scrumbot\nAsk about the course. Answers come only from the course material, "
                    "and every answer shows the passages it came from.")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat",
                                     sanitize_html=True, render_markdown=True)
                with gr.Row():
                    box = gr.Textbox(placeholder="Ask a question about the course…", show_label=False,
                                     scale=5, elem_id="question", autofocus=True, max_lines=6)
                    send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                gr.Examples(EXAMPLES, inputs=box, label="Try")
                clear = gr.Button("New conversation", size="sm")
            with gr.Column(scale=2):
                gr.Markdown("### Sources")
                sources = gr.Markdown(NO_SOURCES, elem_id="sources", sanitize_html=True)
        for trigger in (box.submit, send.click):
            trigger(respond, [box, chatbot], [box, chatbot, sources], api_name="ask" if trigger == send.click else False)
        clear.click(lambda: ([], "", NO_SOURCES), None, [chatbot, box, sources], api_name=False)
    return app


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond this machine without a password, unless explicitly told to."""
    try:
        loopback = settings.host == "localhost" or ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = False
    if loopback or settings.auth:
        return
    if not settings.allow_unauthenticated:
        raise ConfigError(
            f"Binding {settings.host} would expose the chat to the network without a password.",
            "Set SCRUMBOT_AUTH=user:password, or SCRUMBOT_ALLOW_UNAUTHENTICATED=1 if you really mean it.",
        )
    log.warning("SERVING %s WITHOUT AUTHENTICATION: anyone who can reach this port can use it.", settings.host)


def serve(settings: Settings | None = None) -> None:
    """Index the corpus if needed, load the models, then serve the page (blocks)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = settings or Settings.from_env()
    check_exposure(settings)
    assistant = Assistant(settings)
    report = assistant.ensure_index()
    if report is not None:
        print(f"indexed {settings.corpus_dir}: {report.summary()}", file=sys.stderr)
    print("loading models…", file=sys.stderr)
    assistant.warm()
    app = build_app(assistant)
    # llama.cpp answers one question at a time; others wait in Gradio's queue (the page shows it)
    limit = 1 if settings.llm == "llamacpp" else 4
    auth = tuple(settings.auth.split(":", 1)) if settings.auth else None
    app.queue(default_concurrency_limit=limit, max_size=64).launch(
        server_name=settings.host, server_port=settings.port, auth=auth, css=CSS,
        show_error=True, footer_links=[], ssr_mode=False, quiet=True,
    )
