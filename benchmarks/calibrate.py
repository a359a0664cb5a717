"""Calibrate the "not covered" gate, and compare follow-up methods, end to end with the real model.

The gate refuses before generation when the best passage's cosine score is below
`min_score`; the model's own "doesn't cover" sentence is the second line of defence. This
script runs the whole pipeline (real index, embedder and model) over our eval set (corpus/ +
eval/extra-corpus/) and the public one (corpus/ alone) for every threshold and prints false
refusals against false answers, so the threshold is chosen from numbers:

    .venv/bin/python benchmarks/calibrate.py                       # the threshold table
    .venv/bin/python benchmarks/calibrate.py --followup            # follow-up methods, dialogues
    .venv/bin/python benchmarks/calibrate.py --set k=4 --set chunk_size=500   # other settings

Answers are cached on disk by prompt (generation is greedy), so thresholds that give the model
the same prompt cost nothing; `--no-cache` calls the model every time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scrumbot.config import Settings, apply_offline_env  # noqa: E402

apply_offline_env()

from scrumbot import evaluate  # noqa: E402
from scrumbot.api import Assistant  # noqa: E402

SHARED = Path(os.environ.get("SCRUMBOT_SHARED", REPO.parent / "shared")) / "eval"
SETS = {
    "own": ([REPO / "eval" / "course-questions.jsonl", REPO / "eval" / "dialogues.jsonl"],
            [REPO / "corpus", REPO / "eval" / "extra-corpus"]),
    "public": ([SHARED / "questions.jsonl", SHARED / "dialogues.jsonl"], [REPO / "corpus"]),
}
CACHE = Path(os.environ.get("SCRUMBOT_CACHE") or Path.home() / ".cache" / "scrumbot") / "eval-llm-cache.sqlite"


def parse_overrides(pairs: list[str]) -> dict:
    from dataclasses import fields

    from scrumbot.config import _parse

    by_name = {f.name: f for f in fields(Settings)}
    out = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        out[name] = _parse(by_name[name], raw)
    return out


def bots(settings: Settings, llm, tmp: Path, only: list[str]) -> dict[str, Assistant]:
    first = Assistant(settings)
    out = {}
    for name in only:
        _, corpus = SETS[name]
        bot = Assistant(settings.replace(index_dir=tmp / name), embeddings=first.embeddings, llm=llm)
        bot.index(corpus)
        out[name] = bot
    return out


def run_set(bot: Assistant, name: str, settings: Settings, conversations=None) -> list[evaluate.Outcome]:
    bot.settings = settings.replace(index_dir=bot.settings.index_dir)
    return evaluate.run(bot, conversations or evaluate.load(SETS[name][0]))


def cells(outcomes: list[evaluate.Outcome], calls: int | None = None) -> str:
    s = evaluate.summarize(outcomes)
    return (f"{s.false_refusals:>3} {s.false_answers:>4} {s.wrong_answers:>4}  "
            f"{s.answerable_pct:5.1f}% {s.refusal_pct:5.1f}%  {s.hit_pct:5.1f}%  "
            + ("" if calls is None else f"{calls:>5}"))


def model_calls(bot: Assistant) -> int:
    """How often the model ran so far (cached answers included): the gate saves these."""
    llm = bot._llm
    return getattr(llm, "hits", 0) + getattr(llm, "misses", 0)


HEADER = "FR   FA   WA   ans-ok  ref-ok   hit@k  calls"


def failures(outcomes: list[evaluate.Outcome]) -> str:
    return ", ".join(f"{o.case.id}({o.kind})" for o in outcomes if not o.correct) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thresholds", default="0.0,0.10,0.15,0.20,0.25,0.30,0.35,0.40")
    ap.add_argument("--followup", action="store_true", help="compare follow-up methods on the dialogues")
    ap.add_argument("--sets", default="own,public")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a Settings override")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--show", action="store_true", help="print every failed answer")
    args = ap.parse_args()

    from scrumbot.llm import chat_model

    settings = Settings.from_env(**parse_overrides(args.set))
    llm = chat_model(settings)
    if not args.no_cache:
        from llm_cache import cached

        llm = cached(llm, CACHE, f"{settings.model}|{settings.max_tokens}|{settings.temperature}|{settings.n_ctx}")
    only = args.sets.split(",")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        built = bots(settings, llm, Path(tmp), only)
        print(f"settings: chunk_size={settings.chunk_size} overlap={settings.chunk_overlap} k={settings.k} "
              f"max_context_chars={settings.max_context_chars} model={settings.model}")
        if args.followup:
            followup(built, settings)
        else:
            calibrate(built, settings, [float(t) for t in args.thresholds.split(",")], args.show)
    hits = getattr(llm, "hits", None)
    print(f"\n{time.perf_counter() - started:.0f}s" + (f"; model calls {llm.misses}, cached {hits}" if hits is not None else ""))


def calibrate(built: dict[str, Assistant], settings: Settings, thresholds: list[float],
              show: bool = False) -> None:
    """FR false refusals, FA false answers (out-of-scope answered), WA wrong answers;
    calls: model calls (answers and follow-up rewrites) the questions cost at that threshold."""
    print("\nFR false refusals, FA false answers, WA wrong answers, calls = model calls made")
    print("\nmin_score  " + "   ".join(f"{name + ': ' + HEADER:<50}" for name in built))
    details = []
    for t in thresholds:
        row = []
        for name, bot in built.items():
            before = model_calls(bot)
            outs = run_set(bot, name, settings.replace(min_score=t))
            row.append(cells(outs, model_calls(bot) - before))
            details.append(f"  {t:.2f} {name}: {failures(outs)}")
            if show:
                details.append(evaluate.Report([name], settings.k, {"scrumbot": outs}).table())
        print(f"{t:9.2f}  " + "   ".join(f"{'':6}{c:<44}" for c in row))
    print("\nwhat failed per threshold:\n" + "\n".join(details))


def followup(built: dict[str, Assistant], settings: Settings) -> None:
    """The same dialogues with each way of resolving a follow-up question."""
    from scrumbot.retrieve import Retriever

    real_retrieve, real_standalone = Retriever.retrieve, Assistant._standalone

    def only_question(self, question, history=None):
        self.store.vectorstore()
        return self._search(question)

    def always_joined(self, question, history=None):
        self.store.vectorstore()
        return self._search(f"{history[-1][0]} {question}" if history else question)

    methods = {  # name: (Retriever.retrieve, Assistant._standalone)
        "question only": (only_question, real_standalone),
        "always concatenate": (always_joined, real_standalone),
        "rule, joined text": (real_retrieve, lambda self, q, h: None),
        "rule + model rewrite": (real_retrieve, real_standalone),
    }
    print(f"\nmethod                 set      {HEADER}   failed")
    try:
        for label, (retrieve, standalone) in methods.items():
            Retriever.retrieve, Assistant._standalone = retrieve, standalone
            for name, bot in built.items():
                dialogues = [c for c in evaluate.load(SETS[name][0]) if len(c) > 1]
                outs = run_set(bot, name, settings, dialogues)
                print(f"{label:22} {name:7}  {cells(outs)}   {failures(outs)}", flush=True)
    finally:
        Retriever.retrieve, Assistant._standalone = real_retrieve, real_standalone


if __name__ == "__main__":
    main()
