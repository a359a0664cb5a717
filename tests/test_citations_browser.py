"""Sentence citations on the page, in a real headless Chromium against tests/app_with_fakes.py
(the page `scrumbot serve` builds, with the fake embedder and the echo model): two questions;
a click on a number of the first answer after the second arrived shows the first answer's
passage with the quote marked; a PDF source says its page and opens the file at it; the file
route serves only indexed files."""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import CORPUS, REPO
from test_workspace_browser import browser, last_answer, open_page, start_app, stop_app  # noqa: F401

pytestmark = pytest.mark.slow

PDF_FACT = "The PSPO assessment has 80 questions and lasts sixty minutes."


def exam_guide(path: Path) -> None:
    """A two-page PDF: the fact asked about is on page 2, under a heading."""
    from fpdf import FPDF

    pdf = FPDF()
    for title, body in [("Exam guide", "This guide describes the assessments of the Scrum courses. "
                                       "Read it before you book an exam."),
                        ("The PSPO assessment", PDF_FACT + " A score of 85 percent passes it.")]:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 18)
        pdf.cell(0, 12, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 6, body)
    pdf.output(str(path))


@pytest.fixture(scope="module")
def cited_app():
    tmp = Path(tempfile.mkdtemp(prefix="scrumbot-citations-"))
    corpus = tmp / "corpus"
    corpus.mkdir()
    shutil.copy(CORPUS / "product-owner-101.txt", corpus)
    exam_guide(corpus / "exam-guide.pdf")
    (tmp / "secret.txt").write_text("not indexed")
    proc, url, log = start_app(tmp, SCRUMBOT_CORPUS_DIR=str(corpus))
    yield url, tmp
    stop_app(proc)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, "", b""


def test_an_older_answers_marker_shows_its_passage_with_the_quote(cited_app, browser):  # noqa: F811
    from playwright.sync_api import expect

    url, tmp = cited_app
    page = open_page(browser, url)
    page.locator("#question textarea").fill("Who is Braintrust Group?")
    page.locator("#ask").click()
    expect(last_answer(page)).to_contain_text("[1] product-owner-101.txt", timeout=60_000)
    page.locator("#question textarea").fill("How many questions has the PSPO assessment?")
    page.locator("#ask").click()
    second = last_answer(page)
    expect(second).to_contain_text("[1] exam-guide.pdf", timeout=60_000)
    # the PDF source names its page, in the answer's list and in the sources panel
    expect(second).to_contain_text("exam-guide.pdf › The PSPO assessment, p. 2")
    panel = page.locator("#sources")
    expect(panel).to_contain_text("Sources of answer 2")
    # the sentence with the fact is marked (the echo model may also repeat the PDF's heading line,
    # a sentence of its own with a mark of its own, depending on what the model was given to read)
    expect(panel.locator("mark", has_text="PSPO assessment has 80 questions")).to_have_count(1)
    link = panel.locator("a", has_text="open the file here").first
    href = link.get_attribute("href")
    assert href.startswith("scrumbot/file/default/") and href.endswith("/exam-guide.pdf#page=2"), href

    # back to the first answer: its marker shows its own passage, the quote marked and in view
    first = page.locator("#chat .message.bot, #chat [data-testid='bot']").first
    first.locator('a[href="#cite-0-1"]').first.click()
    expect(panel).to_contain_text("Sources of answer 1", timeout=15_000)
    quote = panel.locator("details[open] mark", has_text="is a worldwide leader in Agile transformations")
    expect(quote).to_have_count(1)
    expect(quote).to_be_in_viewport(timeout=5_000)
    expect(panel).not_to_contain_text("exam-guide.pdf")
    shot = REPO / "docs" / "citations.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}", file=sys.stderr)

    # the original file is served at that link; nothing else is
    status, kind, body = get(url + href.split("#")[0])
    assert status == 200 and kind == "application/pdf" and body.startswith(b"%PDF")
    key = href.split("/")[3]
    for bad in (f"scrumbot/file/default/{key}/secret.txt", f"scrumbot/file/default/{key}/..%2F..%2Fsecret.txt",
                f"scrumbot/file/default/{'0' * 24}/exam-guide.pdf", f"scrumbot/file/nocourse/{key}/exam-guide.pdf",
                "scrumbot/file/default/../../secret.txt"):
        assert get(url + bad)[0] == 404, bad
    page.close()
