"""Speed and memory of the whole path, printed next to the targets (`make bench`).

    python benchmarks/bench.py [--questions FILE.jsonl] [--repeat N] [--skip-bulk]

Figures are medians (p50) or p95 over repeated runs: the machine is shared and noisy.
Every figure is measured in this run, with the settings in force (SCRUMBOT_* apply)."""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scrumbot.config import Settings, apply_offline_env  # noqa: E402

apply_offline_env()

DEFAULT_QUESTIONS = REPO.parent / "shared" / "eval" / "questions.jsonl"
WORDS = ("backlog sprint review scrum team product owner stakeholder increment velocity kanban "
         "retrospective impediment coach estimate story epic release roadmap value customer "
         "feedback quality definition done refinement planning daily standup board flow").split()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    idx = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[idx]


def synthetic_text(rng: random.Random, words: int) -> str:
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        n = rng.randint(8, 18)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
    return " ".join(sentences)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, name: str, value: float, unit: str, target: str, ok: bool | None) -> None:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        self.rows.append((name, f"{value:,.3f} {unit}" if value < 100 else f"{value:,.0f} {unit}", target, verdict))
        print(f"  {name:<46} {self.rows[-1][1]:>14}   target {target:<12} {verdict}", flush=True)

    def markdown(self) -> str:
        lines = ["| figure | measured | target | |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def bench_answers(settings: Settings, questions: list[dict], repeat: int, table: Table) -> None:
    from scrumbot import Assistant

    assistant = Assistant(settings)
    assistant.index([settings.corpus_dir])
    t = time.perf_counter()
    assistant.warm()
    print(f"  (warm-up: models loaded and first answer in {time.perf_counter() - t:.1f} s)")
    ttft, total, tokens, refusals = [], [], [], 0
    for _ in range(repeat):
        for item in questions:
            answer = assistant.answer(item["q"])
            if answer.refused and "first_token_s" not in answer.timings:
                refusals += 1
                continue
            ttft.append(answer.timings["first_token_s"])
            total.append(answer.timings["total_s"])
            tokens.append(prompt_tokens(assistant, item["q"]))
    print(f"  ({len(total)} generated answers; {refusals} refused before generation, not counted)")
    table.add("time to first token p50", pct(ttft, 0.5), "s", "≤ 2.0 s", pct(ttft, 0.5) <= 2.0)
    table.add("time to first token p95", pct(ttft, 0.95), "s", "", None)
    table.add("whole answer p50", pct(total, 0.5), "s", "≤ 5 s", pct(total, 0.5) <= 5.0)
    table.add("whole answer p95", pct(total, 0.95), "s", "", None)
    table.add("prompt tokens per answer p50", pct(tokens, 0.5), "tok", "", None)
    q = assistant.retriever
    times = []
    for _ in range(5):
        for item in questions:
            t = time.perf_counter()
            q.retrieve(item["q"])
            times.append(time.perf_counter() - t)
    table.add(f"retrieval p50 at corpus size ({assistant.store.count()} chunks)", 1000 * pct(times, 0.5), "ms", "", None)


def prompt_tokens(assistant, question: str) -> int:
    """Tokens of the prompt the model gets for `question` (chat template included)."""
    from scrumbot.chain import chain_inputs
    from langchain_core.prompts import ChatPromptTemplate  # noqa: F401

    retrieval = assistant.retriever.retrieve(question)
    passages = [p for p in retrieval.passages if p.score >= assistant.settings.min_score]
    inputs = chain_inputs(question, passages, [], assistant.settings.max_context_chars)
    messages = assistant.chain.first.invoke(inputs).to_messages()
    llm = assistant.llm
    client = getattr(llm, "client", None)
    text = "".join(f"<|im_start|>{m.type}\n{m.content}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
    if client is not None and hasattr(client, "tokenize"):
        return len(client.tokenize(text.encode(), add_bos=False, special=True))
    return len(text) // 4


def bench_retrieval_10k(table: Table) -> None:
    """10,000 chunks in a real Chroma collection: real query embedding + real search."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from scrumbot import Assistant

    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-bench-10k-"))
    settings = Settings.from_env(index_dir=tmp / "index")
    assistant = Assistant(settings)
    emb = assistant.embeddings
    # A real collection of 10,000 vectors, built the way scrumbot builds its own, filled with
    # random unit vectors (embedding 10k real chunks would take ~7 minutes and measure nothing
    # more about search time).
    store = assistant.store
    collection = store._collection(create=True)
    rng = random.Random(1)
    import numpy as np

    vecs = np.random.default_rng(1).normal(size=(10_000, 384)).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for start in range(0, 10_000, 2_000):
        ids = [f"c{i}" for i in range(start, start + 2_000)]
        collection.add(ids=ids, embeddings=vecs[start:start + 2_000].tolist(),
                       documents=[synthetic_text(rng, 40) for _ in ids],
                       metadatas=[{"source": f"doc{i // 10}.md", "root": "/bench", "chunk": i % 10} for i in range(start, start + 2_000)])
    del chromadb, ChromaSettings
    questions = ["Which cert suits a business analyst?", "What does a ScrumMaster do?", "Who manages the backlog?"]
    times = []
    for _ in range(10):
        for question in questions:
            t = time.perf_counter()
            assistant.retriever.retrieve(question)
            times.append(time.perf_counter() - t)
    table.add("retrieval p50 at 10,000 chunks (embed + search)", 1000 * pct(times, 0.5), "ms", "≤ 30 ms", 1000 * pct(times, 0.5) <= 30)


def bench_indexing(table: Table, n_docs: int, rounds: int = 3) -> None:
    """Indexing throughput vs the embedder's raw encode throughput, measured back to back,
    `rounds` times into fresh indexes (medians: one round varies by +-7 % on this machine)."""
    from scrumbot import Assistant

    rng = random.Random(2)
    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-bench-index-"))
    docs = tmp / "docs"
    docs.mkdir()
    for i in range(n_docs):
        (docs / f"doc{i:04d}.md").write_text(f"# Topic {i}\n\n" + synthetic_text(rng, 420))
    warm = tmp / "warm"
    warm.mkdir()
    (warm / "warm.md").write_text("# Warm up\n\n" + synthetic_text(rng, 50))
    settings = Settings.from_env(index_dir=tmp / "index-0")
    first = Assistant(settings)
    from scrumbot.ingest import discover, load_chunks

    files, _ = discover(docs)
    texts = [c.page_content for f in files for c in load_chunks(f, settings)]
    st = first.embeddings._client  # the SentenceTransformer behind HuggingFaceEmbeddings
    st.encode(texts[:32], batch_size=32, normalize_embeddings=True)  # warm
    raws, rates = [], []
    for r in range(rounds):
        t = time.perf_counter()
        st.encode(texts, batch_size=32, normalize_embeddings=True)
        raws.append(len(texts) / (time.perf_counter() - t))
        assistant = Assistant(settings.replace(index_dir=tmp / f"index-{r}"), embeddings=first.embeddings,
                              embedder_name=first.embedder_name)
        # one small file first: the one-time imports and opening the index are not throughput
        assistant.index([warm])
        report = assistant.index([docs])
        rates.append(report.chunks_embedded / report.seconds)
        print(f"  (round {r + 1}: raw {raws[-1]:.1f}, indexing {rates[-1]:.1f} chunks/s, "
              f"{rates[-1] / raws[-1]:.3f}x)", flush=True)
    raw, rate = statistics.median(raws), statistics.median(rates)
    ratio = statistics.median(x / y for x, y in zip(rates, raws))
    table.add(f"embedder raw encode ({len(texts)} chunks) p50", raw, "chunks/s", "", None)
    table.add("indexing throughput p50", rate, "chunks/s", "≥ 0.9 × raw", ratio >= 0.9)
    table.add("indexing / raw encode p50 (same round)", ratio, "×", "≥ 0.9", ratio >= 0.9)


def bench_noop_reindex(table: Table, n_docs: int = 1000) -> None:
    from scrumbot import Assistant

    rng = random.Random(3)
    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-bench-noop-"))
    docs = tmp / "docs"
    docs.mkdir()
    for i in range(n_docs):
        (docs / f"note{i:04d}.txt").write_text(synthetic_text(rng, 30))
    assistant = Assistant(Settings.from_env(index_dir=tmp / "index"))
    first = assistant.index([docs])
    times = []
    for _ in range(3):
        report = assistant.index([docs])
        assert report.chunks_embedded == 0, report.summary()
        times.append(report.seconds)
    print(f"  (first index of {n_docs} docs: {first.chunks_embedded} chunks in {first.seconds:.1f} s)")
    table.add(f"no-change re-index of {n_docs} docs p50", pct(times, 0.5), "s", "≤ 2 s", pct(times, 0.5) <= 2)


def bench_cold_start(settings: Settings, table: Table) -> None:
    """A new process: import, load embedder + index + model, answer one question."""
    code = ("import time; t=time.perf_counter();"
            "from scrumbot import Assistant; a=Assistant(); r=a.answer('Which cert suits a business analyst?');"
            "print(time.perf_counter()-t, r.refused)")
    env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(settings.index_dir)}
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        runs.append(time.perf_counter() - t)
        assert out.stdout.split()[1] == "False", out.stdout
    table.add("cold start → first answer p50 (new process)", pct(runs, 0.5), "s", "≤ 15 s", pct(runs, 0.5) <= 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the questions (default 3)")
    parser.add_argument("--index-docs", type=int, default=60, help="documents for the throughput test")
    parser.add_argument("--skip-bulk", action="store_true", help="skip 10k retrieval, throughput and 1,000-doc re-index")
    parser.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    args = parser.parse_args()

    questions = [json.loads(line) for line in args.questions.read_text().splitlines() if line.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-bench-"))
    settings = Settings.from_env(index_dir=tmp / "index")
    table = Table()
    print(f"scrumbot benchmark: llm={settings.llm} model={settings.model} threads={settings.n_threads} "
          f"k={settings.k} questions={len(questions)}×{args.repeat}")
    bench_answers(settings, questions, args.repeat, table)
    table.add("peak RSS (answering process)", peak_rss_mb(), "MB", "≤ 2,500 MB", peak_rss_mb() <= 2500)
    bench_cold_start(settings, table)
    if not args.skip_bulk:
        bench_retrieval_10k(table)
        bench_indexing(table, args.index_docs)
        bench_noop_reindex(table)
    if args.markdown:
        print()
        print(table.markdown())


if __name__ == "__main__":
    main()
