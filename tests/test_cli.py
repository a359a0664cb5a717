"""The command line through click's CliRunner, with SCRUMBOT_* pointing at tmp dirs. The CLI's
Assistant is built by scrumbot.cli._assistant from the real Settings; here it gets the fake
embedder and echo model, so everything below the CLI (Chroma included) is real."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import scrumbot.cli as cli
from conftest import REPO, EchoChatModel, FakeEmbeddings
from scrumbot import Assistant
from scrumbot.chain import NOT_COVERED

DOCUMENTED = ("index", "ask", "serve", "status", "courses", "eval", "models")


@pytest.fixture
def run(corpus: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke `scrumbot ARGS...`; returns click's Result (stdout and stderr kept apart)."""
    monkeypatch.setenv("SCRUMBOT_CORPUS_DIR", str(corpus))
    monkeypatch.setenv("SCRUMBOT_MIN_SCORE", "0.2")  # the fake embedder scores lower than MiniLM
    built: list[Assistant] = []

    def fake_backed(settings):
        built.append(Assistant(settings, embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words",
                               llm=EchoChatModel()))
        return built[-1]

    monkeypatch.setattr(cli, "_assistant", fake_backed)

    def invoke(*args: str):
        result = CliRunner().invoke(cli.main, list(args))
        result.assistants = built
        return result

    return invoke


def no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_index_prints_a_summary_then_nothing_changed(run, tmp_path):
    first = run("index")
    assert first.exit_code == 0, first.output
    assert re.search(r"added 1, updated 0, removed 0, unchanged 0, skipped 0 file\(s\); "
                     r"embedded [1-9]\d* chunk\(s\)", first.stdout)
    assert "Nothing changed" not in first.stdout
    # the index landed in SCRUMBOT_INDEX_DIR, built from the real settings
    assert first.assistants[0].settings.index_dir == tmp_path / "index"
    assert (tmp_path / "index" / "records.sqlite").exists()

    second = run("index")
    assert second.exit_code == 0
    assert "unchanged 1" in second.stdout and "embedded 0 chunk(s)" in second.stdout
    assert "Nothing changed: nothing was embedded." in second.stdout
    assert second.assistants[-1].embeddings.embedded == []


def test_index_json_and_explicit_paths(run, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "kanban.md").write_text("# Kanban\n\nKanban limits work in progress on a board.\n")
    (extra / "deck.pptx").write_bytes(b"PK")
    result = run("index", "--json", str(extra))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["added"] == ["kanban.md"] and report["chunks_embedded"] == 1
    assert report["skipped"] == [["deck.pptx", "unsupported type .pptx"]]


def test_index_of_a_missing_path_is_a_clean_error(run, tmp_path):
    result = run("index", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Check the path" in result.output
    no_traceback(result)


def test_ask_streams_the_answer_and_lists_sources(run):
    run("index")
    result = run("ask", "Who is Braintrust Group?")
    assert result.exit_code == 0, result.output
    answer, _, listing = result.stdout.partition("\n  [1] ")
    assert "Braintrust Group is a worldwide leader in Agile transformations [1]." in answer
    assert re.match(r"product-owner-101\.txt.* \(score 0\.\d\d\)$", listing, re.M), result.stdout


def test_ask_json_has_answer_refused_sources(run):
    run("index")
    result = run("ask", "--json", "Who is Braintrust Group?")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"answer", "refused", "sources"} <= set(data)
    assert data["refused"] is False and "worldwide leader" in data["answer"]
    assert data["sources"]
    for s in data["sources"]:
        assert s["source"] == "product-owner-101.txt"
        assert isinstance(s["text"], str) and s["text"]
        assert isinstance(s["score"], float) and 0.2 <= s["score"] <= 1


def test_ask_out_of_scope(run):
    run("index")
    plain = run("ask", "Which volcano erupted near Reykjavik yesterday?")
    assert plain.exit_code == 0
    # no sources under a refusal: the closest passages, said not to answer it
    answer, closest = plain.stdout.split("\n\nNot in the course. Closest passages (they do not answer it):\n")
    assert answer == NOT_COVERED and "[1]" not in plain.stdout
    assert re.fullmatch(r"(  - product-owner-101\.txt.* \(score 0\.\d\d\)\n){1,2}", closest), closest
    data = json.loads(run("ask", "--json", "Which volcano erupted near Reykjavik yesterday?").stdout)
    assert data["refused"] is True and data["answer"] == NOT_COVERED and data["sources"] == []
    assert data["citations"] == [] and data["retrieved"]
    assert data["reason"].startswith("no passage close enough") and data["scores"]["retrieval"] < 0.2
    why = run("ask", "--why", "Which volcano erupted near Reykjavik yesterday?").stdout.splitlines()
    assert why[0] == NOT_COVERED and why[-1].startswith("why: no passage close enough to the question (best 0.")
    assert why[-1].endswith("needs 0.20) [retrieval 0.{}]".format(why[-1].split("best 0.")[1][:2]))


