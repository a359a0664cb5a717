"""ingest: every supported format loads and chunks with the metadata the rest relies on, and
discover() passes over what it cannot index with a reason instead of crashing or hanging."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from scrumbot.config import Settings
from scrumbot.ingest import SkipFile, discover, load_chunks

SMALL = Settings(chunk_size=200, chunk_overlap=20)


def chunks_of(folder: Path, name: str, settings: Settings = SMALL):
    files, skipped = discover(folder)
    by_rel = {sf.rel: sf for sf in files}
    assert name in by_rel, f"{name} not discovered; skipped: {skipped}"
    return by_rel[name], load_chunks(by_rel[name], settings)


def paragraph(topic: str, n: int = 6) -> str:
    return " ".join(f"Sentence {i} explains {topic} in plain words for the course." for i in range(n))


def headings_by_topic(chunks, topics: list[str]) -> dict[str, set[str]]:
    """topic -> the `heading` metadata of the chunks whose text is about it. A chunk that starts
    in one section and runs into the next is labelled with the first, so those are left out."""
    found: dict[str, set[str]] = {}
    for c in chunks:
        for topic in topics:
            at = c.page_content.find(topic)
            if at >= 0 and "\n#" not in c.page_content[:at]:
                found.setdefault(topic, set()).add(c.metadata["heading"])
    return found


# -- formats ----------------------------------------------------------------------------------


def test_txt_chunks_carry_source_offset_number_and_hash(tmp_path: Path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    text = "\n\n".join(paragraph(t) for t in ("velocity", "burndown charts", "story points"))
    path = folder / "sub" / "metrics.txt"
    path.write_text(text, encoding="utf-8")

    sf, chunks = chunks_of(folder, "sub/metrics.txt")

    assert len(chunks) > 3, "a 1.2 kB file with chunk_size=200 must give several chunks"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert [c.metadata["chunk"] for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        m = c.metadata
        assert m["source"] == "sub/metrics.txt"  # relative to the folder indexed, posix
        assert m["file_sha256"] == sha
        assert len(c.page_content) <= 200
        # the offset points at the chunk's text in the original file
        assert text[m["start"]:].lstrip().startswith(c.page_content), m
    starts = [c.metadata["start"] for c in chunks]
    assert starts == sorted(starts) and starts[-1] > 0
    # all of the text made it into some chunk
    assert "Sentence 5 explains story points" in chunks[-1].page_content


def test_single_file_source_is_its_name(tmp_path: Path):
    path = tmp_path / "one.txt"
    path.write_text(paragraph("the sprint goal"))
    files, skipped = discover(path)
    assert [sf.rel for sf in files] == ["one.txt"] and not skipped
    assert load_chunks(files[0], SMALL)[0].metadata["source"] == "one.txt"


def test_markdown_headings_become_metadata(tmp_path: Path):
    (tmp_path / "guide.md").write_text(
        f"# Roles\n\n{paragraph('the product owner role', 3)}\n\n"
        f"## Events\n\n{paragraph('the sprint review event', 3)}\n\n"
        f"## Artifacts\n\n{paragraph('the increment artifact', 3)}\n"
    )
    _, chunks = chunks_of(tmp_path, "guide.md")
    assert headings_by_topic(chunks, ["product owner role", "sprint review event", "increment artifact"]) == {
        "product owner role": {"Roles"}, "sprint review event": {"Events"},
        "increment artifact": {"Artifacts"}}


def test_a_short_list_stays_in_the_chunk_of_the_sentence_that_introduces_it(tmp_path: Path):
    items = ["- Independent: it can be developed in any order.", "- Negotiable: open to discussion.",
             "- Testable: it is clear how to verify it."]
    (tmp_path / "s.md").write_text("## Stories\n\n" + paragraph("stories", 3) + "\n\nA story should be:\n\n"
                                   + "\n".join(items) + "\n\n" + paragraph("epics", 3) + "\n")
    _, chunks = chunks_of(tmp_path, "s.md", Settings(chunk_size=250, chunk_overlap=0))
    [holder] = [c for c in chunks if items[0] in c.page_content]
    assert "A story should be:\n" + "\n".join(items) in holder.page_content
    # a list of long items is left as written: each item is a fact of its own
    long_items = [f"- Item {i}: " + paragraph("items", 1) + " " + paragraph("more", 1) for i in range(3)]
    (tmp_path / "l.md").write_text("Formats include:\n\n" + "\n".join(long_items) + "\n")
    _, chunks = chunks_of(tmp_path, "l.md", Settings(chunk_size=1000, chunk_overlap=0))
    assert chunks[0].page_content.startswith("Formats include:\n\n- Item 0")


def test_html_keeps_headings_and_drops_scripts(tmp_path: Path):
    (tmp_path / "kanban.html").write_text(
        "<html><head><title>Kanban page</title><style>p {color: red}</style>"
        "<script>var trackingSecret = 'zzqx';</script></head><body>"
        "<h1>Kanban Basics</h1><p>Kanban limits work in progress.</p>"
        "<script>document.write('injected zzqy')</script>"
        f"<h2>Flow Metrics</h2><p>{paragraph('cycle time', 4)}</p></body></html>"
    )
    _, chunks = chunks_of(tmp_path, "kanban.html")
    everything = "\n".join(c.page_content for c in chunks)
    assert "Kanban limits work in progress." in everything
    assert "zzqx" not in everything and "zzqy" not in everything and "color: red" not in everything
    assert "<p>" not in everything and "<h1>" not in everything
    assert headings_by_topic(chunks, ["limits work in progress", "cycle time"]) == {
        "limits work in progress": {"Kanban Basics"}, "cycle time": {"Flow Metrics"}}


def test_pdf_pages_become_metadata(tmp_path: Path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "Sprint planning starts the sprint. The team picks backlog items.")
    pdf.add_page()
    pdf.multi_cell(0, 8, "The retrospective ends the sprint. The team inspects its process.")
    pdf.output(str(tmp_path / "guide.pdf"))

    _, chunks = chunks_of(tmp_path, "guide.pdf")
    pages = {c.metadata["page"]: c.page_content for c in chunks}
    assert set(pages) == {1, 2}
    assert "Sprint planning starts the sprint" in pages[1]
    assert "retrospective ends the sprint" in pages[2]
    assert all(c.metadata["source"] == "guide.pdf" for c in chunks)


def test_docx_loads(tmp_path: Path):
    import docx

    doc = docx.Document()
    doc.add_heading("Daily Scrum", level=1)
    doc.add_paragraph("The daily scrum is a fifteen minute event for the developers.")
    doc.add_paragraph(paragraph("inspection and adaptation", 4))
    doc.save(str(tmp_path / "notes.docx"))

    _, chunks = chunks_of(tmp_path, "notes.docx")
    everything = "\n".join(c.page_content for c in chunks)
    assert "fifteen minute event for the developers" in everything
    assert "inspection and adaptation" in everything
    assert chunks[0].metadata["source"] == "notes.docx"
    assert chunks[0].metadata["heading"] == "Daily Scrum"


# -- what a course says survives ingestion ------------------------------------------------------

# A page as DocBook and Sphinx write them, cut down: navigation above and below, a table of
# contents, a sidebar with a "Show source" link, a footer, and the course text between.
COURSE_PAGE = """<!DOCTYPE html><html><head><title>Chapter 3. Settings</title></head><body>
<div class="navheader"><table summary="Navigation header"><tr><th colspan="3">Chapter 3. Settings</th></tr>
<tr><td><a accesskey="p" href="ch02.html"><img src="prev.png" alt="Prev"/></a></td><td></td>
<td><a accesskey="n" href="ch04.html"><img src="next.png" alt="Next"/></a></td></tr></table><hr/></div>
<div class="chapter"><div class="titlepage"><h1 class="title"><a id="_settings"></a>Chapter 3. Settings</h1></div>
<div class="toc"><p><b>Table of Contents</b></p><dl class="toc"><dt><a href="#_files">3.1. Files zqtoc</a></dt></dl></div>
<div class="section"><h2 class="title"><a id="_files"></a>3.1. Files</h2>
<p>The <code class="literal">settings.toml</code> file must sit in the project root.
Set <code>core.autocrlf</code> and <code>GIT_DIR</code> before you run <kbd>git init</kbd>.</p>
<p>Choose <span class="menu">File</span> then <span class="menuitem">Save</span> to keep them.</p>
<pre class="screen">$ git config core.autocrlf true

