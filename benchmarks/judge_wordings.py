"""Which wording of the judge's yes/no question separates answerable from out-of-scope questions?

    .venv/bin/python benchmarks/judge_wordings.py --split dev

For every question of each course's split (eval/courses.json) that stands on its own (a
dialogue's turns are judged with their conversation, so they are left out): retrieve and read
as the pipeline does (Assistant._read), then the model's P(yes) under each wording
(chain.judge_messages: the answer's own prompt with the question appended; llama.cpp reuses the
passages' cached tokens, so each extra wording costs only its own ~25 tokens). Prints the ROC
AUC of P(yes), answerable against out-of-scope, per wording and course; --json keeps every
probability, to sweep a threshold against an evaluation's right/wrong answers (the answer does
not depend on the judge's wording)."""

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
from scrumbot.chain import JUDGE, YES_NO, judge_messages  # noqa: E402
from scrumbot.evaluate import _index_for  # noqa: E402
from scrumbot.llm import first_token_probabilities  # noqa: E402

COURSES = evaluate.load_courses(REPO / "eval/courses.json")
WORDINGS = {
    "before": "Do the course passages above contain the answer to this question? Reply yes or no.",
    "current": JUDGE,
    "alone": "Could a student answer this question from the course passages above alone, without any other "
             "knowledge? Reply yes or no.",
    "same-thing": "Does a passage above say what the question asks, about the same thing it asks about (the "
                  "same name, tool, version or number)? Reply yes or no.",
    "restated": "Read the question again: {q}\nDo the course passages above contain its answer? Reply yes or no.",
}


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a random answerable question scores above a random out-of-scope one)."""
    if not pos or not neg:
        return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["dev", "test"], default="dev")
    parser.add_argument("--json", type=Path, help="Write every question's probabilities here.")
    args = parser.parse_args()
    rows = []
    for course, (questions, corpus) in COURSES.items():
        # questions on their own: a dialogue's turns are judged with their conversation
        cases = [c for conv in evaluate.load(questions, args.split) for c in conv if c.dialogue is None]
        settings = Settings.from_env()
        with _index_for(settings, corpus, None) as bot:
            for n, case in enumerate(cases, 1):
                retrieval = bot.retriever.retrieve(case.q)
                row = {"course": course, "id": case.id, "refuse": case.refuse, "gate": not bot.retriever.covered(retrieval)}
                if not row["gate"]:
                    inputs = bot._read(retrieval).inputs
                    for name, wording in WORDINGS.items():
                        messages = judge_messages(inputs, wording.format(q=retrieval.query))
                        with bot._model_call():
                            row[name] = first_token_probabilities(bot.llm, messages, YES_NO)["yes"]
                rows.append(row)
                print(f"{course} {n}/{len(cases)} {case.id}", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"ROC AUC of P(yes), answerable vs out-of-scope, {args.split} split (questions the gate let through)")
    for name in WORDINGS:
        cells = []
        for course in COURSES:
            scored = [r for r in rows if r["course"] == course and not r["gate"]]
            cells.append(f"{course} {auc([r[name] for r in scored if not r['refuse']], [r[name] for r in scored if r['refuse']]):.3f}")
        print(f"  {name:<11} " + "  ".join(cells))


if __name__ == "__main__":
    main()