def test_ask_marks_each_sentence_and_quotes_its_source(run):
    run("index")
    out = run("ask", "Who is Braintrust Group?").stdout
    assert "Braintrust Group is a worldwide leader in Agile transformations [1]." in out
    # piped: the quote between “ ”, no terminal styling
    assert "      “Braintrust Group is a worldwide leader in Agile transformations.”" in out and "\033[" not in out
    data = json.loads(run("ask", "--json", "Who is Braintrust Group?").stdout)
    (c,) = [c for c in data["citations"] if "worldwide" in c["sentence"]]
    assert data["answer"][c["start"]:c["end"]] == c["sentence"]
    q = c["quotes"][0]
    assert data["sources"][q["source"]]["text"][q["start"]:q["end"]] == q["text"]
    assert q["text"] == "Braintrust Group is a worldwide leader in Agile transformations." and q["marker"] == 1


def test_status_shows_sources_and_embedder(run, corpus):
    missing = run("status")
    assert missing.exit_code == 0
    assert "missing: run `scrumbot index`" in missing.stdout

    run("index")
    result = run("status")
    assert result.exit_code == 0, result.output
    assert "embedder: fake-bag-of-words" in result.stdout
    assert f"from {corpus.resolve().as_posix()}:" in result.stdout
    assert re.search(r"^  product-owner-101\.txt \(\d+ chunks\)$", result.stdout, re.M)
    data = json.loads(run("status", "--json").stdout)
    assert data["index"]["exists"] and data["index"]["embedder"] == "fake-bag-of-words"


def test_status_json_hides_secrets(run, monkeypatch):
    monkeypatch.setenv("SCRUMBOT_OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("SCRUMBOT_AUTH", "admin:hunter2")
    result = run("status", "--json")
    assert result.exit_code == 0
    assert "sk-very-secret" not in result.output and "hunter2" not in result.output
    assert json.loads(result.stdout)["settings"]["auth"] == "****"


@pytest.mark.parametrize("args", [("ask", "Who is Braintrust Group?"), ("ask", "--json", "Who is it for?")])
def test_missing_index_is_a_clean_error(run, args):
    result = run(*args)
    assert result.exit_code == 1
    assert "scrumbot index" in result.output and "no index" in result.output.lower()
    no_traceback(result)


def test_bad_question_and_bad_setting_are_clean_errors(run, monkeypatch):
    run("index")
    empty = run("ask", "   ")
    assert empty.exit_code == 1 and "The question is empty." in empty.output
    no_traceback(empty)

    monkeypatch.setenv("SCRUMBOT_K", "three")
    bad = run("ask", "Who is Braintrust Group?")
    assert bad.exit_code == 1 and "SCRUMBOT_K='three' is not a valid int" in bad.output
    no_traceback(bad)


# -- docs that cannot drift --------------------------------------------------------------------


def all_commands(group: click.Group = cli.main, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(cli.main, ["--help"])
    assert top.exit_code == 0 and "grounded" in top.output
    commands = list(all_commands())
    assert len(commands) >= 6
    for path, command in commands:
        doc = (command.help or "").strip()
        assert doc, f"`scrumbot {' '.join(path)}` has no help text"
        result = runner.invoke(cli.main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert " ".join(doc.split("\n\n")[0].split()) in " ".join(result.output.split())
        assert path[-1] in top.output or path[0] in top.output
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert (param.help or "").strip(), f"`scrumbot {' '.join(path)} {param.opts[0]}` has no help"


def test_cli_has_the_documented_commands():
    assert set(DOCUMENTED) <= set(cli.main.commands), \
        f"missing: {sorted(set(DOCUMENTED) - set(cli.main.commands))}"


def test_readme_mentions_every_command():
    readme = REPO / "README.md"
    assert readme.exists(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    for name in DOCUMENTED:
        assert re.search(rf"\bscrumbot {name}\b", text), f"README.md never shows `scrumbot {name}`"
    for path, _ in all_commands():
        assert " ".join(path) in text, f"README.md never mentions `scrumbot {' '.join(path)}`"


def test_courses_index_list_and_remove(run, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "kanban.md").write_text("# Kanban\n\nKanban limits work in progress on a visible board.\n")
    assert run("index").exit_code == 0
    added = run("index", str(extra), "--course", "agile-extras")
    assert added.exit_code == 0 and "added 1" in added.stdout, added.output

    listed = run("courses")
    assert re.search(r"^default +1 document\(s\) +\d+ chunks +\(collection scrumbot\)$", listed.stdout, re.M)
    assert re.search(r"^agile-extras +1 document\(s\) +1 chunks +\(collection scrumbot.agile-extras\)$",
                     listed.stdout, re.M)
    as_json = json.loads(run("courses", "--json").stdout)
    assert [c["course"] for c in as_json] == ["default", "agile-extras"]
    asked = run("ask", "--course", "agile-extras", "What does Kanban limit?")
    assert "[1] kanban.md" in asked.stdout and "product-owner-101" not in asked.stdout

    kept = CliRunner().invoke(cli.main, ["courses", "remove", "agile-extras"], input="n\n")
    assert kept.exit_code == 1 and "Aborted" in kept.output
    removed = run("courses", "remove", "agile-extras", "--yes")
    assert removed.exit_code == 0 and "Removed course 'agile-extras': 1 document(s), 1 chunks." in removed.stdout
    assert [c["course"] for c in json.loads(run("courses", "--json").stdout)] == ["default"]

    missing = run("courses", "remove", "agile-extras", "--yes")
    assert missing.exit_code == 1 and "There is no course 'agile-extras'" in missing.output
    bad = run("index", str(extra), "--course", "Bad Name")
    assert bad.exit_code == 1 and "cannot name a course" in bad.output
    no_traceback(bad)
