"""Real servers on 127.0.0.1 for the tests: Chroma (`chroma run`), llama.cpp's OpenAI-compatible
server (`python -m llama_cpp.server`) and a token-checking reverse proxy.

Each server is a subprocess on a free loopback port, waited for until it answers, and stopped at
the end. `kill()` (SIGKILL) is a crash, `pause()` (SIGSTOP) a server that accepts connections but
never answers: the two failures a client's error handling and timeouts must survive."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Sequence

VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET url, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, http.client.HTTPException):
        return None


class ServerProcess:
    """One server subprocess: start, wait until `ready_path` answers 200, stop, crash, freeze."""

    def __init__(self, name: str, argv: Sequence[str], port: int, ready_path: str, log_path: Path,
                 ready_headers: dict[str, str] | None = None, ready_timeout: float = 180.0,
                 env: dict[str, str] | None = None):
        self.name, self.argv, self.port = name, list(argv), port
        self.ready_path, self.ready_headers = ready_path, ready_headers
        self.log_path, self.ready_timeout = log_path, ready_timeout
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None  # how long the last start took

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "ServerProcess":
        started = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # its own session, so a Ctrl-C in the test run doesn't reach it before we stop it
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=self.env)
        log.close()
        deadline = started + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was "
                                   f"ready:\n{self.log_tail()}")
            if http_status(self.url + self.ready_path, self.ready_headers, timeout=1.0) == 200:
                break
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} was not ready after {self.ready_timeout:.0f}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)
        self.ready_seconds = time.perf_counter() - started
        return self

    def stop(self) -> None:
        """Ask it to stop (SIGTERM), then make it (SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()  # a stopped process cannot handle SIGTERM
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def kill(self) -> None:
        """Crash it: SIGKILL, no chance to clean up or finish a response."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def pause(self) -> None:
        """Freeze it: the kernel still accepts connections on its port, nothing ever answers."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> "ServerProcess":
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def chroma_argv(path: Path, port: int) -> list[str]:
    return [str(VENV_BIN / "chroma"), "run", "--path", str(path), "--host", LOOPBACK, "--port", str(port)]


def chroma_server(path: Path, log_path: Path, port: int | None = None) -> ServerProcess:
    """`chroma run` over `path` (not started yet). Its data survives restarts on the same path."""
    port = port or free_port()
    return ServerProcess("chroma", chroma_argv(path, port), port, "/api/v2/heartbeat", log_path,
                         ready_timeout=60.0)


def llama_argv(model: Path, alias: str, port: int, api_key: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
            "--host", LOOPBACK, "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
            "--interrupt_requests", "False"]
    if api_key:
        argv += ["--api_key", api_key]
    return argv


def llama_server(model: Path, alias: str, log_path: Path, port: int | None = None,
                 api_key: str | None = None, argv: Sequence[str] | None = None) -> ServerProcess:
    """llama.cpp's OpenAI-compatible server with one GGUF, served under the name `alias`."""
    port = port or free_port()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return ServerProcess("llama_cpp.server", argv or llama_argv(model, alias, port, api_key), port,
                         "/v1/models", log_path, ready_headers=headers, ready_timeout=240.0)


class AuthProxy:
    """A reverse proxy that forwards to `upstream` only requests carrying `header: value`.

    Chroma 1.x's own server has no authentication: a deployment puts it behind a proxy (nginx,
    Caddy) that checks a token. This is that proxy, small enough to run inside the tests; every
    request and its status is recorded so tests can see what the client sent."""

    def __init__(self, upstream_port: int, header: str, value: str):
        self.upstream_port, self.header, self.value = upstream_port, header, value
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.headers.get(proxy.header) != proxy.value:
                    payload = b'{"error":"Unauthorized","message":"missing or wrong token"}'
                    self._reply(401, {"Content-Type": "application/json"}, payload)
                    return
                upstream = http.client.HTTPConnection(LOOPBACK, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("host", "connection", proxy.header.lower())}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    kept = {k: v for k, v in response.getheaders()
                            if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                    self._reply(response.status, kept, data)
                except OSError:
                    self._reply(502, {"Content-Type": "text/plain"}, b"upstream unreachable")
                finally:
                    upstream.close()

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                proxy.seen.append((self.command, self.path, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> "AuthProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
