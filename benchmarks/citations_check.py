"""How right are the sentence citations? Citation precision and recall with the real model.

    .venv/bin/python benchmarks/citations_check.py eval/po-test.jsonl --corpus corpus eval/extra-corpus \\
        --json po-citations.json
    .venv/bin/python benchmarks/citations_check.py eval/courses/git/questions.jsonl --split test \\
        --corpus eval/courses/git

Every answerable question of the file (of `--split`) is asked once, into a temporary index of
`--corpus`. For each answer that is not a refusal:

- recall: the shown sentences that carry a marker, out of all shown sentences;
- precision: of the cited sentences that contain one of the question's key terms (its `must`
  strings that the course says: in its `evidence` sentence, else in the passages), those whose quoted spans contain that term too — the marker points at text that
  says what the sentence says, not at a parallel passage (per quote as well, stricter: each
  quote of such a sentence on its own);
- evidence: of the answers to questions with an `evidence` sentence, those where a quote is
  that sentence (its words mostly the evidence's, or the other way round).

Out-of-scope questions are skipped: a refusal has no citations to judge.

`--requote RUN.json` asks no model: it takes the answers of an earlier run (this script's
`--json`, or `scrumbot eval --json`: one live evaluation then gives both the quality and the
citation numbers), finds the same
passages again (retrieval is deterministic) and cites them with the current code — for a change
to the citing alone, measured on the same answers."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from scrumbot.api import Answer
from scrumbot.config import Settings
from scrumbot.evaluate import _index_for, load
from scrumbot.guard import cite, renumber
from scrumbot.retrieve import terms


def _same_sentence(quote: str, evidence: str) -> bool:
    q, e = set(terms(quote)), set(terms(evidence))
    return bool(q and e) and (len(q & e) >= 0.6 * len(q) or len(q & e) >= 0.6 * len(e))


def check(answer, case, evidence: str | None) -> dict:
    cited = [c for c in answer.citations]
    # a key term is one the course says (the evidence sentence, else the answer's passages):
    # a "yes" the question asks for is not in any passage
    said = (evidence or " ".join(s.text for s in answer.sources)).lower()
    keys = [s for group in case.must for s in group if s.lower() in said]
    row = {"id": case.id, "q": case.q, "answer": answer.marked(), "sentences": len(cited),
           "marked": sum(bool(c.quotes) for c in cited), "keyed": 0, "precise": 0, "quotes_keyed": 0,
           "quotes_precise": 0, "evidence": None, "misses": [],
           "quotes": [[answer.sources[q.source].text[q.start:q.end] for q in c.quotes] for c in cited]}
    for c in cited:
        sentence = answer.text[c.start:c.end].lower()
        present = [k for k in keys if k.lower() in sentence]
        if not c.quotes or not present:
            continue
        spans = [answer.sources[q.source].text[q.start:q.end].lower() for q in c.quotes]
        row["keyed"] += 1
        if any(k.lower() in s for k in present for s in spans):
            row["precise"] += 1
        else:
            row["misses"].append({"sentence": answer.text[c.start:c.end], "keys": present, "quotes": spans})
        row["quotes_keyed"] += len(spans)
        row["quotes_precise"] += sum(any(k.lower() in s for k in present) for s in spans)
    if evidence:
        quotes = [answer.sources[q.source].text[q.start:q.end] for c in cited for q in c.quotes]
        row["evidence"] = any(_same_sentence(q, evidence) for q in quotes)
    return row


def summarize(rows: list[dict], asked: int, refused: int, seconds: float) -> dict:
    def pct(a: int, b: int) -> str:
        return f"{100.0 * a / b:.1f} % ({a}/{b})" if b else "n/a"

    with_evidence = [r for r in rows if r["evidence"] is not None]
    return {
        "questions": asked, "answered": len(rows), "refused": refused,
        "recall": pct(sum(r["marked"] for r in rows), sum(r["sentences"] for r in rows)),
        "precision": pct(sum(r["precise"] for r in rows), sum(r["keyed"] for r in rows)),
        "precision_per_quote": pct(sum(r["quotes_precise"] for r in rows), sum(r["quotes_keyed"] for r in rows)),
        "evidence_quoted": pct(sum(bool(r["evidence"]) for r in with_evidence), len(with_evidence)),
        "minutes": round(seconds / 60, 1),
    }


def requote(bot, question: str, marked: str) -> Answer:
    """An earlier run's answer, cited again as the pipeline cites (api.Assistant._stream)."""
    text = re.sub(r" (\[\d+\])+", "", marked)
    retrieval = bot.retriever.retrieve(question)
    reading = bot._read(retrieval)
    passages = reading.passages
    cited, citations, _ = cite(text, passages, retrieval.query, read=[p.text for p in reading.focused])
    if not any(c.quotes for c in citations):
        return Answer("", True, question=question, reason="no passage sentence supports it (requoted)")
    sources, citations = renumber(citations, passages)
    return Answer(cited, False, sources, question, citations=citations)


def _earlier_answers(path: Path) -> dict[str, str]:
    """Answers (not refusals) of an earlier run: this script's --json, or `scrumbot eval --json`."""
    run = json.loads(path.read_text())
    if "rows" in run:
        return {r["id"]: r["answer"] for r in run["rows"]}
    results = run["systems"]["scrumbot"]["results"]
    return {r["case"]["id"]: r["answer"] for r in results if not r["refused"] and not r["case"]["refuse"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", type=Path)
    parser.add_argument("--corpus", type=Path, nargs="+", required=True)
    parser.add_argument("--split")
    parser.add_argument("--limit", type=int, help="Ask only the first N answerable questions.")
    parser.add_argument("--json", type=Path, help="Write every question's result here.")
    parser.add_argument("--requote", type=Path, help="Cite again the answers of this earlier run (no model).")
    args = parser.parse_args()

    cases = [turn for conversation in load([args.questions], args.split) for turn in conversation
             if not turn.refuse and turn.dialogue is None]
    cases = cases[: args.limit] if args.limit else cases
    evidence = {}
    for line in args.questions.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            evidence[row.get("id")] = row.get("evidence")

    earlier = _earlier_answers(args.requote) if args.requote else {}
    if args.requote:
        cases = [c for c in cases if c.id in earlier]
    rows, refusals, t0 = [], [], time.perf_counter()
    with _index_for(Settings.from_env(), args.corpus, None) as bot:
        for n, case in enumerate(cases, 1):
            started = time.perf_counter()
            answer = requote(bot, case.q, earlier[case.id]) if args.requote else bot.answer(case.q)
            if answer.refused:
                refusals.append({"id": case.id, "q": case.q, "reason": answer.reason})
                print(f"{n:3}/{len(cases)} {case.id}: refused ({answer.reason})", file=sys.stderr, flush=True)
            else:
                row = check(answer, case, evidence.get(case.id))
                row["seconds"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                print(f"{n:3}/{len(cases)} {case.id}: {row['marked']}/{row['sentences']} marked, "
                      f"{row['precise']}/{row['keyed']} precise, evidence {row['evidence']}  "
                      f"{row['answer'][:100]!r}", file=sys.stderr, flush=True)
            if args.json:  # after every question: a long run interrupted still tells what it saw
                summary = summarize(rows, n, len(refusals), time.perf_counter() - t0)
                args.json.write_text(json.dumps({"summary": summary, "rows": rows, "refused": refusals},
                                                indent=2, ensure_ascii=False))
    for key, value in summarize(rows, len(cases), len(refusals), time.perf_counter() - t0).items():
        print(f"{key:<20} {value}")


if __name__ == "__main__":
    main()
