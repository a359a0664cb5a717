"""The chat page: build_app(assistant) -> gradio Blocks. Nothing launches at import.

Answers stream into the chat; each sentence ends with the numbers of the passages that say it
(computed by guard.cite), and under the answer only those passages are listed, with their place
in the course. A click on a number, of this answer or an older one, shows that answer's
passages beside the chat with the quoted text marked, and a link opens the original file at
that place (served by `file_route`, only files the course indexed). A course picker chooses
which course answers; a trainer also gets the Documents tab (the course's files: upload,
remove, re-index) and the Trainer tab (what students asked: the report of insights.py). Every
answer has thumbs up and down; a thumbs-down asks for an optional reason. The chat can be
stopped, retried, started afresh and exported."""

from __future__ import annotations

import html
import ipaddress
import json
import logging
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .api import FEEDBACK_REASONS, Answer, Assistant, new_id
from .config import Settings, apply_offline_env
from .errors import ConfigError, ScrumbotError

log = logging.getLogger("scrumbot.ui")

NO_SOURCES = "<p><em>Sources of the answer appear here: click a number in an answer.</em></p>"
STOPPED = "*(stopped)*"
NOT_A_TRAINER = "Only a trainer account may change a course."
CSS = """
#sources .passage { font-size: 0.9em; white-space: pre-wrap; border-left: 3px solid #ccc; padding-left: 0.6em; }
#sources mark { background: #ffe066; padding: 0 1px; }
#sources details { margin-bottom: 0.6em; }
#sources .not-answering summary::after { content: " — does not answer the question"; font-style: italic; }
footer { display: none !important; }
"""
FILE_ROUTE = "scrumbot/file"  # relative: also right when the page is served under a prefix
# A click on a marker or a source, anywhere in the chat (older answers too), asks the server for
# that answer's passages (#cite-pick, #cite-show are hidden controls) and then shows the quote.
HEAD = """<script>
document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest('a[href*="#cite-"]');
  if (!link) return;
  event.preventDefault();
  event.stopPropagation();
  const box = document.querySelector("#cite-pick textarea, #cite-pick input");
  box.value = link.getAttribute("href").split("#cite-")[1];
  box.dispatchEvent(new Event("input", {bubbles: true}));
  setTimeout(() => document.querySelector("#cite-show").click(), 50);
}, true);
</script>"""
SHOW_QUOTE = """() => { setTimeout(() => {
  const mark = document.querySelector("#sources details[open] mark");
  if (mark) mark.scrollIntoView({block: "center"});
}, 100); }"""


WHY = "\n\n*Why: "  # the note under a refusal; not part of the answer when it is sent back as history


def _link_text(text: str) -> str:
    return html.escape(text).replace("[", "\\[").replace("]", "\\]").replace("*", "\\*").replace("_", "\\_")


def marked_text(answer: Answer, turn: int) -> str:
    """The answer as the chat shows it: each sentence's source numbers, as links to its passages."""
    return answer.marked(lambda ns: "".join(f"[[{n}]](#cite-{turn}-{n})" for n in ns))


def citations(answer: Answer, turn: int = 0) -> str:
    """The numbered list of the passages an answer quotes, under it in the chat; under a refusal, why."""
    if answer.refused:
        return f"{WHY}{html.escape(answer.reason)}.*" if answer.reason else ""
    if not answer.sources:
        return ""
    return "\n\n" + "  \n".join(f"[{i}] [{_link_text(s.place)}](#cite-{turn}-{i})"
                                   for i, s in enumerate(answer.sources, 1))


_MARKER = re.compile(r" ?\[\[\d+\]\]\(#cite-\d+-\d+\)")


def _plain(content: str) -> str:
    """An answer of the chat as it was answered: without markers, source list or note."""
    return _MARKER.sub("", content.split("\n\n[1] ")[0].split(WHY)[0])


