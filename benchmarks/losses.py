"""Where the answerable questions of a split are lost, and how far better refusals alone could go.

Takes record-mode evaluations (every probability recorded, the judge deciding nothing):

    SCRUMBOT_MIN_ANSWERABLE=0 SCRUMBOT_JUDGE_ALWAYS=1 scrumbot eval eval/courses/git/questions.jsonl \\
        --corpus eval/courses/git --split test --json > git-test.json      # ... per course
    .venv/bin/python benchmarks/losses.py --split test git=git-test.json \\
        debian-reference=deb-test.json product-owner=po-test.json

Course names are eval/courses.json's. For each course's answerable questions, first turns (a
question alone, or a dialogue's first turn) and follow-up turns apart, it prints:
- read: the answer reached the model (evaluate.answer_read: a string of each `must` group in
  the text the model reads; real embedder, no model; first turns only, follow-ups are searched
  after the model rewrites them), and how many of those the model answered right;
- right, no judge: the model's answer is right and nothing refused it;
- withheld: the guard or the gate refused it (whether the answer was right is not known);
- right, shipped: right with the judge's threshold applied (--threshold; default: the one the
  environment's model answers with, Settings.answerable_threshold);
- at most: right, no judge + withheld -- what perfect refusal decisions (a judge and guard that
  never refuse an answerable question) could reach with the same answers. Below a target here,
  no threshold, judge or guard reaches the target: the answers themselves must get better."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scrumbot.config import Settings, apply_offline_env  # noqa: E402

apply_offline_env()

from scrumbot import evaluate  # noqa: E402
from scrumbot.api import Assistant  # noqa: E402
from scrumbot.evaluate import _index_for  # noqa: E402

COURSES = evaluate.load_courses(REPO / "eval/courses.json")


def answer_read(course: str, split: str, embeddings=None) -> tuple[dict[str, bool], object]:
    """First turn's id -> did every `must` group reach the model's text? (and the embedder, to reuse)"""
    questions, corpus = COURSES[course]
    firsts = [conv[0] for conv in evaluate.load(questions, split) if not conv[0].refuse]
    settings = Settings.from_env(llm="extractive")  # retrieval and reading only
    holder = Assistant(settings, embeddings=embeddings) if embeddings is not None else None
    read = {}
    with _index_for(settings, corpus, holder) as bot:
        for case in firsts:
            read[case.id] = evaluate.answer_read(bot, bot.retriever.retrieve(case.q), case)
        return read, bot.embeddings


def tally(results: list[dict], read: dict[str, bool], threshold: float) -> dict[str, dict]:
    """Counts per kind of turn ("first", "follow-up") over an evaluation's answerable results."""
    rows = {}
    answerable = [r for r in results if not r["case"]["refuse"]]
    for label, turns in (("first", [r for r in answerable if r["case"]["turn"] <= 1]),
                         ("follow-up", [r for r in answerable if r["case"]["turn"] > 1])):
        got = [r for r in turns if read.get(r["case"]["id"], False)]
        p = [r.get("scores", {}).get("answerable") for r in turns]
        right = sum(r["correct"] for r in turns)
        withheld = sum(r["refused"] for r in turns)
        rows[label] = {
            "n": len(turns),
            "read": len(got) if label == "first" else None,
            "read_right": sum(r["correct"] for r in got) if label == "first" else None,
            "right": right,
            "withheld": withheld,
            "shipped": sum(r["correct"] and (q is None or q >= threshold) for r, q in zip(turns, p)),
            "at_most": right + withheld,
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["dev", "test"], default="test")
    parser.add_argument("runs", nargs="+", metavar="COURSE=EVAL.json")
    parser.add_argument("--threshold", type=float, help="The judge's threshold for 'shipped' (default: the one "
                                                          "the environment's model answers with).")
    args = parser.parse_args()
    threshold = args.threshold if args.threshold is not None else Settings.from_env().answerable_threshold
    embeddings = None
    print(f"answerable questions, {args.split} split; judge at {threshold:.2f} for 'shipped'")
    print(f"{'course':<18}{'turns':<11}{'n':>4}{'read (right)':>15}{'right, no judge':>17}{'withheld':>10}"
          f"{'right, shipped':>16}{'at most':>14}")
    for run in args.runs:
        course, _, path = run.partition("=")
        results = json.loads(Path(path).read_text())["systems"]["scrumbot"]["results"]
        read, embeddings = answer_read(course, args.split, embeddings)
        rows = tally(results, read, threshold)
        for label, c in rows.items():
            reached = f"{c['read']} ({c['read_right']} right)" if c["read"] is not None else "–"
            print(f"{course:<18}{label:<11}{c['n']:>4}{reached:>15}{c['right']:>17}{c['withheld']:>10}"
                  f"{c['shipped']:>16}{c['at_most']:>8} {100 * c['at_most'] / max(c['n'], 1):>4.0f} %")
        n, at_most = sum(c["n"] for c in rows.values()), sum(c["at_most"] for c in rows.values())
        shipped = sum(c["shipped"] for c in rows.values())
        print(f"{course:<18}{'all':<11}{n:>4}{'':>42}{shipped:>16}{at_most:>8} {100 * at_most / max(n, 1):>4.0f} %")


if __name__ == "__main__":
    main()
