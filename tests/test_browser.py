"""The chat page in a real headless Chromium (Debian's), against `python app.py` with the real
embedder and the real default model: type a question, wait for the streamed answer, and check
that the answer and its source are on the page."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app():
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-browser-"))
    env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(tmp / "index"), "SCRUMBOT_PORT": str(port)}
    log = open(tmp / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the page did not come up within 180 s")
    yield url, tmp
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_page_streams_an_answer_with_its_source(served_app):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = served_app
    with sync_playwright() as pw:
        # launch() gives Chromium a fresh temporary profile of its own
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        # Gradio keeps a connection open: wait for load, then the textbox, never for networkidle
        page.goto(url, wait_until="load")
        box = page.locator("#question textarea")
        expect(box).to_be_visible(timeout=30_000)
        box.fill("Which cert suits a business analyst?")
        page.locator("#ask").click()
        bot = page.locator("#chat .message.bot, #chat [data-testid='bot']").last
        # the citation footer is added when the stream has finished
        expect(bot).to_contain_text("[1] product-owner-101.txt", timeout=120_000)
        expect(bot).to_contain_text("CSPO")
        sources = page.locator("#sources")
        expect(sources).to_contain_text("product-owner-101.txt")
        expect(sources).to_contain_text("business analysts")
        page.screenshot(path=str(tmp / "answer.png"), full_page=True)
        print(f"screenshot: {tmp / 'answer.png'}")
        browser.close()