def file_key(root: str, source: str) -> str:
    """A file's name in links: a digest of where it was indexed from (no local path on the page)."""
    import hashlib

    return hashlib.sha256(f"{root}::{source}".encode()).hexdigest()[:24]


def file_link(source, course: str) -> str | None:
    """Where the original file opens at the passage: a PDF at its page, an HTML page at the
    section's anchor (other formats at their start)."""
    if not source.root:
        return None
    from urllib.parse import quote

    place = f"#page={source.page}" if source.page else f"#{quote(source.anchor)}" if source.anchor else ""
    return f"{FILE_ROUTE}/{quote(course)}/{file_key(source.root, source.source)}/{quote(Path(source.source).name)}{place}"


def _highlighted(text: str, spans: list[tuple[int, int]]) -> str:
    """The passage as HTML, the quoted spans in <mark>."""
    out, at = [], 0
    for start, end in sorted(spans):
        if start < at:
            continue
        out += [html.escape(text[at:start]), "<mark>", html.escape(text[start:end]), "</mark>"]
        at = end
    return "".join(out) + html.escape(text[at:])


def _passage(n: int | None, s: dict, opened: bool, css: str = "") -> str:
    number = f"<b>[{n}]</b> " if n else ""
    link = (f' · <a href="{html.escape(s["link"])}" target="_blank" rel="noopener">open the file here</a>'
            if s.get("link") else "")
    return (f'<details class="{css}"{" open" if opened else ""}><summary>{number}{html.escape(s["place"])} · '
            f'score {s["score"]:.2f}{link}</summary><div class="passage">'
            f'{_highlighted(s["text"], [tuple(q) for q in s.get("quotes", [])])}</div></details>')


def sources_html(record: dict | None, opened: int | None = None) -> str:
    """The sources panel for one answer's record (`_record`): its passages, the quotes marked;
    all open, or only number `opened`. Under a refusal, the closest passages, marked as not
    answering."""
    if record is None:
        return NO_SOURCES
    if record["refused"]:
        closest = record.get("closest") or []
        if not closest:
            return "<p><em>No passage of the course answers this question.</em></p>"
        return ("<p><b>Not in the course.</b> Closest passages:</p>"
                + "".join(_passage(None, s, True, "not-answering") for s in closest))
    if not record["sources"]:
        return "<p><em>The sources appear when the answer is complete.</em></p>"
    head = f'<p class="sources-of">Sources of answer {record["turn"] + 1}: {html.escape(record["question"])}</p>'
    return head + "".join(_passage(i, s, opened in (None, i)) for i, s in enumerate(record["sources"], 1))


def sources_markdown(answer: Answer | None, turn: int = 0, course: str = "") -> str:
    """The sources panel for an Answer (see sources_html)."""
    return sources_html(None if answer is None else _record(answer, course, turn))


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
            pairs.append((question, _plain(content)))
            question = None
    return pairs


@dataclass
class Session:
    """What the server keeps for one open page: the stop signal of its running answer and the
    answers of its conversation (with their passages, for the export)."""

    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[dict] = field(default_factory=list)
    # the question log: this conversation's random id, and each answer's row by its chat index
    conversation: str = field(default_factory=new_id)
    log_ids: dict[int, str] = field(default_factory=dict)

    def new_conversation(self) -> None:
        self.answers.clear()
        self.conversation, self.log_ids = new_id(), {}


