"""A question log from the evaluation sets, asked through the API, and the trainer report over
it: the reproducible source of docs/report.html and docs/report.png (README "Trainer insights").

    SCRUMBOT_INDEX_DIR=/tmp/insights-demo/index python benchmarks/insights_demo.py \
        ../shared/eval/questions.jsonl eval/course-questions.jsonl eval/dialogues.jsonl \
        --corpus corpus --corpus eval/extra-corpus --html docs/report.html

Use an index folder of its own (as above): the questions land in that folder's question log.
Each conversation is asked as a student would, with its history and one conversation id. The
thumbs stand in for students': the evaluation's own check gives a wrong answer a thumbs down
("wrong"), a refused answerable question a thumbs down ("not in the course but should be")
and a right answer a thumbs up; a right refusal gets none."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scrumbot import Assistant, Settings
from scrumbot.evaluate import load, score, source_stem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--corpus", type=Path, action="append", help="index these first (default: the corpus folder)")
    parser.add_argument("--html", type=Path, help="write the report here")
    args = parser.parse_args()
    settings = Settings.from_env()
    if not settings.log_questions:
        sys.exit("SCRUMBOT_LOG_QUESTIONS=0: nothing would be logged.")
    bot = Assistant(settings)
    report = bot.index(args.corpus or [settings.corpus_dir])
    print(f"indexed: {report.summary()}", file=sys.stderr)
    t0 = time.perf_counter()
    n = 0
    for turns in load(args.files):
        history, conversation = [], None
        for case in turns:
            a = bot.answer(case.q, history, conversation_id=conversation)
            conversation = a.conversation_id
            outcome = score(case, a.text, a.refused, [source_stem(s.source) for s in a.sources])
            if not outcome.correct:
                bot.feedback(a.log_id, "down", "not in the course but should be" if a.refused else "wrong")
            elif not a.refused:
                bot.feedback(a.log_id, "up")
            print(f"{case.id}: {'ok' if outcome.correct else outcome.kind} ({a.timings.get('total_s', 0):.1f}s)",
                  file=sys.stderr)
            history.append((case.q, a.text))
            n += 1
    print(f"{n} questions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    result = bot.report()
    print(result.text())
    if args.html:
        args.html.write_text(result.html(), encoding="utf-8")
        print(f"html: {args.html}")


if __name__ == "__main__":
    main()
