"""Chunk retrieval, dense vs hybrid (dense + BM25, reciprocal-rank fused), on one split of each
course's questions, with the real embedder and no LLM:

    .venv/bin/python benchmarks/retrieval_split.py --split dev

For every answerable question (first turns of dialogues included, follow-up turns left out:
they are searched after the model rewrites them) it prints hit@1 and hit@k (an expected source
file among the passages), "answer read" (the text the model reads, Assistant._read, holds a
string of each of the question's `must` groups: the right passage, not only the right file,
and its right sentences) and how many answerable / out-of-scope questions the gate
(SCRUMBOT_MIN_SCORE on the best passage's cosine) would refuse."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scrumbot.config import Settings, apply_offline_env  # noqa: E402

apply_offline_env()

from scrumbot import evaluate  # noqa: E402
from scrumbot.api import Assistant  # noqa: E402

COURSES = evaluate.load_courses(REPO / "eval/courses.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=["dev", "test"], default="dev")
    parser.add_argument("--courses", default=",".join(COURSES))
    args = parser.parse_args()
    embeddings = None
    for name in args.courses.split(","):
        files, corpus = COURSES[name]
        cases = [turns[0] for turns in evaluate.load(files, split=args.split)]
        with tempfile.TemporaryDirectory() as tmp:
            base = Settings.from_env(index_dir=Path(tmp) / "index")
            bot = Assistant(base, embeddings=embeddings, embedder_name=None if embeddings is None else "sentence-transformers/all-MiniLM-L6-v2")
            bot.index(corpus)
            embeddings = bot.embeddings
            for hybrid in (False, True):
                s = base.replace(hybrid=hybrid)
                reader = Assistant(s, embeddings=embeddings, embedder_name=bot.embedder_name)
                r = reader.retriever
                hit1 = hitk = read = n = gated_ans = gated_oos = n_oos = 0
                for case in cases:
                    got = r.retrieve(case.q)
                    stems = [evaluate.source_stem(p.source) for p in got.passages]
                    if case.refuse:
                        n_oos += 1
                        gated_oos += got.top_score < s.min_score
                        continue
                    n += 1
                    gated_ans += got.top_score < s.min_score
                    hit1 += bool(stems) and stems[0] in case.sources
                    hitk += any(x in case.sources for x in stems)
                    read += evaluate.answer_read(reader, got, case)
                print(f"{name:<18} {'hybrid' if hybrid else 'dense':<7} hit@1 {hit1}/{n}  hit@{s.k} {hitk}/{n}  answer read {read}/{n}  "
                      f"gate refuses {gated_ans}/{n} answerable, {gated_oos}/{n_oos} out-of-scope", flush=True)


if __name__ == "__main__":
    main()