class Sessions:
    """Session state by Gradio's session hash; dropped when the page closes."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, request=None) -> Session:
        key = getattr(request, "session_hash", None) or "local"
        with self._lock:
            return self._by_hash.setdefault(key, Session())

    def drop(self, request=None) -> None:
        with self._lock:
            self._by_hash.pop(getattr(request, "session_hash", None) or "local", None)


def _takes_request(fn):
    """Gradio hands a handler the visitor's request (session, username) when its annotation *is*
    gr.Request; here annotations are strings naming a gradio imported inside functions, which
    Gradio cannot resolve, so the class is put in their place."""
    import gradio as gr

    fn.__annotations__ = {**fn.__annotations__, "request": gr.Request}
    return fn


def make_respond(assistant: Assistant, sessions: Sessions | None = None):
    """The chat handler: (message, chat, course) -> streamed (textbox, chat, sources) updates.
    A function of its own so tests can drive it without a browser or a server."""
    apply_offline_env()
    import gradio as gr

    sessions = sessions or Sessions()

    @_takes_request
    def respond(message: str, chat: list[dict], course: str | None = None, request: gr.Request = None):
        session = sessions.get(request)
        session.stop.clear()
        chat = _chat(chat)
        history = _history(chat)
        message = _text(message) or ""
        turn = sum(m["role"] == "assistant" for m in chat)  # this answer's number in the chat, from 0
        chat += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        try:
            bot = _course_assistant(assistant, course, request)
            final = None
            answers = bot.stream(message, history, stop=session.stop, conversation_id=session.conversation)
            for final in answers:
                if session.stop.is_set():
                    break
                chat[-1] = {"role": "assistant", "content": final.text or "…"}
                yield "", chat, sources_markdown(final, turn, bot.course)
            # closing the stream closes the model's own stream and frees the model for the next
            # question (the stream also checks `stop` itself between tokens)
            answers.close()
            if final is not None and final.log_id:
                session.log_ids[len(chat) - 1] = final.log_id
            if final is not None and not final.done:
                text = f"{final.text} … {STOPPED}" if final.text else STOPPED
                chat[-1] = {"role": "assistant", "content": text}
                session.answers.append({**_record(final, bot.course, turn), "stopped": True})
                yield "", chat, sources_markdown(final, turn, bot.course)
                return
            chat[-1] = {"role": "assistant", "content": marked_text(final, turn) + citations(final, turn)}
            record = _record(final, bot.course, turn)
            session.answers.append(record)
            yield "", chat, sources_html(record)
        except ScrumbotError as err:
            raise gr.Error(for_the_page(str(err), assistant.settings), print_exception=False) from None
        except Exception:
            log.exception("answering failed")
            raise gr.Error("Something went wrong while answering. The details are in the server log; "
                           "please try again.", print_exception=False) from None

    return respond


def _record(answer: Answer, course: str, turn: int = 0) -> dict:
    """What the page keeps of an answer: for the export, and for the sources panel when one of
    its numbers is clicked later. No local folder in it (the page may be remote)."""
    def page_source(s, quotes=()) -> dict:
        data = {k: v for k, v in s.as_dict().items() if k != "root"}
        return {**data, "label": s.label, "place": s.place, "link": file_link(s, course), "quotes": sorted(quotes)}

    quotes: dict[int, set] = {}
    for c in answer.citations:
        for q in c.quotes:
            quotes.setdefault(q.source, set()).add((q.start, q.end))
    data = answer.as_dict()
    data.pop("retrieved")
    return {**data, "question": answer.question, "course": course, "stopped": False, "turn": turn,
            "marked": answer.marked(),
            "sources": [page_source(s, quotes.get(i, ())) for i, s in enumerate(answer.sources)],
            # a refusal shows what came closest, marked as not answering
            "closest": [page_source(s) for s in answer.retrieved[:2]] if answer.refused else []}


def make_show_passage(sessions: "Sessions"):
    """The handler behind a click on a number: "turn-n" -> that answer's sources, n opened."""

    @_takes_request
    def show_passage(pick: str, request=None) -> str:
        m = re.fullmatch(r"(\d+)-(\d+)", (pick or "").strip())
        if not m:
            return NO_SOURCES
        turn, n = int(m.group(1)), int(m.group(2))
        record = next((a for a in reversed(sessions.get(request).answers) if a.get("turn") == turn), None)
        if record is None:
            return "<p><em>That answer's sources are no longer kept (the page was reloaded or the server restarted).</em></p>"
        return sources_html(record, opened=n)

    return show_passage


