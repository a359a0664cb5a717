"""Retrieval choices measured without the LLM: chunk size, k, dense vs hybrid, follow-up query.

For every configuration it builds a real Chroma index (corpus/ plus eval/extra-corpus/ for our
own set, corpus/ alone for the public set) with the real embedder and reports, over the
answerable questions and conversation turns: hit@1 and hit@k (an expected source stem among
the top passages) and how well the best dense score separates answerable from out-of-scope
questions (the "not covered" gate). Run:

    .venv/bin/python benchmarks/retrieval_sweep.py            # all tables
    .venv/bin/python benchmarks/retrieval_sweep.py --quick    # current settings only
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scrumbot.config import Settings, apply_offline_env  # noqa: E402

apply_offline_env()

from scrumbot import evaluate  # noqa: E402
from scrumbot.api import Assistant  # noqa: E402
from scrumbot.retrieve import search_query  # noqa: E402

SHARED = REPO.parent / "shared" / "eval"
OWN = [REPO / "eval" / "course-questions.jsonl", REPO / "eval" / "dialogues.jsonl"]
PUBLIC = [SHARED / "questions.jsonl", SHARED / "dialogues.jsonl"]
OWN_CORPUS = [REPO / "corpus", REPO / "eval" / "extra-corpus"]
PUBLIC_CORPUS = [REPO / "corpus"]

_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_STOP = set("a an the of to in on for and or is are was be do does did how what which who whom "
            "when where why can i my me you your it its that this there with by as at from about "
            "into after before should must will would could tell".split())


def tokens(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@dataclass
class Item:
    case: evaluate.Case
    history: list[tuple[str, str]]  # the earlier questions of its conversation


def _best_of_both(index: "Index", q: str, h: list) -> str:
    """The question alone, or with the previous question when that retrieves better."""
    if not h:
        return q
    joined = f"{h[-1][0]} {q}"
    return joined if index.dense(joined, 1)[0][1] > index.dense(q, 1)[0][1] else q


FOLLOWUP = {
    "question only": lambda index, q, h: q,
    "anaphor rule": lambda index, q, h: search_query(q, h),
    "always concatenate": lambda index, q, h: f"{h[-1][0]} {q}" if h else q,
    "best of both": _best_of_both,
    # what scrumbot does now: the anaphor rule, else best of both when the question alone
    # passes the gate (retrieve.Retriever.retrieve)
    "scrumbot (current)": lambda index, q, h: index.bot.retriever.retrieve(q, h).query,
}


def items(files: list[Path]) -> list[Item]:
    out = []
    for turns in evaluate.load(files):
        history: list[tuple[str, str]] = []
        for case in turns:
            out.append(Item(case, list(history)))
            history.append((case.q, ""))
    return out


def query(index: "Index", it: Item, method: str) -> str:
    return FOLLOWUP[method](index, it.case.q, it.history)


class Index:
    """One real index plus a BM25 view of the same chunks."""

    def __init__(self, settings: Settings, corpus: list[Path], embeddings, tmp: Path):
        from rank_bm25 import BM25Okapi

        self.bot = Assistant(settings.replace(index_dir=tmp), embeddings=embeddings)
        self.bot.index(corpus)
        self.chunks = self.bot.store.all_chunks()
        self.bm25 = BM25Okapi([tokens(d.page_content) for d in self.chunks])
        self._vec: dict[str, list[float]] = {}

    def vector(self, text: str) -> list[float]:
        if text not in self._vec:
            self._vec[text] = self.bot.embeddings.embed_query(text)
        return self._vec[text]

    def dense(self, text: str, k: int) -> list[tuple[str, float]]:
        """(source stem, cosine) of the top k."""
        hits = self.bot.store.search(self.vector(text), k=k)
        return [(evaluate.source_stem(d.metadata["source"]), s) for d, s in hits]

    def dense_ids(self, text: str, k: int) -> list[str]:
        return [d.id for d, _ in self.bot.store.search(self.vector(text), k=k)]

    def bm25_ids(self, text: str, k: int) -> list[str]:
        scores = self.bm25.get_scores(tokens(text))
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
        return [self.chunks[i].id for i in order if scores[i] > 0]

    def hybrid(self, text: str, k: int, pool: int = 10, rrf_k: int = 60) -> list[str]:
        """Reciprocal rank fusion of dense and BM25 (what LangChain's EnsembleRetriever does)."""
        fused: dict[str, float] = {}
        for ranking in (self.dense_ids(text, pool), self.bm25_ids(text, pool)):
            for rank, cid in enumerate(ranking):
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (rrf_k + rank + 1)
        best = sorted(fused, key=lambda c: -fused[c])[:k]
        stem = {d.id: evaluate.source_stem(d.metadata["source"]) for d in self.chunks}
        return [stem[c] for c in best]


def hit_rates(index: Index, its: list[Item], method: str, k: int, mode: str) -> tuple[int, int, int]:
    """(hit@1, hit@k, cases) over the answerable items."""
    h1 = hk = n = 0
    for it in its:
        if not it.case.sources:
            continue
        text = query(index, it, method)
        stems = [s for s, _ in index.dense(text, k)] if mode == "dense" else index.hybrid(text, k)
        n += 1
        h1 += bool(stems[:1]) and stems[0] in it.case.sources
        hk += any(s in it.case.sources for s in stems)
    return h1, hk, n


def gate_table(index: Index, its: list[Item], method: str, thresholds: list[float]) -> list[str]:
    top = [(it, index.dense(query(index, it, method), 1)[0][1]) for it in its]
    ans = [s for it, s in top if not it.case.refuse]
    out = [s for it, s in top if it.case.refuse]
    lines = [f"  best dense score: answerable min {min(ans):.3f} (median {sorted(ans)[len(ans)//2]:.3f}), "
             f"out-of-scope max {max(out):.3f} (median {sorted(out)[len(out)//2]:.3f})"]
    lines.append("  threshold  refused-answerable  out-of-scope-passed-to-model")
    for t in thresholds:
        lines.append(f"  {t:9.2f}  {sum(s < t for s in ans):>6}/{len(ans):<11}  {sum(s >= t for s in out):>6}/{len(out)}")
    low = sorted(((s, it.case.id, it.case.q) for it, s in top if not it.case.refuse))[:5]
    high = sorted(((s, it.case.id, it.case.q) for it, s in top if it.case.refuse), reverse=True)[:5]
    lines.append("  lowest answerable: " + "; ".join(f"{i} {s:.2f}" for s, i, _ in low))
    lines.append("  highest out-of-scope: " + "; ".join(f"{i} {s:.2f}" for s, i, _ in high))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the current settings")
    args = ap.parse_args()
    base = Settings.from_env()
    bot = Assistant(base)
    embeddings = bot.embeddings
    sets = {"own": (OWN, OWN_CORPUS), "public": (PUBLIC, PUBLIC_CORPUS)}
    its = {name: items(files) for name, (files, _) in sets.items()}
    chunkings = [(base.chunk_size, base.chunk_overlap)] if args.quick else \
        [(300, 50), (400, 60), (500, 80), (600, 80), (800, 100), (1000, 200)]
    ks = [base.k] if args.quick else [1, 2, 3, 4, 5]
    methods = list(FOLLOWUP)
    with tempfile.TemporaryDirectory() as tmp:
        for size, overlap in chunkings:
            s = base.replace(chunk_size=size, chunk_overlap=overlap)
            idx = {name: Index(s, corpus, embeddings, Path(tmp) / f"{name}-{size}")
                   for name, (_, corpus) in sets.items()}
            print(f"\n== chunk_size {size}, overlap {overlap}: "
                  f"{len(idx['own'].chunks)} chunks (own corpus), {len(idx['public'].chunks)} (public)")
            print("  set     k  mode    follow-up               hit@1        hit@k")
            for name in sets:
                for k in ks:
                    for mode in ("dense", "hybrid"):
                        for method in (methods if (k == base.k and mode == "dense") else [methods[-1]]):
                            h1, hk, n = hit_rates(idx[name], its[name], method, k, mode)
                            print(f"  {name:6} {k:2}  {mode:6}  {method:22} {h1:3}/{n} {100*h1/n:5.1f}%"
                                  f"  {hk:3}/{n} {100*hk/n:5.1f}%")
            later = {name: [it for it in its[name] if it.case.turn > 1] for name in sets}
            print(f"  follow-up turns only (k={base.k}, dense): method, hit@1, hit@k, best score of each turn")
            for name in sets:
                for method in methods:
                    h1, hk, n = hit_rates(idx[name], later[name], method, base.k, "dense")
                    tops = " ".join(f"{it.case.id}={idx[name].dense(query(idx[name], it, method), 1)[0][1]:.2f}"
                                    for it in later[name])
                    print(f"  {name:6} {method:22} {h1:2}/{n} {hk:2}/{n}   {tops}")
            for name in sets:
                print(f"  gate on the {name} set (scrumbot's follow-up rule):")
                print("\n".join(gate_table(idx[name], its[name], methods[-1],
                                           [0.15, 0.20, 0.25, 0.30, 0.35, 0.40])))


if __name__ == "__main__":
    main()
