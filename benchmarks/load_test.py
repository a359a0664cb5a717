"""Load test: N concurrent chat sessions through the Gradio API (gradio_client) against
`scrumbot serve` on 127.0.0.1. Every request must be answered, none may error, and the server's
memory is sampled throughout.

    .venv/bin/python benchmarks/load_test.py                      # 20 sessions, default model
    .venv/bin/python benchmarks/load_test.py --sessions 5 --llm extractive
    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:7860/ --auth user:pw

Without --url it starts its own server (a temporary index of corpus/, a free loopback port) and
stops it at the end. Bounded: --deadline seconds for the whole run (requests still waiting then
count as unanswered). Prints throughput, latency percentiles (first streamed output and full
answer, both including the time spent waiting in Gradio's queue), errors and peak RSS; exits 1
if any request failed or went unanswered."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a conversation per session: a question, a follow-up that needs the history, one out of scope
CONVERSATION = [
    "Which cert suits a business analyst?",
    "How do I get it?",
    "What is the capital of France?",
]


@dataclass
class Request:
    session: int
    turn: int
    question: str
    started: float
    first_output_s: float | None = None
    total_s: float | None = None
    answer: str = ""
    error: str | None = None


@dataclass
class Report:
    sessions: int
    turns: int
    llm: str
    requests: int
    answered: int
    errors: list[str]
    unanswered: int
    wall_s: float
    throughput_rps: float
    latency_s: dict
    first_output_s: dict
    rss_mb: dict
    refusals: int
    details: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.unanswered and self.answered == self.requests

    def text(self) -> str:
        lat, first, rss = self.latency_s, self.first_output_s, self.rss_mb
        lines = [
            f"{self.sessions} sessions x {self.turns} turns ({self.llm}): {self.answered}/{self.requests} answered, "
            f"{len(self.errors)} errors, {self.unanswered} unanswered, {self.refusals} refusals",
            f"wall {self.wall_s:.1f}s, throughput {self.throughput_rps:.3f} answers/s",
            f"answer latency  p50 {lat.get('p50', 0):.1f}s  p95 {lat.get('p95', 0):.1f}s  max {lat.get('max', 0):.1f}s",
            f"first output    p50 {first.get('p50', 0):.1f}s  p95 {first.get('p95', 0):.1f}s  max {first.get('max', 0):.1f}s",
            f"server RSS      ready {rss.get('ready', 0):.0f} MB, peak {rss.get('peak', 0):.0f} MB, "
            f"end {rss.get('end', 0):.0f} MB",
        ]
        lines += [f"  error: {e}" for e in self.errors[:10]]
        return "\n".join(lines)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"p50": statistics.median(ordered), "p95": at(0.95), "max": ordered[-1], "mean": statistics.fmean(ordered)}


def loopback_only(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"refusing to load-test {url}: only loopback addresses (127.0.0.1) are allowed")


class MemorySampler(threading.Thread):
    """RSS of a process and its children, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.interval, self.samples, self._halt = interval, [], threading.Event()

    def rss_mb(self) -> float:
        import psutil

        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.samples.append(self.rss_mb())
            except Exception:
                break
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Server:
    """`scrumbot serve` on a free 127.0.0.1 port with its own temporary index."""

    def __init__(self, llm: str, env: dict[str, str] | None = None, ready_timeout: float = 600,
                 keep: bool = True):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="scrumbot-load-"))
        self.env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(self.dir / "index"), "SCRUMBOT_PORT": str(self.port),
                    "SCRUMBOT_HOST": "127.0.0.1", "SCRUMBOT_LLM": llm, **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.dir / "server.log"
        self.ready_timeout = ready_timeout
        self.keep = keep  # the folder (index, server log) stays for a look afterwards
        self.proc: subprocess.Popen | None = None
        self.ready_s = 0.0

    def __enter__(self) -> "Server":
        started = time.monotonic()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "scrumbot.cli", "serve"], env=self.env, cwd=REPO,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scrumbot serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > self.ready_timeout:
                self.__exit__()
                raise RuntimeError(f"scrumbot serve was not ready after {self.ready_timeout:.0f}s:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        self.ready_s = time.monotonic() - started
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if not self.keep:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def run_session(url: str, session: int, turns: int, deadline: float, auth: tuple[str, str] | None,
                log: list[Request], lock: threading.Lock) -> None:
    from gradio_client import Client

    try:
        client = Client(url, auth=auth, verbose=False)
    except Exception as err:
        with lock:
            log.append(Request(session, 0, "(connect)", time.monotonic(), error=f"connect: {type(err).__name__}: {err}"))
        return
    chat: list = []
    for turn in range(turns):
        question = CONVERSATION[turn % len(CONVERSATION)]
        request = Request(session, turn, question, time.monotonic())
        with lock:
            log.append(request)
        try:
            job = client.submit(question, chat, api_name="/ask")
            outputs = None
            for outputs in job:  # each streamed update, then the final one
                if request.first_output_s is None:
                    request.first_output_s = time.monotonic() - request.started
                if time.monotonic() > deadline:
                    job.cancel()
                    raise TimeoutError("deadline reached while answering")
            remaining = max(1.0, deadline - time.monotonic())
            outputs = job.result(timeout=remaining)
            _, chat, _ = outputs
            request.answer = _text(chat[-1]["content"]) if chat else ""
            request.total_s = time.monotonic() - request.started
            if not request.answer.strip():
                request.error = "empty answer"
        except Exception as err:
            request.error = f"{type(err).__name__}: {err}"[:300]
            return


def run(url: str, sessions: int, turns: int, deadline_s: float, auth: tuple[str, str] | None = None,
        server_pid: int | None = None, llm: str = "?") -> Report:
    loopback_only(url)
    sampler = MemorySampler(server_pid) if server_pid else None
    ready_rss = sampler.rss_mb() if sampler else 0.0
    if sampler:
        sampler.start()
    log: list[Request] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + deadline_s
    threads = [threading.Thread(target=run_session, args=(url, i, turns, deadline, auth, log, lock), daemon=True)
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 30)
    wall = time.monotonic() - started
    if sampler:
        sampler.stop()
    with lock:
        done = [r for r in log if r.total_s is not None and not r.error]
        errors = [f"session {r.session} turn {r.turn}: {r.error}" for r in log if r.error]
        requests = sessions * turns
    refusals = sum("doesn't cover" in r.answer for r in done)
    samples = sampler.samples if sampler else []
    return Report(
        sessions=sessions, turns=turns, llm=llm, requests=requests, answered=len(done), errors=errors,
        unanswered=requests - len(done) - len(errors), wall_s=wall,
        throughput_rps=len(done) / wall if wall else 0.0,
        latency_s=percentiles([r.total_s for r in done]),
        first_output_s=percentiles([r.first_output_s for r in done if r.first_output_s is not None]),
        rss_mb={"ready": ready_rss, "peak": max(samples, default=ready_rss), "end": samples[-1] if samples else 0.0},
        refusals=refusals,
        details=[{k: v for k, v in asdict(r).items() if k != "started"} for r in log],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=2, help="questions per session (a conversation)")
    parser.add_argument("--llm", default="llamacpp", choices=["llamacpp", "openai", "extractive"])
    parser.add_argument("--deadline", type=float, default=1800, help="seconds for the whole run")
    parser.add_argument("--url", help="an already running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--auth", help="user:password, if the server asks for it")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None

    if args.url:
        report = run(args.url, args.sessions, args.turns, args.deadline, auth, llm=args.llm)
    else:
        env = {"SCRUMBOT_AUTH": args.auth} if args.auth else {}
        with Server(args.llm, env) as server:
            print(f"server ready in {server.ready_s:.1f}s at {server.url} (log: {server.log_path})", file=sys.stderr)
            report = run(server.url, args.sessions, args.turns, args.deadline, auth, server.proc.pid, args.llm)
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