$ export GIT_DIR=/srv/repo.git</pre>
<table><caption>Table 3.1. Options</caption>
<thead><tr><th>option</th><th>default</th><th>meaning</th></tr></thead>
<tbody><tr><td><code>user_name</code></td><td>none</td><td>who commits</td></tr>
<tr><td><code>group.sub.name</code></td><td>42</td><td>the metric name</td></tr></tbody></table>
</div>
<section id="branching"><h2>3.2. Branching</h2><p>A branch is a movable pointer to a commit.</p></section>
</div>
<div class="sphinxsidebar" role="navigation"><h3>This Page</h3><ul class="this-page-menu">
<li><a href="_sources/x.txt" rel="nofollow">Show Source zqside</a></li></ul></div>
<div class="navfooter"><hr/><table><tr><td><a href="ch02.html">Prev</a></td><td><a href="index.html">Home</a></td>
<td><a href="ch04.html">Next</a></td></tr><tr><td>Chapter 2. Setup zqfoot</td><td></td><td>Chapter 4. Branches</td></tr>
</table></div>
<div id="footer"><div id="footer-text">Last updated 2025-10-07 zqlast</div></div>
</body></html>"""


def course_page_chunks(tmp_path: Path, settings: Settings = Settings(chunk_size=600, chunk_overlap=0)):
    (tmp_path / "ch03.html").write_text(COURSE_PAGE)
    return chunks_of(tmp_path, "ch03.html", settings)[1]


def test_html_keeps_inline_code_inside_its_sentence(tmp_path: Path):
    everything = "\n".join(c.page_content for c in course_page_chunks(tmp_path))
    assert "The `settings.toml` file must sit in the project root." in everything
    assert "Set `core.autocrlf` and `GIT_DIR` before you run `git init`." in everything
    # a word's class never makes it page furniture, even one that names a menu
    assert "Choose File then Save to keep them." in everything


def test_html_code_block_is_fenced_and_whole(tmp_path: Path):
    chunks = course_page_chunks(tmp_path, Settings(chunk_size=120, chunk_overlap=0))
    block = "```\n$ git config core.autocrlf true\n\n$ export GIT_DIR=/srv/repo.git\n```"
    # the blank line inside the block is no paragraph break: the short block stays in one chunk
    assert [c for c in chunks if block in c.page_content]


def test_html_table_rows_name_their_columns(tmp_path: Path):
    lines = "\n".join(c.page_content for c in course_page_chunks(tmp_path)).splitlines()
    assert "option: `user_name`; default: none; meaning: who commits" in lines
    assert "option: `group.sub.name`; default: 42; meaning: the metric name" in lines
    assert "Table 3.1. Options" in lines


def test_html_navigation_toc_sidebar_and_footer_are_not_course_text(tmp_path: Path):
    everything = "\n".join(c.page_content for c in course_page_chunks(tmp_path))
    for junk in ("zqtoc", "zqside", "zqfoot", "zqlast", "Table of Contents", "Prev", "Next", "Home",
                 "Show Source", "This Page", "prev.png", "ch02.html"):
        assert junk not in everything, junk
    assert everything.startswith("# Chapter 3. Settings")


def test_html_chunks_carry_section_path_and_anchor(tmp_path: Path):
    chunks = course_page_chunks(tmp_path, Settings(chunk_size=200, chunk_overlap=0))
    where = {}
    for c in chunks:
        for topic in ("settings.toml", "group.sub.name", "movable pointer"):
            if topic in c.page_content:
                where[topic] = (c.metadata["heading"], c.metadata["section"], c.metadata["anchor"])
    assert where == {
        "settings.toml": ("3.1. Files", "Chapter 3. Settings › 3.1. Files", "_files"),
        "group.sub.name": ("3.1. Files", "Chapter 3. Settings › 3.1. Files", "_files"),
        # an <h2> without an id opens a <section id=...>: the section's id is its anchor
        "movable pointer": ("3.2. Branching", "Chapter 3. Settings › 3.2. Branching", "branching"),
    }
    # the anchor marks are metadata, not text
    assert not [c for c in chunks if "{#" in c.page_content]


def test_chunks_never_run_from_one_section_into_the_next(tmp_path: Path):
    (tmp_path / "g.md").write_text("# Guide\n\n## Roles\n\nThe owner orders the backlog.\n\n"
                                   "## Events\n\nThe review inspects the increment.\n")
    _, chunks = chunks_of(tmp_path, "g.md", Settings(chunk_size=600, chunk_overlap=0))
    assert [(c.metadata["section"], c.metadata["anchor"]) for c in chunks] == [
        ("Guide › Roles", "roles"), ("Guide › Events", "events")]
    assert chunks[0].page_content == "# Guide\n\n## Roles\n\nThe owner orders the backlog."


def test_metadata_values_are_what_chroma_accepts(tmp_path: Path):
    for c in course_page_chunks(tmp_path):
        assert all(isinstance(v, (str, int, float, bool)) for v in c.metadata.values()), c.metadata
        assert {"heading", "section", "anchor", "start", "ingest_version"} <= set(c.metadata)


IDENTIFIERS = ["group.sub.name", "core.autocrlf", "GIT_DIR", "user_name", "disk.io.queue_time_ms"]


def test_dotted_and_underscored_identifiers_reach_chunks_whole(tmp_path: Path):
    sentences = [f"Sentence {i} says that {ident} is what to set here. " for i, ident in
                 enumerate(IDENTIFIERS * 6)]
    (tmp_path / "ids.txt").write_text("".join(sentences))  # one long paragraph: cut inside
    (tmp_path / "ids.md").write_text("".join(sentences).replace(" is what", "` is what").replace("that ", "that `"))
    # "core", "core.", "sub.name", "queue_time_ms": what a cut inside a name leaves
    pieces = {"".join(parts[i:j]) for ident in IDENTIFIERS for parts in [re.split(r"([._])", ident)]
              for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)} - set(IDENTIFIERS)
    for name in ("ids.txt", "ids.md"):
        _, chunks = chunks_of(tmp_path, name, Settings(chunk_size=150, chunk_overlap=0))
        assert len(chunks) > 5
        for ident in IDENTIFIERS:
            assert [c for c in chunks if ident in c.page_content], (name, ident)
        for c in chunks:  # no chunk holds a piece of a name: "core." or "autocrlf" alone
            for token in re.findall(r"[\w.]+", c.page_content.replace("`", " ")):
                assert token.rstrip(".") in IDENTIFIERS or token not in pieces, (name, token)


def test_markdown_code_block_with_blank_lines_is_one_block(tmp_path: Path):
    code = "```python\ndef a():\n    return 1\n\n\ndef b():\n    return 2\n```"
    (tmp_path / "c.md").write_text(f"## Code\n\n{paragraph('functions', 2)}\n\n{code}\n\n{paragraph('tests', 2)}\n")
    _, chunks = chunks_of(tmp_path, "c.md", Settings(chunk_size=120, chunk_overlap=0))
    assert [c.page_content for c in chunks if "def a" in c.page_content] == [code]
    # a '# comment' inside a code block is no heading
    (tmp_path / "s.md").write_text("## Shell\n\n```\n# not a heading\nls\n```\n")
    _, chunks = chunks_of(tmp_path, "s.md")
    assert {c.metadata["heading"] for c in chunks} == {"Shell"}


def printed_pdf(path: Path, outline: bool) -> None:
    """Three pages as a browser prints a page: a running header on each, a large heading, text;
    with bookmarks (`outline`) or without (headings known only by their font size)."""
    from fpdf import FPDF

    class Printed(FPDF):
        def header(self):
            self.set_font("Helvetica", size=8)
            self.cell(0, 5, f"12/1/26, 3:18 PM   course.html   {self.page_no()}/3")
            self.ln(10)

    pdf = Printed()
    for n, (title, text) in enumerate([("Planning", "Sprint planning starts the sprint."),
                                       ("Review", "The review inspects the increment."),
                                       ("Retrospective", "The retrospective ends the sprint.")], start=1):
        pdf.add_page()
        if outline:
            pdf.start_section(title)
        pdf.set_font("Helvetica", size=18)
        pdf.cell(0, 10, title)
        pdf.ln(12)
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, f"{text} The value of git's core.autocrlf matters on page {n}. " * 2)
    pdf.output(str(path))


@pytest.mark.parametrize("outline", [True, False])
def test_pdf_keeps_pages_and_headings_and_drops_running_headers(tmp_path: Path, outline: bool):
    printed_pdf(tmp_path / "course.pdf", outline)
    _, chunks = chunks_of(tmp_path, "course.pdf")
    got = [(c.metadata["page"], c.metadata["heading"]) for c in chunks]
    assert got == [(1, "Planning"), (2, "Review"), (3, "Retrospective")]
    assert "retrospective ends the sprint" in chunks[2].page_content
    assert all("core.autocrlf" in c.page_content for c in chunks)
    # the lines the page wrapped are one again: a sentence is never cut by a line break
    assert "matters on page 2. The review inspects the increment." in chunks[1].page_content
    assert not [c for c in chunks if "course.html" in c.page_content or "3:18 PM" in c.page_content]


def test_docx_headings_lists_and_tables(tmp_path: Path):
    import docx

    doc = docx.Document()
    doc.add_heading("Scrum Events", level=1)
    doc.add_paragraph("Every event is a chance to inspect and adapt.")
    doc.add_heading("Daily Scrum", level=2)
    doc.add_paragraph("The daily scrum takes fifteen minutes.")
    doc.add_paragraph("Plan the day", style="List Bullet")
    doc.add_paragraph("Raise impediments", style="List Bullet")
    doc.add_heading("Roles", level=2)
    table = doc.add_table(rows=3, cols=2)
    for row, cells in zip(table.rows, [("Role", "Duty"), ("Product Owner", "orders the backlog"),
                                       ("Scrum Master", "removes impediments")]):
        for cell, text in zip(row.cells, cells):
            cell.text = text
    doc.save(str(tmp_path / "events.docx"))

    _, chunks = chunks_of(tmp_path, "events.docx", Settings(chunk_size=600, chunk_overlap=0))
    by_section = {c.metadata["section"]: c.page_content for c in chunks}
    assert set(by_section) == {"Scrum Events", "Scrum Events › Daily Scrum", "Scrum Events › Roles"}
    assert "- Plan the day\n- Raise impediments" in by_section["Scrum Events › Daily Scrum"]
    # a Word table has no header cells: its rows keep their cells in order, apart
    assert "Product Owner | orders the backlog" in by_section["Scrum Events › Roles"]


def test_a_table_of_contents_in_the_text_is_left_out(tmp_path: Path):
    import docx

    doc = docx.Document()
    doc.add_paragraph("Contents")
    for title in ("1. Roles", "2. Events", "3. Artifacts"):  # Word's TOC: plain paragraphs
        doc.add_paragraph(title)
    for title, text in (("1. Roles", "The owner orders the backlog."), ("2. Events", "The sprint is a month or less."),
                        ("3. Artifacts", "The increment is usable.")):
        doc.add_heading(title, level=1)
        doc.add_paragraph(text)
    doc.save(str(tmp_path / "guide.docx"))
    _, chunks = chunks_of(tmp_path, "guide.docx", Settings(chunk_size=600, chunk_overlap=0))
    assert [c.page_content for c in chunks] == [
        "# 1. Roles\n\nThe owner orders the backlog.", "# 2. Events\n\nThe sprint is a month or less.",
        "# 3. Artifacts\n\nThe increment is usable."]
    # headings standing together, each said once, are headings, not a table of contents
    (tmp_path / "p.html").write_text("<h1>Guide</h1><h2>Roles</h2><h3>Owner</h3><p>The owner orders the backlog.</p>")
    [chunk] = chunks_of(tmp_path, "p.html")[1]
    assert chunk.metadata["section"] == "Guide › Roles › Owner"
    assert chunk.page_content.startswith("# Guide\n\n## Roles\n\n### Owner\n\nThe owner")


def test_plain_text_numbered_headings_and_their_depth(tmp_path: Path):
    (tmp_path / "git.txt").write_text(
        "Git Basics\n\n1. Branching\n\nA branch is a pointer.\n\n1.2 Creating branches\n\n"
        "Run git branch NAME to create one.\n\nThe steps are:\n1. Plan\n2. Build\n3. Ship\n\n"
        "2. Merging:\n  - Fast-forward merges move the pointer.\n")
    _, chunks = chunks_of(tmp_path, "git.txt", Settings(chunk_size=600, chunk_overlap=0))
    sections = {c.metadata["section"] for c in chunks}
    assert sections == {"Git Basics › 1. Branching", "Git Basics › 1. Branching › 1.2 Creating branches",
                        "Git Basics › 2. Merging"}
    # "1. Plan / 2. Build / 3. Ship" is a list, not three headings
    [steps] = [c for c in chunks if "1. Plan" in c.page_content]
    assert steps.metadata["heading"] == "1.2 Creating branches"


def test_hard_wrapped_text_and_underlined_titles(tmp_path: Path):
    import textwrap

    body = " ".join(f"Sentence {i} tells how to set core.autocrlf for the repository." for i in range(8))
    text = ("Git Tutorial\n============\n\nBranching\n---------\n\n" + textwrap.fill(body, 72)
            + "\n\n- a list item\n- another item\n\n$ git branch topic\n$ git switch topic\n")
    (tmp_path / "tutorial.txt").write_text(text)
    _, chunks = chunks_of(tmp_path, "tutorial.txt", Settings(chunk_size=2000, chunk_overlap=0))
    [chunk] = chunks
    assert chunk.metadata["section"] == "Git Tutorial › Branching"
    assert body in chunk.page_content  # the paragraph is one line again
    # list items and shell lines keep their own lines; the offsets still point into the file
    assert "- a list item\n- another item\n\n$ git branch topic\n$ git switch topic" in chunk.page_content
    assert len(chunk.page_content) == len(text.strip())


def test_product_owner_course_chunks_carry_their_real_headings():
    corpus = Path(__file__).resolve().parents[1] / "corpus"
    files, _ = discover(corpus / "product-owner-101.txt")
    chunks = load_chunks(files[0], Settings())
    heading_of = {c.page_content.split("\n")[0].strip(): c.metadata["heading"] for c in chunks}
    assert heading_of["4. Target Audience:"] == "4. Target Audience"
    assert heading_of["2. Focus:"] == "2. Focus"
    [audience] = [c for c in chunks if "typically sought by product managers" in c.page_content]
    assert audience.metadata["section"] == "Product Owner 101 › 4. Target Audience"
    titled = [c for c in chunks if c.metadata["heading"] == "Product Owner 101"]
    assert len(titled) <= 2 < len(chunks) - 4  # the title labels only the text above the first section


def test_cp1252_text_is_decoded_not_dropped(tmp_path: Path):
    (tmp_path / "legacy.txt").write_bytes(
        "Le r\xe9sum\xe9 na\xefve \u2013 the caf\xe9 is where the Scrum team meets.".encode("cp1252"))
    files, skipped = discover(tmp_path)
    assert [sf.rel for sf in files] == ["legacy.txt"] and not skipped
    (chunk,) = load_chunks(files[0], SMALL)
    assert chunk.page_content == "Le résumé naïve – the café is where the Scrum team meets."


def test_utf8_bom_is_not_part_of_the_text(tmp_path: Path):
    (tmp_path / "bom.txt").write_bytes("\ufeffBacklog refinement is ongoing work.".encode("utf-8"))
    files, _ = discover(tmp_path)
    assert load_chunks(files[0], SMALL)[0].page_content == "Backlog refinement is ongoing work."


# -- what is passed over, and why --------------------------------------------------------------


def test_discover_skips_with_reasons(tmp_path: Path):
    (tmp_path / "good.txt").write_text("The increment is usable.")
    (tmp_path / "slides.pptx").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "Makefile").write_text("all:\n")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / ".hidden.txt").write_text("never indexed")
    (tmp_path / "folder.txt").mkdir()  # a directory with a supported suffix

    files, skipped = discover(tmp_path)
    reasons = dict(skipped)
    assert [sf.rel for sf in files] == ["good.txt"]
    assert reasons["slides.pptx"] == "unsupported type .pptx"
    assert reasons["Makefile"] == "unsupported type (none)"
    assert reasons["empty.md"] == "empty file"
    assert ".hidden.txt" not in reasons  # dot-files are neither indexed nor reported


def test_binary_content_in_txt_is_refused_with_a_reason(tmp_path: Path):
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    files, _ = discover(tmp_path)
    with pytest.raises(SkipFile, match="binary content"):
        load_chunks(files[0], SMALL)


def test_malformed_pdf_is_refused_with_a_reason(tmp_path: Path):
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf body at all")
    files, _ = discover(tmp_path)
    with pytest.raises(SkipFile, match="pdf"):
        load_chunks(files[0], SMALL)


@pytest.mark.timeout(20)
def test_symlink_loop_does_not_hang(tmp_path: Path):
    folder = tmp_path / "docs"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "one.txt").write_text("Scrum has three accountabilities.")
    os.symlink(folder, folder / "a" / "loop")  # docs/a/loop -> docs
    os.symlink("..", folder / "a" / "up")  # docs/a/up -> docs (relative)
    os.symlink(folder / "a" / "one.txt", folder / "alias.txt")  # inside: allowed

    files, skipped = discover(folder)
    rels = sorted(sf.rel for sf in files)
    assert rels == ["a/one.txt", "alias.txt"]  # each real file once, no a/loop/a/... paths


def test_symlink_to_outside_the_folder_is_skipped(tmp_path: Path):
    secret = tmp_path / "outside.txt"
    secret.write_text("Not part of the course.")
    folder = tmp_path / "docs"
    folder.mkdir()
    os.symlink(secret, folder / "link.txt")
    files, skipped = discover(folder)
    assert files == []
    assert dict(skipped) == {"link.txt": "symlink pointing outside the indexed folder"}


def discover_as_nobody(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """discover() in a forked child that dropped root for `nobody`, where permissions apply.
    (A subprocess would not do: the venv's interpreter lives under /root, closed to nobody.)"""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            files, skipped = discover(folder)
            os.write(write_end, json.dumps([[sf.rel for sf in files], skipped]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    # a child forked from a threaded process could in principle deadlock: never wait forever
    # (poll, not select: by this point of a full run the process may hold more than 1,024 file
    # descriptors, and select() cannot watch one numbered above that)
    waiting = select.poll()
    waiting.register(read_end, select.POLLIN)
    if not waiting.poll(20_000):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("discover() as nobody did not finish within 20 s")
    with os.fdopen(read_end, "rb") as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "discover() failed in the child"
    files, skipped = json.loads(out)
    return files, [tuple(s) for s in skipped]


@pytest.mark.timeout(30)
def test_unreadable_file_is_skipped_with_reason():
    """chmod 000 means nothing to root, so as root discover() runs as `nobody`."""
    folder = Path(tempfile.mkdtemp(prefix="scrumbot-unreadable-"))  # not under root's 0700 tmp
    try:
        folder.chmod(0o755)
        (folder / "ok.txt").write_text("The sprint backlog belongs to the developers.")
        locked = folder / "locked.txt"
        locked.write_text("Nobody may read this.")
        locked.chmod(0o000)
        if os.geteuid() == 0:
            files, skipped = discover_as_nobody(folder)
        else:
            found, skipped = discover(folder)
            files = [sf.rel for sf in found]
        assert files == ["ok.txt"]
        assert skipped == [("locked.txt", "cannot read: Permission denied")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_file_vanishing_between_discover_and_load(tmp_path: Path):
    path = tmp_path / "gone.txt"
    path.write_text("Here now, gone soon.")
    files, _ = discover(tmp_path)
    path.unlink()
    with pytest.raises(SkipFile, match="cannot read: No such file"):
        load_chunks(files[0], SMALL)


def test_discover_of_a_missing_path_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(tmp_path / "nope")
