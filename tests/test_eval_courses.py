"""The real evaluation courses: every question is split once, and its gold answer is in the text."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

from conftest import REPO

COURSES = ["git", "debian-reference"]


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


split = _module(REPO / "eval" / "split.py")
check = _module(REPO / "eval" / "courses" / "check.py")


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_course_line_is_split_with_every_kind_on_both_sides():
    for course in COURSES:
        rows = _rows(REPO / "eval" / "courses" / course / "questions.jsonl")
        sides = Counter((r["split"], split.stratum(r)) for r in rows)
        for side in ("dev", "test"):
            assert sides[side, "answerable"] >= 20, (course, sides)
            assert sides[side, "out-of-scope"] >= 7, (course, sides)
            assert sides[side, "dialogue"] >= 2, (course, sides)


def test_the_split_never_moves_a_line_and_new_lines_are_drawn_reproducibly(tmp_path):
    source = REPO / "eval" / "courses" / "git" / "questions.jsonl"
    copies = [tmp_path / side / "git" / "questions.jsonl" for side in ("a", "b")]
    for copy in copies:
        copy.parent.mkdir(parents=True)
        copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    split.assign(copies[0])
    assert copies[0].read_text(encoding="utf-8") == source.read_text(encoding="utf-8")

    new = [{"id": f"n{i}", "q": f"New {i}?", "must": [["x"]]} for i in range(10)]
    for copy in copies:
        with copy.open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in new)
        split.assign(copy)
    rows = _rows(copies[0])
    assert [r["split"] for r in rows[:-10]] == [r["split"] for r in _rows(source)]
    assert Counter(r["split"] for r in rows[-10:]) == {"dev": 5, "test": 5}
    # the draw depends on the seed, the course, the file and the stratum only: a second draw agrees
    assert _rows(copies[1]) == rows


def test_set_marks_every_unsplit_line_and_keeps_the_file_spacing(tmp_path):
    f = tmp_path / "own.jsonl"
    f.write_text('{"id":"a","q":"1?"}\n{"id":"b","split":"test","q":"2?"}\n', encoding="utf-8")
    split.assign(f, "dev")
    assert f.read_text(encoding="utf-8") == '{"id":"a","split":"dev","q":"1?"}\n{"id":"b","split":"test","q":"2?"}\n'


def test_every_gold_answer_is_backed_by_the_course_text(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    files = [f"eval/courses/{c}/questions.jsonl" for c in COURSES] + ["eval/po-test.jsonl"]
    assert check.main(files) == 0, capsys.readouterr().out


def test_losses_counts_each_turn_once_and_bounds_what_refusals_alone_could_reach():
    """benchmarks/losses.py: a record-mode run's answerable turns, first and follow-up apart; the
    bound counts right answers and withheld ones (a judge that never refuses an answerable
    question), never an answered wrong one or an out-of-scope question."""
    losses = _module(REPO / "benchmarks" / "losses.py")

    def row(id, turn, correct, refused=False, p=0.9, refuse=False):
        return {"case": {"id": id, "turn": turn, "refuse": refuse}, "correct": correct, "refused": refused,
                "scores": {"answerable": p}}

    results = [row("a", 0, True), row("b", 0, True, p=0.3), row("c", 0, False), row("d", 0, False, refused=True),
               row("e.1", 1, True), row("e.2", 2, False), row("e.3", 3, True, p=0.5), row("x", 0, True, refuse=True)]
    got = losses.tally(results, {"a": True, "b": True, "c": True, "e.1": False}, threshold=0.6)

    assert got["first"] == {"n": 5, "read": 3, "read_right": 2, "right": 3, "withheld": 1, "shipped": 2, "at_most": 4}
    assert got["follow-up"] == {"n": 2, "read": None, "read_right": None, "right": 1, "withheld": 0, "shipped": 0,
                                "at_most": 1}