def _course_assistant(assistant: Assistant, course: str | None, request=None) -> Assistant:
    """The assistant of the course picked on the page. Only a trainer may name a course that
    does not exist yet (that creates it); anyone else gets a message, and no state is made."""
    course = course or assistant.course
    if course == assistant.course:
        return assistant
    if course not in assistant._courses and not trainer(assistant.settings, request):
        if course not in {c["course"] for c in assistant.courses()}:
            raise ConfigError(f"There is no course {course!r}.", "Pick one of the list.")
    return assistant.for_course(course)


def trainer(settings: Settings, request) -> bool:
    return is_trainer(settings, getattr(request, "username", None))


def conversation_markdown(answers: list[dict]) -> str:
    """The conversation as Markdown: each question, its answer, the citations and the passages."""
    lines = ["# scrumbot conversation", ""]
    for i, a in enumerate(answers, 1):
        lines += [f"## {i}. {a['question']}", "", f"*Course: {a['course']}*", ""]
        text = a.get("marked") or a["answer"]
        text += f" {STOPPED}" if a.get("stopped") else ""
        lines += [text, ""]
        if a["refused"] and a.get("reason"):
            lines += [f"*Not answered: {a['reason']}*", ""]
        for n, s in enumerate(a["sources"], 1):
            lines += [f"[{n}] {s['label']} (score {s['score']:.2f})", ""]
            lines += [f"> **Quoted:** {' '.join(s['text'][q0:q1].split())}" for q0, q1 in s.get("quotes", [])]
            lines += [f"> {line}" for line in s["text"].splitlines() if line.strip()] + [""]
    return "\n".join(lines)


