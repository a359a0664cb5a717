"""The page as a course workspace, in a real headless Chromium against tests/app_with_fakes.py
(the page `scrumbot serve` builds, answering with the fake embedder and echo model): a trainer
starts a course by uploading a file and gets answers citing it; a long answer is stopped; the
conversation is exported; a student account sees no way to change a course."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from test_browser import CHROMIUM, CHROMIUM_ARGS, _free_port

pytestmark = pytest.mark.slow

HANDOUT = ("# Retrospective formats\n\nThe starfish retrospective sorts ideas into keep, stop, start, "
           "more and less.\n\n# Facilitation\n\nA good facilitator timeboxes every retrospective activity.\n")


def start_app(tmp: Path, **env: str):
    port = _free_port()
    full_env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(tmp / "index"), "SCRUMBOT_PORT": str(port),
                "SCRUMBOT_MIN_SCORE": "0.2", "PYTHONPATH": str(REPO / "src"), **env}
    log = open(tmp / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "app_with_fakes.py")], cwd=REPO,
                            env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the app exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, log
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("the page did not come up within 120 s")


def stop_app(proc) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def trainer_app():
    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-workspace-"))
    proc, url, log = start_app(tmp, SCRUMBOT_TEST_TOKEN_DELAY="0.1")
    yield url, tmp, log
    stop_app(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, url):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url, wait_until="load")
    expect(page.locator("#question textarea")).to_be_visible(timeout=30_000)
    return page


def last_answer(page):
    return page.locator("#chat .message.bot, #chat [data-testid='bot']").last


def ask(page, question: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()


def test_a_trainer_starts_a_course_by_uploading_and_its_answers_cite_the_file(trainer_app, browser):
    from playwright.sync_api import expect

    url, tmp, _ = trainer_app
    handout = tmp / "retro-guide.md"
    handout.write_text(HANDOUT)
    page = open_page(browser, url)
    picker = page.locator("#course input")
    picker.click()
    picker.fill("retro")
    picker.press("Enter")
    page.get_by_role("tab", name="Documents").click()
    page.locator("#upload input[type=file]").set_input_files(str(handout))
    expect(page.locator("#index-summary")).to_contain_text("retro: added 1", timeout=60_000)
    expect(page.locator("#documents")).to_contain_text("retro-guide.md")
    expect(page.locator("#documents")).to_contain_text("uploaded")
    # stored in the course's own folder
    assert (tmp / "courses" / "retro" / "files" / "retro-guide.md").read_text() == HANDOUT

    page.get_by_role("tab", name="Chat").click()
    ask(page, "What does the starfish retrospective sort ideas into?")
    expect(last_answer(page)).to_contain_text("[1] retro-guide.md", timeout=60_000)
    expect(last_answer(page)).to_contain_text("keep, stop, start")
    expect(page.locator("#sources")).to_contain_text("retro-guide.md")
    # the examples are the new course's own
    expect(page.locator("#examples")).to_contain_text("Retrospective formats", timeout=30_000)

    # back in the default course the conversation restarts, and the handout is not there
    picker.click()
    picker.fill("default")
    picker.press("Enter")
    expect(page.locator("#chat")).not_to_contain_text("starfish", timeout=10_000)
    ask(page, "What does the starfish retrospective sort ideas into?")
    expect(last_answer(page)).not_to_have_text("", timeout=60_000)
    expect(last_answer(page)).not_to_contain_text("retro-guide.md")
    page.close()


def test_stop_keeps_the_partial_answer_and_frees_the_model(trainer_app, browser):
    from playwright.sync_api import expect

    url, _, log = trainer_app
    page = open_page(browser, url)
    ask(page, "Tell me slowly who Braintrust Group is")
    expect(last_answer(page)).to_contain_text("Braintrust", timeout=60_000)
    page.locator("#stop").click()
    expect(last_answer(page)).to_contain_text("(stopped)", timeout=10_000)
    stopped = last_answer(page).inner_text()
    time.sleep(1.5)
    assert last_answer(page).inner_text() == stopped  # nothing more arrives
    log.seek(0)
    closed = [line for line in log.read().splitlines() if line.startswith("stream closed after")]
    done, total = map(int, closed[-1].removeprefix("stream closed after ").split(" of ")[0:1]
                      + closed[-1].split(" of ")[1].split()[0:1])
    assert done < total, closed[-1]  # the model's stream was closed halfway
    # the model is free: the next question is answered in full
    ask(page, "Who is Braintrust Group?")
    expect(last_answer(page)).to_contain_text("[1] product-owner-101.txt", timeout=30_000)
    page.close()


def test_the_conversation_exports_as_markdown_and_json(trainer_app, browser):
    from playwright.sync_api import expect

    url, _, _ = trainer_app
    page = open_page(browser, url)
    ask(page, "Who is Braintrust Group?")
    expect(last_answer(page)).to_contain_text("[1] product-owner-101.txt", timeout=60_000)
    page.locator("#export").click()
    links = page.locator("#exported a")
    expect(links).to_have_count(2, timeout=20_000)
    files = {}
    for i in range(2):
        href = links.nth(i).get_attribute("href")
        files[Path(href.split("?")[0]).name] = page.request.get(href if "://" in href else url + href.lstrip("/")).text()
    md, js = files["conversation.md"], json.loads(files["conversation.json"])
    assert "## 1. Who is Braintrust Group?" in md
    assert "[1] product-owner-101.txt" in md and "> Braintrust Group is" in md  # citation and passage
    turn = js["turns"][0]
    assert turn["question"] == "Who is Braintrust Group?" and not turn["refused"]
    assert turn["sources"][0]["source"] == "product-owner-101.txt" and "Braintrust" in turn["sources"][0]["text"]
    page.close()


def test_a_student_sees_no_upload_control(browser, tmp_path):
    from playwright.sync_api import expect

    proc, url, _ = start_app(tmp_path, SCRUMBOT_AUTH="trainer:trainer-pass,student:student-pass",
                             SCRUMBOT_TRAINERS="trainer")
    try:
        for user, can_change in (("student", False), ("trainer", True)):
            page = browser.new_page()
            page.goto(url, wait_until="load")
            page.locator("input[type=text]").first.fill(user)
            page.locator("input[type=password]").fill(f"{user}-pass")
            page.locator("button", has_text="Login").click()
            expect(page.locator("#question textarea")).to_be_visible(timeout=30_000)
            ask(page, "Who is Braintrust Group?")
            expect(last_answer(page)).to_contain_text("[1] product-owner-101.txt", timeout=60_000)
            tab = page.get_by_role("tab", name="Documents")
            if can_change:
                expect(tab).to_be_visible()
            else:
                expect(tab).to_have_count(0)
                expect(page.locator("#upload")).to_have_count(0)
            page.close()
    finally:
        stop_app(proc)
