"""The chat page: build_app(assistant) -> gradio Blocks. Nothing launches at import.

Answers stream into the chat; the passages each answer came from (file name, heading, text)
are shown beside it, numbered like the citations under the answer."""

from __future__ import annotations

import html
import ipaddress
import logging
import re
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


def _text(value) -> str | None:
    """A message's text: Gradio 6 sends content back as a list of parts ({"type": "text",
    "text": ...}); a browser may send lone surrogates, which Gradio cannot send back as JSON."""
    if isinstance(value, list):
        parts = [p.get("text") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
        value = "\n".join(parts) if parts else None
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "replace").decode("utf-8")


def _chat(messages) -> list[dict]:
    """The conversation as plain {"role", "content": str} messages, whatever the client sent."""
    chat = []
    for m in messages if isinstance(messages, list) else []:
        content = _text(m.get("content")) if isinstance(m, dict) else None
        if content is not None and m.get("role") in ("user", "assistant"):
            chat.append({"role": m["role"], "content": content})
    return chat


def for_the_page(message: str, settings: Settings) -> str:
    """An error message as students may see it: no secrets, no local folders."""
    from pathlib import Path

    message = settings.mask(message)
    for folder, name in ((settings.index_dir, "the index folder"), (settings.corpus_dir, "the corpus folder"),
                         (settings.models_dir, "the models folder"), (Path.home(), "~")):
        for form in {str(folder), str(folder.expanduser().resolve())}:
            if len(form) > 1:
                message = message.replace(form, name)
    return re.sub(r"(?<![\w.:/~])/(?:[\w.-]+/)+(?:[\w.-]*\w)?", "(a local path)", message)


def _history(messages: list[dict]) -> list[tuple[str, str]]:
    """(question, answer) pairs from Gradio's messages, without the citation footers."""
    pairs, question = [], None
    for m in _chat(messages):
        content = m["content"]
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
        chat = _chat(chat)
        history = _history(chat)
        message = _text(message) or ""
        chat += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            final = None
            for final in assistant.stream(message, history):
                chat[-1] = {"role": "assistant", "content": final.text or "…"}
                yield "", chat, sources_markdown(final)
            chat[-1] = {"role": "assistant", "content": final.text + citations(final)}
            yield "", chat, sources_markdown(final)
        except ScrumbotError as err:
            raise gr.Error(for_the_page(str(err), assistant.settings), print_exception=False) from None
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


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_trainer(settings: Settings, username: str | None) -> bool:
    """May this visitor change the course and read the trainer report? With SCRUMBOT_AUTH: the
    accounts listed in SCRUMBOT_TRAINERS (every account when it is unset). Without it: only on
    loopback, where the visitor is the local user. Checked again in every handler that changes
    something: hiding a control does not stop a direct API call."""
    if settings.auth:
        if not username:
            return False
        listed = {u.strip() for u in (settings.trainers or "").split(",") if u.strip()}
        return not listed or username in listed
    return is_loopback(settings.host)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond this machine without a password, unless explicitly told to."""
    if settings.auth is not None and not re.fullmatch(r"[^:]+:.+", settings.auth):
        raise ConfigError("SCRUMBOT_AUTH must be user:password (both parts non-empty).",
                          "Set it like SCRUMBOT_AUTH=teacher:a-long-password.")
    if is_loopback(settings.host) or settings.auth:
        return
    if not settings.allow_unauthenticated:
        raise ConfigError(
            f"Binding {settings.host} would expose the chat to the network without a password.",
            "Set SCRUMBOT_AUTH=user:password, or SCRUMBOT_ALLOW_UNAUTHENTICATED=1 if you really mean it.",
        )
    log.warning("SERVING %s WITHOUT AUTHENTICATION: anyone who can reach this port can use it.", settings.host)


class MaskSecrets(logging.Filter):
    """Log lines pass through Settings.mask: an error quoting a server's reply or a URL must not
    put an API key or a password in the log."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.settings.mask(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.settings.mask(logging.Formatter().formatException(record.exc_info))
        return True


def serve(settings: Settings | None = None) -> None:
    """Index the corpus if needed, load the models, then serve the page (blocks)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = settings or Settings.from_env()
    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskSecrets(settings))
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
