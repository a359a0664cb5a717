"""ingest: every supported format loads and chunks with the metadata the rest relies on, and
discover() passes over what it cannot index with a reason instead of crashing or hanging."""

from __future__ import annotations

import hashlib
import json
import os
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
    if not select.select([read_end], [], [], 20)[0]:
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
