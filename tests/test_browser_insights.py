"""Feedback and the Trainer tab in a real headless Chromium: the page served as `scrumbot serve`
serves it (ui.launch, password login), over the real pipeline with the fake embedder and chat
model. A trainer gives an answer a thumbs down with a reason and finds it in the Trainer tab;
a student account has no Trainer tab, and its direct call to the report is refused."""

from __future__ import annotations

import socket

import pytest

from conftest import CORPUS, EchoChatModel, FakeEmbeddings
from scrumbot import Assistant
from scrumbot.ui import build_app, launch

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "pw-insights-1234"
QUESTION = "Who is Braintrust Group?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(settings):
    """serve(user) -> the URL of a page where `user` (password PASSWORD) logs in; trainers: teacher."""
    apps = []
    indexed = Assistant(settings.replace(corpus_dir=CORPUS), embeddings=FakeEmbeddings(), embedder_name="fake",
                        llm=EchoChatModel())
    indexed.index()

    def start(user: str) -> str:
        port = _free_port()
        bot = Assistant(settings.replace(min_score=0.2, port=port, auth=f"{user}:{PASSWORD}", trainers="teacher"),
                        embeddings=FakeEmbeddings(), embedder_name="fake", llm=EchoChatModel())
        app = build_app(bot)
        launch(app, bot.settings, block=False)
        apps.append((app, bot))
        return f"http://127.0.0.1:{port}/"

    yield start
    for app, _ in apps:
        app.close()


def _login(page, url: str, user: str):
    from playwright.sync_api import expect

    page.goto(url, wait_until="load")
    page.locator("input[name='username'], input[type='text']").first.fill(user)
    page.locator("input[type='password']").first.fill(PASSWORD)
    page.locator("button", has_text="Login").first.click()
    expect(page.locator("#question textarea")).to_be_visible(timeout=30_000)


def test_thumbs_down_with_a_reason_reaches_the_trainer_tab(serve, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url = serve("teacher")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        _login(page, url, "teacher")
        expect(page.locator("#log-notice")).to_contain_text("Questions are logged for the trainer, without names")
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#ask").click()
        bot = page.locator("#chat .message.bot, #chat [data-testid='bot']").last
        expect(bot).to_contain_text("[1] product-owner-101.txt", timeout=60_000)

        page.locator("#chat button[aria-label='Dislike'], #chat button[title='Dislike']").last.click()
        form = page.locator("#feedback").first  # (Gradio gives a group's two nested divs its id)
        expect(form).to_be_visible(timeout=10_000)
        form.get_by_label("not in the course but should be").check()
        page.locator("#feedback-text textarea, #feedback-text input").first.fill("say which countries")
        page.locator("#feedback-send").click()
        expect(form).to_be_hidden(timeout=10_000)

        page.get_by_role("tab", name="Trainer").click()
        page.locator("#trainer-refresh").click()
        report = page.locator("#trainer-report")
        expect(report).to_contain_text("Thumbs-down answers", timeout=60_000)
        disliked = report.locator("table").last
        expect(disliked).to_contain_text(QUESTION)
        expect(disliked).to_contain_text("not in the course but should be: say which countries")
        expect(report.locator(".totals")).to_contain_text("thumbs down1")
        page.screenshot(path=str(tmp_path / "trainer-tab.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'trainer-tab.png'}")
        browser.close()


def test_a_student_has_no_trainer_tab_and_cannot_call_the_report(serve):
    from gradio_client import Client
    from playwright.sync_api import expect, sync_playwright

    url = serve("student")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        _login(page, url, "student")
        expect(page.get_by_role("tab", name="Chat")).to_be_visible()
        page.wait_for_timeout(1500)  # the tab's visibility is decided by the page-load event
        expect(page.get_by_role("tab", name="Trainer")).to_have_count(0)
        expect(page.locator("#trainer-report")).to_have_count(0)
        browser.close()

    client = Client(url, auth=("student", PASSWORD), verbose=False)
    with pytest.raises(Exception) as err:
        client.predict("all", api_name="/trainer_report")
    assert "Only a trainer account" in str(err.value)
