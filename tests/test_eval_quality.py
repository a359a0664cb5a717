"""Answer quality: the scoring rules of `scrumbot eval` (fast), and the real pipeline with the
default model on the public eval set and a focused part of our own (slow, run in CI).

The slow tests fail when quality regresses: an answerable question refused or answered wrong,
an out-of-scope question answered, a follow-up that loses its referent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import scrumbot.cli as cli
from conftest import CORPUS, REPO, EchoChatModel, FakeEmbeddings, shared_file
from scrumbot import Assistant
from scrumbot.api import Answer
from scrumbot.evaluate import (Case, EvalFileError, Report, evaluate, load, load_courses, run, score,
                               summarize)
from scrumbot.retrieve import Source

EXTRA = REPO / "eval" / "extra-corpus"
OWN_QUESTIONS = REPO / "eval" / "course-questions.jsonl"
OWN_DIALOGUES = REPO / "eval" / "dialogues.jsonl"


def write(path: Path, *rows) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# -- scoring rules (fast) ----------------------------------------------------------------------


def test_answerable_needs_one_string_of_every_must_group_case_insensitively():
    case = Case("a", "q", must=(("two-day", "2-day"), ("exam",)), sources=("po",))
    assert score(case, "A 2-DAY course and an online Exam.", False, ["po"]).correct
    out = score(case, "A two-day course.", False, ["po"])
    assert not out.correct and out.kind == "wrong answer" and out.failures == ["missing one of ['exam']"]


def test_must_not_fails_an_otherwise_right_answer():
    case = Case("a", "q", must=(("CSPO",),), must_not=("$",))
    out = score(case, "The CSPO costs $1,000.", False, [])
    assert not out.correct and out.failures == ["says '$'"]


def test_a_refused_answerable_question_is_a_false_refusal():
    out = score(Case("a", "q", must=(("x",),), sources=("po",)), "Not covered.", True, [])
    assert not out.correct and out.kind == "false refusal" and out.hit is False


def test_out_of_scope_is_right_only_when_refused_and_clean():
    case = Case("r", "price?", refuse=True, must_not=("$", "dollar"))
    assert score(case, "The course material doesn't cover that.", True, []).correct
    answered = score(case, "It costs 500 dollars.", False, ["po"])
    assert not answered.correct and answered.kind == "false answer"
    assert answered.failures == ["answered an out-of-scope question", "says 'dollar'"]
    assert answered.hit is None  # no expected source: not counted in hit@k


def test_hit_is_any_expected_stem_among_the_sources():
    case = Case("a", "q", must=(("x",),), sources=("kanban", "po"))
    assert score(case, "x", False, ["retro", "po"]).hit is True
    assert score(case, "x", False, ["retro"]).hit is False


def test_summary_counts_and_percentages():
    cases = [Case("a", "q", must=(("yes",),), sources=("s",)), Case("b", "q", must=(("yes",),), sources=("s",)),
             Case("c", "q", refuse=True), Case("d", "q", refuse=True)]
    outs = [score(cases[0], "yes", False, ["s"], 1.0), score(cases[1], "no", True, [], 2.0),
            score(cases[2], "no", True, [], 0.1), score(cases[3], "yes", False, ["s"], 3.0)]
    s = summarize(outs)
    assert (s.answerable, s.answerable_correct, s.false_refusals, s.wrong_answers) == (2, 1, 1, 0)
    assert (s.out_of_scope, s.refusals_correct, s.false_answers) == (2, 1, 1)
    assert (s.hits, s.hit_cases, s.answerable_pct, s.refusal_pct, s.hit_pct) == (1, 2, 50.0, 50.0, 50.0)
    assert s.p50_s == 1.5 and 2.5 < s.p95_s <= 3.0


def test_load_reads_questions_and_conversations(tmp_path):
    f = write(tmp_path / "q.jsonl",
              {"id": "p1", "q": "Q1?", "must": [["a", "b"]], "must_not": [["x", "y"]], "source": "doc"},
              "",
              {"id": "p2", "q": "Q2?", "refuse": True, "source": None},
              {"id": "d1", "turns": [{"q": "T1?", "must": [["a"]]}, {"q": "T2?", "source": ["d", "e"]}]})
    convs = load([f])
    assert [len(c) for c in convs] == [1, 1, 2]
    p1 = convs[0][0]
    assert p1.must == (("a", "b"),) and p1.must_not == ("x", "y") and p1.sources == ("doc",)
    assert convs[1][0].refuse and convs[1][0].sources == ()
    assert [c.id for c in convs[2]] == ["d1.1", "d1.2"] and convs[2][1].sources == ("d", "e")
    assert convs[2][1].dialogue == "d1" and convs[2][1].turn == 2


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "not a JSON object"),
    ('{"id": "x"}', 'needs a non-empty "q"'),
    ('{"id": "x", "q": "?", "must": "CSPO"}', '"must" is a list of lists'),
    ('{"id": "x", "q": "?", "must": [[]]}', "group is empty"),
    ('{"id": "x", "turns": []}', '"turns" must be a non-empty list'),
])
def test_bad_lines_say_which_line_and_what_is_wrong(tmp_path, line, message):
    f = write(tmp_path / "bad.jsonl", {"id": "ok", "q": "fine?"}, line)
    with pytest.raises(EvalFileError, match=message) as err:
        load([f])
    assert "bad.jsonl line 2" in str(err.value)


def test_missing_file_and_duplicate_ids_are_clean_errors(tmp_path):
    with pytest.raises(EvalFileError, match="does not exist"):
        load([tmp_path / "nope.jsonl"])
    with pytest.raises(EvalFileError, match="used twice"):
        load([write(tmp_path / "dup.jsonl", {"id": "a", "q": "1?"}, {"id": "a", "q": "2?"})])


def test_split_keeps_only_its_lines_and_a_line_without_one_is_dev(tmp_path):
    f = write(tmp_path / "q.jsonl",
              {"id": "old", "q": "Tuned on?"},
              {"id": "d1", "split": "dev", "q": "Dev?"},
              {"id": "t1", "split": "test", "q": "Test?", "refuse": True},
              {"id": "t2", "split": "test", "turns": [{"q": "T1?"}, {"q": "T2?"}]})
    ids = lambda split: [c.id for conv in load([f], split) for c in conv]
    assert ids("test") == ["t1", "t2.1", "t2.2"]
    assert ids("dev") == ["old", "d1"]
    assert ids(None) == ["old", "d1", "t1", "t2.1", "t2.2"]
    with pytest.raises(EvalFileError, match="no questions of the test split"):
        load([write(tmp_path / "dev-only.jsonl", {"id": "a", "q": "1?"})], "test")


class Scripted:
    """An answerer that replies from a script and records the history it was given."""

    def __init__(self, replies: dict[str, tuple[str, bool]]):
        self.replies, self.seen = replies, []

    def answer(self, question, history=None):
        self.seen.append((question, list(history or [])))
        text, refused = self.replies[question]
        return Answer(text, refused, [] if refused else [Source("docs/po.txt", "t", 0.9)], question)


def test_run_asks_turns_in_order_with_the_real_answers_as_history(tmp_path):
    f = write(tmp_path / "d.jsonl",
              {"id": "solo", "q": "Alone?", "must": [["yes"]], "source": "po"},
              {"id": "d", "turns": [{"q": "First?", "must": [["one"]], "source": "po"},
                                    {"q": "Then?", "must": [["two"]], "source": "po"}]})
    bot = Scripted({"Alone?": ("yes", False), "First?": ("one", False), "Then?": ("two", False)})
    outs = run(bot, load([f]))
    assert [o.correct for o in outs] == [True, True, True] and all(o.hit for o in outs)
    assert bot.seen == [("Alone?", []), ("First?", []), ("Then?", [("First?", "one")])]


def test_report_table_lists_each_failure_and_compares_systems(tmp_path):
    cases = [Case("a1", "Who?", must=(("PO",),), sources=("po",)), Case("r1", "Price?", refuse=True)]
    good = [score(cases[0], "The PO.", False, ["po"], 1.0), score(cases[1], "-", True, [], 0.0)]
    bad = [score(cases[0], "Dunno", True, [], 2.0), score(cases[1], "$5", False, ["po"], 2.0)]
    table = Report(["q.jsonl"], 3, {"scrumbot": good, "baseline": bad}).table()
    assert "scrumbot" in table.splitlines()[0] and "baseline" in table.splitlines()[0]
    assert "1/1 100.0%" in table and "0/1 0.0%" in table
    assert "[baseline] a1 false refusal" in table and "[baseline] r1 false answer" in table
    assert "[scrumbot]" not in table


def test_eval_command_with_fakes_indexes_a_temporary_corpus(tmp_path, monkeypatch):
    """The CLI over the real evaluate/Chroma path; the fake echo model answers with passage 1."""
    monkeypatch.setenv("SCRUMBOT_MIN_SCORE", "0.2")
    monkeypatch.setattr(cli, "_assistant", lambda s: Assistant(
        s, embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words", llm=EchoChatModel()))
    f = write(tmp_path / "q.jsonl",
              {"id": "wip", "q": "What is a WIP limit in a Kanban column?", "must": [["WIP"]],
               "source": "kanban-essentials"},
              {"id": "zz", "q": "Zebra quokka xylophone?", "refuse": True})
    plot = tmp_path / "chart.png"
    result = CliRunner().invoke(cli.main, ["eval", str(f), "--corpus", str(EXTRA), "--json",
                                           "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    results = {r["case"]["id"]: r for r in data["systems"]["scrumbot"]["results"]}
    assert results["wip"]["sources"][0] == "kanban-essentials" and results["wip"]["hit"] is True
    assert results["zz"]["refused"] and results["zz"]["correct"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the user's own index (SCRUMBOT_INDEX_DIR) was not touched
    assert not (tmp_path / "index").exists() or not any((tmp_path / "index").iterdir())

    text = CliRunner().invoke(cli.main, ["eval", str(f), "--corpus", str(EXTRA)])
    assert text.exit_code == 0 and "correct refusals" in text.output and "retrieval hit@" in text.output


def test_eval_command_asks_only_the_chosen_split(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRUMBOT_MIN_SCORE", "0.2")
    monkeypatch.setattr(cli, "_assistant", lambda s: Assistant(
        s, embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words", llm=EchoChatModel()))
    f = write(tmp_path / "q.jsonl",
              {"id": "wip", "split": "test", "q": "What is a WIP limit in a Kanban column?",
               "must": [["WIP"]], "source": "kanban-essentials"},
              {"id": "dev1", "split": "dev", "q": "What is a retrospective?", "must": [["retro"]]},
              {"id": "nosplit", "q": "What is a user story?", "must": [["story"]]})
    result = CliRunner().invoke(cli.main, ["eval", str(f), "--corpus", str(EXTRA), "--json", "--split", "test"])
    assert result.exit_code == 0, result.output
    assert [r["case"]["id"] for r in json.loads(result.output)["systems"]["scrumbot"]["results"]] == ["wip"]
    wrong = CliRunner().invoke(cli.main, ["eval", str(f), "--split", "holdout"])
    assert wrong.exit_code == 2 and "'holdout' is not one of" in wrong.output


def test_eval_command_fails_below_the_floors_it_is_given(tmp_path, monkeypatch):
    """`--min-answerable` / `--min-refused`: what CI runs the real model with; the echo model
    answers the out-of-scope question here (it shares words with a passage), so refusals are 0 %."""
    monkeypatch.setenv("SCRUMBOT_MIN_SCORE", "0.1")
    monkeypatch.setattr(cli, "_assistant", lambda s: Assistant(
        s, embeddings=FakeEmbeddings(), embedder_name="fake-bag-of-words", llm=EchoChatModel()))
    f = write(tmp_path / "q.jsonl",
              {"id": "wip", "q": "What is a WIP limit in a Kanban column?", "must": [["WIP"]]},
              {"id": "near", "q": "What is the price of a WIP limit Kanban column?", "refuse": True})
    base = ["eval", str(f), "--corpus", str(EXTRA)]
    ok = CliRunner().invoke(cli.main, base + ["--min-answerable", "100"])
    assert ok.exit_code == 0, ok.output
    low = CliRunner().invoke(cli.main, base + ["--min-answerable", "100", "--min-refused", "50"])
    assert low.exit_code == 1 and "below the floor: out-of-scope refused 0.0 % < 50 %" in low.output


def test_eval_of_a_bad_file_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(cli.main, ["eval", str(write(tmp_path / "bad.jsonl", "{oops"))])
    assert result.exit_code == 1 and "not valid JSON" in result.output and "Traceback" not in result.output


# -- the real model (slow) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_bot(tmp_path_factory):
    """One real Assistant (MiniLM + the default GGUF) for the slow tests; indexes nothing."""
    from scrumbot.config import Settings

    settings = Settings.from_env(index_dir=tmp_path_factory.mktemp("unused-index"))
    bot = Assistant(settings)
    bot.llm  # load the model once, outside the timings
    return bot


def _failures(report: Report) -> str:
    return report.table()


@pytest.mark.slow
def test_public_eval_set_is_all_right_with_the_default_model(real_bot):
    """Every answerable question of ../shared/eval right by its `must` groups, every
    out-of-scope one refused, the follow-up ("Who is it for?") answered, sources cited."""
    files = [shared_file("eval", "questions.jsonl"), shared_file("eval", "dialogues.jsonl")]
    report = evaluate(files, real_bot.settings, corpus=[CORPUS], assistant=real_bot)
    s = report.summaries()["scrumbot"]
    assert s.answerable_pct == 100.0 and s.refusal_pct == 100.0, _failures(report)
    assert s.hit_pct == 100.0, _failures(report)


# A focused part of our own set: an acronym the course never writes (o09), a list read whole
# (x06, d06), answers only the newly indexed handouts hold, near-material questions the course
# never answers where the model moved a fact onto what was asked (r03 "50 questions", r08
# "37 (74%)", r01 "$37", r06 "one hour", r12 "Kanban Master"), and follow-up dialogues.
FOCUS = {"o09", "x06", "x11", "x13", "x15", "r01", "r02", "r03", "r06", "r08", "r09", "r12",
         "d01", "d05", "d06"}


# This set was tuned on (it is the dev split): the floors guard the mechanisms against
# regressions, they are not the quality claim (that is the test split, README "Answer quality").
# Measured on this subset with the current pipeline: 11/11 answerable, 6/8 refused (10/11 and
# 5/8 before follow-ups were read as asked: d01.2 and d05.3 had answered the earlier question
# again; 3/8 refused before the judge's "exactly this question" wording). The number rule that
# refused r03, r06 and r08 went (it lost answerable questions on the real courses' test split);
# r03 and r08 pass the judge. Floors one case below.
FLOOR_ANSWERABLE, FLOOR_REFUSALS = 90.0, 62.5


@pytest.mark.slow
def test_own_eval_subset_with_extra_documents_and_follow_ups(real_bot, tmp_path):
    rows = [json.loads(line) for f in (OWN_QUESTIONS, OWN_DIALOGUES) for line in f.read_text().splitlines()
            if line.strip()]
    picked = [r for r in rows if r["id"] in FOCUS]
    assert len(picked) == len(FOCUS)
    subset = write(tmp_path / "subset.jsonl", *picked)
    report = evaluate([subset], real_bot.settings, corpus=[CORPUS, EXTRA], assistant=real_bot)
    s = report.summaries()["scrumbot"]
    print(report.table())  # shown with -rA / on failure: which questions fail today
    assert s.answerable_pct >= FLOOR_ANSWERABLE and s.refusal_pct >= FLOOR_REFUSALS, _failures(report)
    # the newly indexed handouts are found: every answer cites the file that holds it
    assert s.hit_pct >= FLOOR_ANSWERABLE, _failures(report)


# A fixed slice of each course's TEST split (never tuned on): its first answerable questions and
# first out-of-scope ones in file order, asked with the real model over the real course files.
# The floors sit below what the full test split measures (README "Answer quality"), so a
# regression in retrieval, reading, the judge or the verifier fails CI.
SLICES = load_courses(REPO / "eval/courses.json")
SLICE_ANSWERABLE, SLICE_OUT_OF_SCOPE = 8, 4
# measured on these slices (hybrid retrieval, the judge's "exactly this question" wording): git
# 7/8 and 4/4, Debian Reference 7/8 and 4/4, Product Owner 6/8 and 1/4; a floor is one case
# below, as another llama.cpp build may flip one greedy answer, except Product Owner's refusals,
# held at the 1 of 4 it measures (README: facts moved between similar things are the open problem)
SLICE_FLOORS = {"git": (75.0, 75.0), "debian-reference": (75.0, 75.0), "product-owner": (62.5, 25.0)}


@pytest.mark.slow
@pytest.mark.parametrize("course", sorted(SLICES))
def test_a_fixed_slice_of_each_course_test_split_holds_its_floor(real_bot, tmp_path, course):
    files, corpus = SLICES[course]
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
    test = [r for r in rows if r.get("split") == "test" and "turns" not in r]
    picked = ([r for r in test if not r.get("refuse")][:SLICE_ANSWERABLE]
              + [r for r in test if r.get("refuse")][:SLICE_OUT_OF_SCOPE])
    assert len(picked) == SLICE_ANSWERABLE + SLICE_OUT_OF_SCOPE
    report = evaluate([write(tmp_path / "slice.jsonl", *picked)], real_bot.settings, corpus=corpus,
                      assistant=real_bot)
    s = report.summaries()["scrumbot"]
    print(report.table())
    floor_answerable, floor_refused = SLICE_FLOORS[course]
    assert s.answerable_pct >= floor_answerable and s.refusal_pct >= floor_refused, _failures(report)
