"""Load: a trainer uploads a 50-page document into a new course through the page (headless
Chromium) while N sessions chat through the Gradio API. Every answer must arrive; the upload
must not hold them back (it runs in its own queue, and the store lets readers answer while a
write runs). Not a timed test: run it on a quiet machine and read the numbers.

    .venv/bin/python benchmarks/upload_while_chatting.py                    # default model
    .venv/bin/python benchmarks/upload_while_chatting.py --llm extractive --sessions 5

Starts its own `scrumbot serve` (a temporary index of corpus/, real embedder) on a free
loopback port. Prints the upload's time and summary, each answer's latency, and how many
answers were given while the upload was embedding and writing; exits 1 if any answer failed."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_test import CONVERSATION, Request, Server, run_session  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PAGE_CHARS = 3000  # a printed page of prose


def fifty_pages(path: Path, pages: int = 50) -> Path:
    """A handbook of `pages` pages, each under its own heading, with varied sentences."""
    topics = ["sprint planning", "the daily scrum", "backlog refinement", "the sprint review",
              "the retrospective", "release planning", "story mapping", "team working agreements",
              "estimation with story points", "the definition of done"]
    parts = []
    for p in range(pages):
        topic = topics[p % len(topics)]
        parts.append(f"# Page {p + 1}: {topic}\n")
        sentences, n = [], 0
        while sum(map(len, sentences)) < PAGE_CHARS:
            n += 1
            sentences.append(f"In week {p + 1}, step {n} of {topic} asks the team to check item "
                             f"{(p * 31 + n * 7) % 97} against the goal agreed on page {p + 1}.")
        parts.append(" ".join(sentences) + "\n")
    path.write_text("\n".join(parts))
    return path


def upload(url: str, document: Path, course: str, timeout_s: float) -> dict:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(url, wait_until="load")
        expect(page.locator("#question textarea")).to_be_visible(timeout=60_000)
        picker = page.locator("#course input")
        picker.click()
        picker.fill(course)
        picker.press("Enter")
        page.get_by_role("tab", name="Documents").click()
        started = time.monotonic()
        page.locator("#upload input[type=file]").set_input_files(str(document))
        expect(page.locator("#index-summary")).to_contain_text("added 1", timeout=timeout_s * 1000)
        finished = time.monotonic()
        summary = page.locator("#index-summary").inner_text()
        browser.close()
    return {"started": started, "finished": finished, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3, help="questions per session")
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--llm", default="llamacpp", choices=["llamacpp", "openai", "extractive"])
    parser.add_argument("--deadline", type=float, default=1800, help="seconds for the whole run")
    args = parser.parse_args(argv)

    document = fifty_pages(Path(tempfile.mkdtemp(prefix="scrumbot-upload-")) / "handbook.md", args.pages)
    print(f"document: {document.stat().st_size:,} bytes ({args.pages} pages)", file=sys.stderr)
    with Server(args.llm) as server:
        print(f"server ready in {server.ready_s:.1f}s at {server.url} (log: {server.log_path})", file=sys.stderr)
        log: list[Request] = []
        lock = threading.Lock()
        deadline = time.monotonic() + args.deadline
        chats = [threading.Thread(target=run_session, args=(server.url, i, args.turns, deadline, None, log, lock),
                                  daemon=True) for i in range(args.sessions)]
        for t in chats:
            t.start()
        time.sleep(2)  # the sessions are asking when the upload starts
        up = upload(server.url, document, "load-test", args.deadline)
        for t in chats:
            t.join(max(0.0, deadline - time.monotonic()) + 30)

    done = [r for r in log if r.total_s is not None and not r.error]
    failed = [r for r in log if r.error]
    expected = args.sessions * args.turns
    during = [r for r in done if r.started < up["finished"] and r.started + r.total_s > up["started"]]
    upload_s = up["finished"] - up["started"]
    print(f"llm {args.llm}; {args.sessions} sessions x {args.turns} questions "
          f"({', '.join(CONVERSATION[:args.turns])})")
    print(f"upload of {args.pages} pages: {upload_s:.1f}s in the page, summary: {up['summary'].splitlines()[0]}")
    print(f"answers: {len(done)}/{expected} arrived, {len(failed)} failed; "
          f"{len(during)} were being answered while the upload ran "
          f"({sum(r.started + r.total_s < up['finished'] for r in during)} of them finished before it did)")
    if done:
        latencies = sorted(r.total_s for r in done)
        print(f"answer latency (incl. queueing): median {statistics.median(latencies):.1f}s, "
              f"max {latencies[-1]:.1f}s")
    for r in failed:
        print(f"  session {r.session} turn {r.turn}: {r.error}")
    return 0 if len(done) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
