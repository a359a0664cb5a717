"""llama.cpp settings side by side on scrumbot's real prompts (issue: answers in seconds).

    python benchmarks/llama_levers.py [--rounds 3] [--model qwen2.5-coder-1.5b]

Each configuration loads the model once, then answers the same grounded prompts; rounds are
interleaved across configurations so that a noisy neighbour slows all of them alike.
Prints medians of time to first token, whole answer and decode speed, and whether the
answers stayed identical to the baseline's (greedy decoding: they should)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scrumbot.config import Settings, apply_offline_env  # noqa: E402

apply_offline_env()

QUESTIONS = [
    "Which cert suits a business analyst?",
    "What does a ScrumMaster do?",
    "How do I get the CSPO certification?",
    "What is Braintrust Group?",
    "Who manages the product backlog?",
]


def prompts(settings: Settings) -> list[list[dict]]:
    """The exact chat messages scrumbot sends for QUESTIONS (real retrieval, real prompt)."""
    import tempfile

    from scrumbot import Assistant
    from scrumbot.chain import build_prompt, chain_inputs

    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-levers-"))
    assistant = Assistant(settings.replace(index_dir=tmp / "index", llm="extractive"))
    assistant.index([settings.corpus_dir])
    role = {"system": "system", "human": "user", "ai": "assistant"}
    out = []
    for q in QUESTIONS:
        retrieval = assistant.retriever.retrieve(q)
        passages = [p for p in retrieval.passages if p.score >= settings.min_score]
        messages = build_prompt().invoke(chain_inputs(q, passages, [], settings.max_context_chars)).to_messages()
        out.append([{"role": role[m.type], "content": m.content} for m in messages])
    return out


def run_config(llm, chats: list[list[dict]], max_tokens: int) -> list[tuple[float, float, int, str]]:
    results = []
    for messages in chats:
        t0 = time.perf_counter()
        first = None
        text = ""
        for chunk in llm.create_chat_completion(messages=messages, stream=True, temperature=0.0,
                                                max_tokens=max_tokens, repeat_penalty=1.0):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                if first is None:
                    first = time.perf_counter() - t0
                text += delta
        n = len(llm.tokenize(text.encode(), add_bos=False))  # stream chunks may hold several tokens
        results.append((first or 0.0, time.perf_counter() - t0, n, text.strip()))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()
    settings = Settings.from_env(**({"model": args.model} if args.model else {}))

    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from scrumbot.models import gguf_path

    path = str(gguf_path(settings))
    chats = prompts(settings)
    base = dict(n_ctx=settings.n_ctx, n_threads=settings.n_threads, n_batch=512, verbose=False)
    # Flash attention is a load-time setting, and so is a draft model (it makes llama.cpp keep
    # the logits of every prompt position, which costs prefill time): one load per pair.
    configs = {}
    for flash in (False, True):
        for n in (None, 10):
            name = f"{'flash_attn' if flash else 'baseline'}{f' + prompt-lookup {n}' if n else ''}"
            draft = LlamaPromptLookupDecoding(num_pred_tokens=n) if n else None
            configs[name] = Llama(path, **base, flash_attn=flash, draft_model=draft)
    stats = {name: {"ttft": [], "total": [], "tps": [], "texts": []} for name in configs}
    for r in range(args.rounds):
        for name, llm in configs.items():
            llm.reset()  # no KV cache carried over from the previous configuration
            for ttft, total, n_tok, text in run_config(llm, chats, args.max_tokens):
                stats[name]["ttft"].append(ttft)
                stats[name]["total"].append(total)
                stats[name]["tps"].append(n_tok / max(total - ttft, 1e-6))
                stats[name]["texts"].append(text)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    baseline_texts = stats["baseline"]["texts"]
    print(f"{'config':<34}{'TTFT p50':>10}{'answer p50':>12}{'decode tok/s':>14}  same answers")
    for name, s in stats.items():
        same = sum(a == b for a, b in zip(s["texts"], baseline_texts))
        print(f"{name:<34}{statistics.median(s['ttft']):>9.2f}s{statistics.median(s['total']):>11.2f}s"
              f"{statistics.median(s['tps']):>14.1f}  {same}/{len(baseline_texts)}")


if __name__ == "__main__":
    main()