def export_files(answers: list[dict]) -> list[str]:
    """Write the conversation as conversation.md and conversation.json; their paths."""
    folder = Path(tempfile.mkdtemp(prefix="scrumbot-export-"))
    md, js = folder / "conversation.md", folder / "conversation.json"
    md.write_text(conversation_markdown(answers), encoding="utf-8")
    js.write_text(json.dumps({"exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "turns": answers}, indent=2, ensure_ascii=False), encoding="utf-8")
    return [str(md), str(js)]


DOC_COLUMNS = ["File", "Chunks", "Indexed", "From"]


def documents_table(bot: Assistant) -> list[list]:
    rows = []
    for d in bot.documents():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(d["indexed_at"])) if d["indexed_at"] else "—"
        rows.append([d["source"], d["chunks"], when, "uploaded" if d["uploaded"] else for_the_page(d["root"], bot.settings)])
    return rows


def make_documents(assistant: Assistant):
    """The Documents tab's handlers, each checking again that the visitor is a trainer."""
    apply_offline_env()
    import gradio as gr

    settings = assistant.settings

    def guarded(course, request):
        if not trainer(settings, request):
            raise gr.Error(NOT_A_TRAINER, print_exception=False)
        try:
            return assistant.for_course(course or assistant.course)
        except ScrumbotError as err:
            raise gr.Error(for_the_page(str(err), settings), print_exception=False) from None

    def listing(bot: Assistant):
        docs = bot.documents()
        table = gr.DataFrame(value=documents_table(bot) or None, headers=DOC_COLUMNS)
        picks = gr.Dropdown(choices=[(d["source"], d["source_id"]) for d in docs], value=None)
        return table, picks

    def courses_update(bot: Assistant):
        names = [c["course"] for c in assistant.courses()]
        if bot.course not in names:
            names.append(bot.course)
        return gr.Dropdown(choices=names, value=bot.course)

    def run(work, bot: Assistant):
        try:
            report = work()
        except ScrumbotError as err:
            raise gr.Error(for_the_page(str(err), settings), print_exception=False) from None
        return (f"**{bot.course}**: " + for_the_page(report.summary(), settings).replace("\n", "  \n"),
                *listing(bot), courses_update(bot))

    @_takes_request
    def upload(files, course, request: gr.Request = None, progress=gr.Progress()):
        bot = guarded(course, request)
        paths = [f if isinstance(f, str) else getattr(f, "name", "") for f in (files or [])]
        if not paths:
            raise gr.Error("Choose or drop one or more files first.", print_exception=False)

        def embedding(done: int, total: int) -> None:
            progress(done / total, desc=f"embedding {done}/{total} chunks")

        return run(lambda: bot.add_files([(Path(p).name, Path(p)) for p in paths], progress=embedding), bot)

    @_takes_request
    def remove(source_ids, course, request: gr.Request = None):
        bot = guarded(course, request)
        if not source_ids:
            raise gr.Error("Pick the documents to remove first.", print_exception=False)
        return run(lambda: bot.remove_documents(source_ids), bot)

    @_takes_request
    def reindex(course, request: gr.Request = None, progress=gr.Progress()):
        bot = guarded(course, request)
        return run(lambda: bot.reindex(progress=lambda d, t: progress(d / t, desc=f"embedding {d}/{t} chunks")), bot)

    @_takes_request
    def show(course, request: gr.Request = None):
        if not trainer(settings, request):
            return gr.DataFrame(value=None), gr.Dropdown(choices=[], value=None)
        return listing(guarded(course, request))

    return upload, remove, reindex, show


def make_feedback(assistant: Assistant, sessions: Sessions):
    """The thumbs: (like event) -> (the reason form's visibility, the answer it is about).
    A thumbs-down opens the optional one-line reason; a thumbs-up or taking it back closes it."""
    apply_offline_env()
    import gradio as gr

    def on_like(data: gr.LikeData, request: gr.Request = None):
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        log_id = sessions.get(request).log_ids.get(index)
        rating = {True: "up", False: "down"}.get(data.liked)  # "" when a thumb is taken back
        if not log_id:  # logging is off (or an answer from before a restart)
            return gr.update(visible=False), None
        assistant.feedback(log_id, rating)
        return gr.update(visible=rating == "down"), log_id if rating == "down" else None

    def send_reason(log_id: str | None, choice: str | None, text: str | None):
        if log_id:
            parts = [p for p in (choice if choice in FEEDBACK_REASONS else "", (_text(text) or "").strip()) if p]
            assistant.feedback(log_id, "down", ": ".join(parts))
            gr.Info("Thank you: your trainer will see it.")
        return gr.update(visible=False), None, None, ""

    on_like.__annotations__ = {**on_like.__annotations__, "data": gr.LikeData}  # (see _takes_request)
    return _takes_request(on_like), send_reason


def make_trainer_report(assistant: Assistant):
    """The Trainer tab's handler: the report of the course picked, as HTML, for trainers only
    (checked here as well: a hidden tab does not stop a direct call to its endpoint)."""
    apply_offline_env()
    import gradio as gr

    @_takes_request
    def trainer_report(since: str | None, course: str | None = None, request: gr.Request = None):
        if not trainer(assistant.settings, request):
            raise gr.Error("Only a trainer account can read the trainer report.", print_exception=False)
        try:
            report = assistant.for_course(course or assistant.course).report(
                since=None if since in (None, "", "all") else since)
        except ScrumbotError as err:
            raise gr.Error(for_the_page(str(err), assistant.settings), print_exception=False) from None
        return report.html(page=False)

    return trainer_report


def build_app(assistant: Assistant):
    apply_offline_env()
    import gradio as gr
    from .ingest import SUPPORTED

    settings = assistant.settings
    sessions = Sessions()
    respond = make_respond(assistant, sessions)
    upload, remove, reindex, show_documents = make_documents(assistant)
    on_like, send_reason = make_feedback(assistant, sessions)
    trainer_report = make_trainer_report(assistant)

    @_takes_request
    def examples_for(course, request: gr.Request = None):
        try:
            questions = _course_assistant(assistant, course, request).example_questions()
        except ScrumbotError:
            questions = []
        return gr.Dataset(samples=[[q] for q in questions], visible=bool(questions))

    @_takes_request
    def on_load(request: gr.Request = None):
        names = [c["course"] for c in assistant.courses()]
        if assistant.course not in names:
            names.insert(0, assistant.course)
        allowed = trainer(settings, request)
        return (gr.Dropdown(choices=names, value=assistant.course, allow_custom_value=allowed,
                            info="Type a new name to start a course, then add documents to it." if allowed else None),
                gr.Tab(visible=allowed), gr.Tab(visible=allowed))

    @_takes_request
    def fresh(request: gr.Request = None):
        sessions.get(request).new_conversation()
        return [], "", NO_SOURCES, gr.File(value=None, visible=False), gr.update(visible=False)

    @_takes_request
    def stop(request: gr.Request = None):
        sessions.get(request).stop.set()

    @_takes_request
    def retry(chat, request: gr.Request = None):
        chat = _chat(chat)
        if len(chat) < 2 or chat[-2]["role"] != "user":
            raise gr.Error("There is no question to ask again yet.", print_exception=False)
        answers = sessions.get(request).answers
        if answers:
            answers.pop()
        return chat[-2]["content"], chat[:-2]

    @_takes_request
    def forget(request: gr.Request = None):
        sessions.drop(request)

    @_takes_request
    def export(request: gr.Request = None):
        answers = sessions.get(request).answers
        if not answers:
            raise gr.Error("Ask a question first: there is nothing to export yet.", print_exception=False)
        return gr.File(value=export_files(answers), visible=True)

    with gr.Blocks(title="scrumbot") as app:
        with gr.Row():
            gr.Markdown("## scrumbot\nAsk about the course. Answers come only from the course material, "
                        "and every answer shows the passages it came from.")
            course = gr.Dropdown(choices=[assistant.course], value=assistant.course, label="Course",
                                 elem_id="course", scale=0, min_width=240, filterable=True)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat-tab"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat",
                                             sanitize_html=True, render_markdown=True,
                                             feedback_options=("Like", "Dislike"))
                        with gr.Group(visible=False, elem_id="feedback") as reason_form:
                            reason = gr.Radio(list(FEEDBACK_REASONS), label="What was wrong? (optional)",
                                              elem_id="feedback-reason")
                            with gr.Row():
                                reason_text = gr.Textbox(placeholder="…or say it in a line", show_label=False,
                                                         max_lines=1, scale=5, elem_id="feedback-text")
                                reason_send = gr.Button("Send", scale=1, size="sm", elem_id="feedback-send")
                        with gr.Row():
                            box = gr.Textbox(placeholder="Ask a question about the course…", show_label=False,
                                             scale=5, elem_id="question", autofocus=True, max_lines=6)
                            send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                            halt = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id="stop")
                        examples = gr.Dataset(components=[box], samples=[], label="Try", elem_id="examples",
                                              visible=False)
                        with gr.Row():
                            again = gr.Button("Retry", size="sm", elem_id="retry")
                            clear = gr.Button("New conversation", size="sm", elem_id="new")
                            save = gr.Button("Export (Markdown + JSON)", size="sm", elem_id="export")
                        exported = gr.File(label="Conversation", file_count="multiple", visible=False,
                                           interactive=False, elem_id="exported")
                    with gr.Column(scale=2):
                        gr.Markdown("### Sources")
                        sources = gr.HTML(NO_SOURCES, elem_id="sources")
                        # what a click on a number asks for (see HEAD): rendered, never shown
                        pick = gr.Textbox(visible="hidden", elem_id="cite-pick")
                        show = gr.Button("show", visible="hidden", elem_id="cite-show")
            with gr.Tab("Documents", id="documents-tab", visible=False, elem_id="documents-tab") as docs_tab:
                gr.Markdown(f"The files of the course picked above. Drop files here to add them "
                            f"({' '.join(SUPPORTED)}, up to {settings.max_file_mb} MB each); a new "
                            f"course name in the picker starts a new course.")
                files = gr.File(label="Add documents", file_count="multiple", file_types=list(SUPPORTED),
                                type="filepath", elem_id="upload")
                summary = gr.Markdown(elem_id="index-summary")
                table = gr.DataFrame(headers=DOC_COLUMNS, interactive=False, elem_id="documents",
                                     wrap=True)
                with gr.Row():
                    picks = gr.Dropdown(label="Documents to remove", multiselect=True, choices=[],
                                        elem_id="remove-pick", scale=3)
                    drop = gr.Button("Remove", variant="stop", scale=1, elem_id="remove")
                    redo = gr.Button("Re-index", scale=1, elem_id="reindex")
            with gr.Tab("Trainer", id="trainer-tab", visible=False, elem_id="trainer-tab") as trainer_tab:
                with gr.Row():
                    since = gr.Dropdown(["7d", "30d", "90d", "all"], value="30d", label="Period", scale=1,
                                        elem_id="trainer-since")
                    refresh = gr.Button("Refresh report", variant="primary", scale=1, elem_id="trainer-refresh")
                report = gr.HTML("<p>Press <b>Refresh report</b> to read what students of the course picked "
                                 "above asked.</p>", elem_id="trainer-report")
        disliked = gr.State(None)  # the answer the reason form is about
        if settings.log_questions:
            gr.Markdown("Questions are logged for the trainer, without names.", elem_id="log-notice")

        chat_out = [box, chatbot, sources]
        for trigger in (box.submit, send.click):
            trigger(respond, [box, chatbot, course], chat_out,
                    api_name="ask" if trigger == send.click else False)
        # its own group, unlimited: a stop must not wait in the queue behind the answer it stops
        halt.click(stop, None, None, api_name=False, concurrency_limit=None, concurrency_id="stop")
        again.click(retry, [chatbot], [box, chatbot], api_name=False).success(
            respond, [box, chatbot, course], chat_out, api_name=False)
        clear.click(fresh, None, [chatbot, box, sources, exported, reason_form], api_name=False)
        save.click(export, None, exported, api_name=False)
        show.click(make_show_passage(sessions), [pick], sources, api_name=False, concurrency_limit=None,
                   concurrency_id="show").then(None, None, None, js=SHOW_QUOTE, api_name=False)
        examples.click(lambda sample: sample[0] if sample else "", examples, box, api_name=False)
        # a new course is a new conversation; its examples follow (they may take a few answers)
        course.change(fresh, None, [chatbot, box, sources, exported, reason_form], api_name=False).then(
            show_documents, [course], [table, picks], api_name=False).then(
            examples_for, [course], examples, api_name=False)
        # indexing runs in a queue of its own: questions keep being answered meanwhile
        index_out = [summary, table, picks, course]
        files.upload(upload, [files, course], index_out, api_name=False,
                     concurrency_limit=1, concurrency_id="index").then(
            lambda: None, None, files, api_name=False).then(examples_for, [course], examples, api_name=False)
        drop.click(remove, [picks, course], index_out, api_name=False,
                   concurrency_limit=1, concurrency_id="index")
        redo.click(reindex, [course], index_out, api_name=False,
                   concurrency_limit=1, concurrency_id="index")
        chatbot.like(on_like, None, [reason_form, disliked], api_name=False)
        reason_send.click(send_reason, [disliked, reason, reason_text], [reason_form, disliked, reason, reason_text],
                          api_name=False)
        refresh.click(trainer_report, [since, course], [report], api_name="trainer_report")
        app.load(on_load, None, [course, docs_tab, trainer_tab], api_name=False).then(
            show_documents, [course], [table, picks], api_name=False).then(
            examples_for, [course], examples, api_name=False)
        app.unload(forget)
    app.scrumbot_assistant = assistant  # launch() serves its indexed files (add_file_route)
    return app


_TYPES = {".pdf": "application/pdf", ".html": "text/html", ".htm": "text/html", ".txt": "text/plain",
          ".md": "text/plain", ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}


def indexed_file(assistant: Assistant, course: str, key: str) -> Path | None:
    """The file a link names: one the course's index holds (never a path from the request),
    inside the folder it was indexed from (a symlink out of it is not followed)."""
    try:
        bot = assistant.for_course(course)
        documents = bot.documents() if course in {c["course"] for c in assistant.courses()} else []
    except ScrumbotError:
        return None
    for d in documents:
        if file_key(d["root"], d["source"]) == key:
            root = Path(d["root"]).resolve()
            path = (root / d["source"]).resolve()
            return path if path.is_relative_to(root) and path.is_file() else None
    return None


def add_file_route(server_app, assistant: Assistant) -> None:
    """GET /scrumbot/file/<course>/<key>/<name>: an indexed file, to open at a passage's place.
    Behind the page's login when there is one. A course HTML page runs sandboxed (no script,
    no access to the page's session); other text is sent as plain text."""
    from fastapi import HTTPException, Request
    from fastapi.responses import FileResponse

    async def original(course: str, key: str, name: str, request: Request):
        if server_app.auth is not None and _gradio_user(server_app, request) is None:
            raise HTTPException(401, "Log in on the chat page first.")
        path = indexed_file(assistant, course, key)
        if path is None or path.name != name:
            raise HTTPException(404, "No such file in this course's index.")
        kind = _TYPES.get(path.suffix.lower(), "application/octet-stream")
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        if kind == "text/html":
            headers["Content-Security-Policy"] = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        return FileResponse(path, media_type=kind + ("; charset=utf-8" if kind.startswith("text/") else ""),
                            headers=headers, content_disposition_type="attachment" if kind.endswith("document") else "inline",
                            filename=path.name)

    # annotations here are strings naming classes imported in this function: FastAPI needs the classes
    original.__annotations__ = {"course": str, "key": str, "name": str, "request": Request}
    server_app.add_api_route(f"/{FILE_ROUTE}/{{course}}/{{key}}/{{name}}", original, methods=["GET"])


def _gradio_user(server_app, request) -> str | None:
    """The logged-in user of the page, as Gradio's own routes find it (its access-token cookie)."""
    token = (request.cookies.get(f"access-token-{server_app.cookie_id}")
             or request.cookies.get(f"access-token-unsecure-{server_app.cookie_id}"))
    return server_app.tokens.get(token)


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
        raise ConfigError("SCRUMBOT_AUTH must be user:password (both parts non-empty), or several "
                          "such accounts separated by commas.",
                          "Set it like SCRUMBOT_AUTH=teacher:a-long-password,student:another-one.")
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
    # the page's example questions (a few answers), worked out while the page starts rather
    # than while the first visitor waits; kept per index version, so usually read from disk
    threading.Thread(target=assistant.example_questions, name="examples", daemon=True).start()
    launch(build_app(assistant), settings)


def launch(app, settings: Settings, *, block: bool = True):
    """Serve `app` as `scrumbot serve` does (block=False returns once it listens, for tests)."""
    # llama.cpp answers one question at a time; others wait in Gradio's queue (the page shows it)
    limit = 1 if settings.llm == "llamacpp" else 4
    auth = settings.accounts() or None
    served = app.queue(default_concurrency_limit=limit, max_size=64).launch(
        server_name=settings.host, server_port=settings.port, auth=auth, css=CSS, head=HEAD,
        show_error=True, footer_links=[], ssr_mode=False, quiet=True, prevent_thread_lock=True,
        # an upload bigger than the limit is refused before it lands on the disk
        max_file_size=settings.max_file_mb * 1024 * 1024,
    )
    add_file_route(app.server_app, app.scrumbot_assistant)
    if block:
        app.block_thread()
    return served
