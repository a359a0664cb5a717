"""Files -> chunks of course text with the metadata citations need.

`discover` finds the indexable files under a path (and says why it passes over the rest).
`load_chunks` reads one file with the loader for its type into text and headings: HTML through
markdownify over the page's main element, without its navigation (DOCX goes there too, through
mammoth's HTML), PDF through pypdf with its outline's headings and without running headers,
Markdown and plain text as written. Whole paragraphs are then packed into chunks that never
cross a heading or a PDF page. Every chunk carries where it came from: the path relative to the
folder it was indexed from, the character offset, the page for PDFs, the nearest heading, the
section path ("Git User Manual › Branching › Creating branches") and the HTML anchor to link to."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import math
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from langchain_core.documents import Document

from .config import Settings

SUPPORTED = (".txt", ".md", ".markdown", ".pdf", ".html", ".htm", ".docx")
# The default of SCRUMBOT_MAX_FILE_MB. Checked before a file is read, so a huge file costs
# nothing: 20 MB of text is ~35,000 chunks, half an hour of embedding on a laptop CPU; a bigger
# "document" is more likely a log or a dump than course material.
MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute
    root: Path  # the folder it was indexed from
    rel: str  # posix path relative to root: what users see as the source
    sha256: str


class SkipFile(Exception):
    """This file cannot be indexed; the message says why, for the index summary."""


def resolve_root(path: Path) -> Path:
    """The folder sources are made relative to: the folder itself, or a file's parent."""
    path = path.expanduser().resolve()
    return path if path.is_dir() else path.parent


_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def upload_name(name: str) -> tuple[str, str]:
    """The name an uploaded file is stored under, and a note when it differs from what the
    browser sent; raises SkipFile with the reason when no safe name can be made.

    Only the base name is kept: a client may send any path ("../../etc/passwd", "C:\\x.md"),
    and none of it decides where the file goes. Characters beyond letters, digits, '.', '-',
    '_' and spaces become '_'; a leading dot (a hidden file, which `discover` passes over) is
    dropped."""
    if not isinstance(name, str) or "\x00" in name:
        raise SkipFile("the file name contains a NUL byte; rename the file and upload it again")
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    safe = re.sub(r"[^\w.\- ]", "_", base, flags=re.ASCII).strip(" .")
    safe = re.sub(r"\.{2,}", ".", safe)
    if not safe or not Path(safe).stem.strip("_"):
        raise SkipFile(f"{name!r} is not a usable file name; rename the file and upload it again")
    if Path(safe).stem.lower() in _WINDOWS_DEVICES:
        raise SkipFile(f"{safe!r} is a reserved device name; rename the file and upload it again")
    if len(safe) > 120:
        stem, suffix = Path(safe).stem, Path(safe).suffix
        safe = stem[:120 - len(suffix)] + suffix
    if Path(safe).suffix.lower() not in SUPPORTED:
        raise SkipFile(f"unsupported type {Path(safe).suffix or '(none)'} (scrumbot reads {' '.join(SUPPORTED)})")
    note = "" if safe == name else f"saved as {safe}: folders in the name are dropped, unusual characters replaced"
    return safe, note


def discover(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Indexable files under `path` (a folder or one file) and (name, reason) for the rest."""
    path = path.expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    root = resolve_root(path)
    candidates: list[Path] = []
    skipped: list[tuple[str, str]] = []
    if path.is_dir():
        # followlinks=False: a symlink loop cannot make this walk forever.
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=None):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink():  # os.walk lists it but does not go in
                    skipped.append(((Path(dirpath) / d).relative_to(root).as_posix(),
                                    "symlinked folder, not followed"))
            for name in sorted(filenames):
                if not name.startswith("."):
                    candidates.append(Path(dirpath) / name)
    else:
        candidates.append(path.resolve())
    files: list[SourceFile] = []
    for file in candidates:
        rel = file.relative_to(root).as_posix()
        try:
            if file.suffix.lower() not in SUPPORTED:
                raise SkipFile(f"unsupported type {file.suffix or '(none)'}")
            if file.is_symlink() and not _inside(file.resolve(), root):
                raise SkipFile("symlink pointing outside the indexed folder")
            info = file.stat()  # a file gone since the walk listed it fails here: "cannot read"
            if not stat.S_ISREG(info.st_mode):
                raise SkipFile("not a regular file")
            size = info.st_size
            if size == 0:
                raise SkipFile("empty file")
            if size > max_bytes:
                raise SkipFile(f"{size / (1024 * 1024):.0f} MB, larger than the {max_bytes / (1024 * 1024):g} MB "
                               "limit (SCRUMBOT_MAX_FILE_MB raises it)")
            files.append(SourceFile(file, root, rel, _sha256(file)))
        except SkipFile as why:
            skipped.append((rel, str(why)))
        except OSError as err:
            skipped.append((rel, f"cannot read: {err.strerror or err}"))
    return files, skipped


# What load_chunks makes of a file. Raised whenever a change here changes the chunks of a file
# whose bytes did not change: the store re-chunks files indexed by an older version.
INGEST_VERSION = 2

SECTION_SEP = " › "


@dataclass(frozen=True)
class Heading:
    start: int  # offset of the heading's first character in the extracted text
    level: int  # 0 a document title, 1 a chapter, 2 a section below it, ...
    title: str
    anchor: str = ""  # the HTML id a link can point at ("" if the format has none)


@dataclass
class Extracted:
    """A file as the chunker sees it: its text (markdown-like for HTML, DOCX and Markdown), the
    headings in it, and for a PDF where each page starts."""

    text: str
    headings: list[Heading]
    pages: list[tuple[int, int]] = field(default_factory=list)  # (offset, page number)


def load_chunks(sf: SourceFile, settings: Settings) -> list[Document]:
    """Read `sf` and split it into chunks with metadata; raises SkipFile with the reason."""
    try:
        doc = _load(sf.path)
    except SkipFile:
        raise
    except OSError as err:
        raise SkipFile(f"cannot read: {err.strerror or err}") from None
    except Exception as err:  # a parser's own error on a malformed file
        raise SkipFile(f"cannot parse {sf.path.suffix} file: {type(err).__name__}: {err}") from None
    chunks: list[Document] = []
    section_at, page_at = section_paths(doc.headings), _pages(doc.pages)
    for start, end, label in chunk_spans(doc, settings.chunk_size, settings.chunk_overlap):
        path = section_at(label)
        meta = {
            "source": sf.rel,
            "source_id": f"{sf.root.as_posix()}::{sf.rel}",
            "root": sf.root.as_posix(),
            "file_sha256": sf.sha256,
            "ingest_version": INGEST_VERSION,
            "chunk": len(chunks),
            "start": start,
            "heading": path[-1].title if path else "",
            "section": SECTION_SEP.join(h.title for h in path),
            # the nearest heading with an id: a section without one links to its parent's
            "anchor": next((h.anchor for h in reversed(path) if h.anchor), ""),
        }
        page = page_at(start)
        if page is not None:
            meta["page"] = page
        chunks.append(Document(page_content=doc.text[start:end], metadata=meta))
    if not chunks:
        raise SkipFile("no text found (a scanned PDF or an empty document?)")
    return chunks


# -- chunking ----------------------------------------------------------------------------------

# A list item line ("- Independent: ...", "2. Focus:"), and the length under which a list's items
# make one enumeration, read whole (here, and by retrieve.units)
LIST_ITEM = r"[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t]+"
SHORT_ITEM = 80  # characters

# "A story should be:", a blank line, then "- Independent: ..." lines: one paragraph, so that no
# chunk boundary falls between a list of short items and the sentence that says what it lists
_INTRO_THEN_LIST = re.compile(rf":[ \t]*\n(?:[ \t]*\n)+((?:{LIST_ITEM}[^\n]*(?:\n|\Z))+)")

_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$", re.M | re.S)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
_RULE = re.compile(r"(?:[=\-~^+*#]{3,}[ \t]*)?")  # what may underline a heading line
# Inside a paragraph longer than a chunk: lines, then sentences (a full stop followed by white
# space, so "core.autocrlf" and "group.sub.name" are never cut), then words.
_SEPARATORS = [r"\n", r"(?<=[.!?])\s+", r" ", r""]


def _keep_lists_with_intro(text: str) -> str:
    def join(m: re.Match) -> str:
        items = m.group(1).strip("\n").split("\n")
        return ":\n" + m.group(1) if all(len(i.strip()) <= SHORT_ITEM for i in items) else m.group(0)

    return _INTRO_THEN_LIST.sub(join, text)


def chunk_spans(doc: Extracted, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, end, label) of each chunk in doc.text, `label` being where its text below any
    heading lines begins (the place its section is read at). Whole paragraphs are packed into
    chunks of up to `size` characters; a chunk never runs from one section into the next (or
    one PDF page into the next), so its heading is the heading of all of its text; a code block
    shorter than a chunk is never cut. Only a paragraph longer than a chunk is split inside."""
    heads = {h.start for h in doc.headings}
    pages = {offset for offset, _ in doc.pages}
    spans: list[tuple[int, int, int]] = []
    cur: tuple[int, int, int | None] | None = None  # start, end, label (None: heading lines only)
    for a, b in _blocks(doc.text, sorted(heads | pages)):
        if cur and (a in pages or (cur[2] is not None and (a in heads or b - cur[0] > size))):
            spans.append((cur[0], cur[1], cur[0] if cur[2] is None else cur[2]))
            cur = None
        start = cur[0] if cur else a
        if b - start > size:
            spans += [(s, e, a if s <= a < e else s) for s, e in _split_long(doc.text, start, b, size, overlap)]
            cur = None
        elif a in heads and _RULE.fullmatch(doc.text[a:b].partition("\n")[2]):  # a heading: it goes with what follows
            cur = (start, b, None)
        else:
            cur = (start, b, a if cur is None or cur[2] is None else cur[2])
    if cur:
        spans.append((cur[0], cur[1], cur[0] if cur[2] is None else cur[2]))
    return spans


def _blocks(text: str, cuts: list[int]) -> list[tuple[int, int]]:
    """Paragraph spans without their surrounding white space. A fenced code block is one block
    whatever blank lines it holds; a block is also cut where a heading or a page starts."""
    raw: list[tuple[int, int]] = []

    def paragraphs(a: int, b: int) -> None:
        for m in _BLANK_LINES.finditer(text, a, b):
            raw.append((a, m.start()))
            a = m.end()
        raw.append((a, b))

    pos = 0
    for m in _FENCE.finditer(text):
        paragraphs(pos, m.start())
        raw.append((m.start(), m.end()))
        pos = m.end()
    paragraphs(pos, len(text))
    out: list[tuple[int, int]] = []
    for a, b in raw:
        for c in cuts[bisect.bisect_right(cuts, a):bisect.bisect_left(cuts, b)] + [b]:
            piece = text[a:c]
            lead, trail = len(piece) - len(piece.lstrip()), len(piece) - len(piece.rstrip())
            if c - trail > a + lead:
                out.append((a + lead, c - trail))
            a = c
    return out


def _split_long(text: str, a: int, b: int, size: int, overlap: int) -> list[tuple[int, int]]:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap, add_start_index=True,
                                              separators=_SEPARATORS, is_separator_regex=True,
                                              keep_separator="end")
    return [(a + p.metadata["start_index"], a + p.metadata["start_index"] + len(p.page_content))
            for p in splitter.create_documents([text[a:b]]) if p.page_content.strip()]


def section_paths(headings: list[Heading]) -> Callable[[int], tuple[Heading, ...]]:
    """offset -> the headings enclosing it, outermost first (computed once per heading)."""
    starts, paths, path = [], [], []
    for h in headings:
        while path and path[-1].level >= h.level:
            path.pop()
        path.append(h)
        starts.append(h.start)
        paths.append(tuple(path))
    return lambda offset: paths[i - 1] if (i := bisect.bisect_right(starts, offset)) else ()


def _pages(pages: list[tuple[int, int]]) -> Callable[[int], int | None]:
    """offset -> the number of the PDF page it is on (None: not a PDF)."""
    starts = [start for start, _ in pages]
    return lambda offset: pages[i - 1][1] if (i := bisect.bisect_right(starts, offset)) else None


# -- loaders ---------------------------------------------------------------------------------


def _load(path: Path) -> Extracted:
    """The text and headings of one file, by its type."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf(path)
    if suffix == ".docx":
        return _docx(path)
    text = _decode(path.read_bytes())
    if suffix in (".html", ".htm"):
        return _html_document(html_to_markdown(text))
    if suffix in (".md", ".markdown"):
        return _markdown_headings(_keep_lists_with_intro(unwrap(text)), slugs=True)
    text = _keep_lists_with_intro(unwrap(text))
    return Extracted(text, _text_headings(text))


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise SkipFile("binary content in a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Not UTF-8: a legacy single-byte encoding is far likelier than garbage in course text.
    text = data.decode("cp1252", errors="replace")
    if text.count("\ufffd") > len(text) // 100:
        raise SkipFile("not UTF-8 and not readable as Windows-1252 text")
    return text


# A line that stands on its own: a list item, a shell prompt, a heading or its underline, a
# table row, a quote, a fence, an indented (code) line; and the lines nothing is joined onto
_OWN_LINE = re.compile(rf"{LIST_ITEM}|[$#>|]|```|~~~|\s{{4}}|\t|([=\-~^+*])\1{{2,}}\s*$")
_NO_RUN_ON = re.compile(r"[#|]|```|~~~|\s{4}|\t")


def _line_width(texts: list[str]) -> int:
    """The width lines are wrapped at (the 90th percentile of their lengths); 0 if too few."""
    lengths = sorted(len(line.rstrip()) for text in texts for line in text.split("\n") if line.strip())
    return lengths[int(len(lengths) * 0.9)] if len(lengths) >= 5 else 0


def unwrap(text: str, titles: list[str] | None = None, width: int | None = None) -> str:
    """Text hard-wrapped at a fixed width (a PDF's lines, a text file wrapped at 72 columns)
    with each paragraph's line breaks turned into spaces, so that a sentence is one line: the
    sentence selection reads a line break as the end of a sentence. Only a line that fills most
    of the width is joined to the next (a paragraph's last line, a heading, a table row rarely
    do), never to a line that stands on its own or a heading in `titles`; text whose lines are
    long (a paragraph per line already) is left alone. `width` is the document's when `text` is
    one page of it. Same length: offsets into the text still hold."""
    lines = text.split("\n")
    width = width or _line_width([text])
    if not 40 <= width <= 130:
        return text
    starts = tuple(" ".join(t.split()[:3]) for t in titles or [])
    seps, fence = [], False
    for line, after in zip(lines, lines[1:]):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        body = line.rstrip()
        joins = (not fence and body and after.strip() and not _NO_RUN_ON.match(line)
                 and not _OWN_LINE.match(after) and not (starts and " ".join(after.split()).startswith(starts))
                 and len(body) >= 0.7 * width)
        seps.append(" " if joins else "\n")
    return "".join(line + sep for line, sep in zip(lines, seps + [""]))


# -- HTML (and DOCX, through mammoth's HTML) ---------------------------------------------------

# Page furniture: never course text, wherever it sits.
_JUNK_TAGS = ["script", "style", "noscript", "template", "head", "nav", "aside", "footer", "form", "button",
              "iframe", "svg", "canvas", "select", "input", "textarea", "dialog"]
_JUNK_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "toolbar"}
# a class or id that names navigation: "navheader", "toc", "sphinxsidebar", "wy-breadcrumbs", ...
_JUNK_NAME = re.compile(r"(?:^|[-_])(?:nav|navbar|navheader|navfooter|navigation|toc|toctitle|sidebar|"
                        r"sphinxsidebar\w*|breadcrumbs?|footer|related|relbar\d?|headerlink|sourcelink|"
                        r"pagination|pager|skip-?link|searchbox)$", re.I)
# words in a sentence are never page furniture, whatever their class ("<span class=menu>File</span>")
_INLINE = {"span", "code", "tt", "kbd", "samp", "var", "em", "strong", "b", "i", "abbr", "sub", "sup", "mark"}
_JUNK_LINK = re.compile(r"(?:show|view)(?: page)? source|edit (?:on \w+|this page)", re.I)
_CELL, _END_CELL, _HEAD_ROW, _ROW, _END_ROW = "\ue004", "\ue005", "\ue001", "\ue002", "\ue003"


def html_to_markdown(html: str) -> str:
    """The main text of a page as markdown: headings as '#' lines carrying their anchor as
    '{#id}' (taken off again by _markdown_headings), inline code in backticks inside its
    sentence, code blocks fenced, a table as one line per row naming each value's column;
    navigation, tables of contents, sidebars, headers and footers left out."""
    from bs4 import BeautifulSoup

    import warnings

    from bs4 import XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)  # XHTML pages parse fine as HTML
        try:
            soup = BeautifulSoup(html, "lxml")
        except Exception:  # bs4.FeatureNotFound: without lxml the slower parser does the same job
            soup = BeautifulSoup(html, "html.parser")
    main = soup.find("main") or soup.find(attrs={"role": "main"})
    if main is None:
        articles = soup.find_all("article")
        main = articles[0] if len(articles) == 1 else None
    main = main or soup.body or soup
    for tag in main.find_all(_is_junk):
        if not tag.decomposed:
            tag.decompose()
    for table in main.find_all("table"):
        _unbox(table)
    for level in range(1, 7):
        for h in main.find_all(f"h{level}"):
            h["data-anchor"] = _anchor_of(h)
    text = _Markdown().convert_soup(main)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _is_junk(tag) -> bool:
    if tag.decomposed or tag.attrs is None:
        return False
    if tag.name in _JUNK_TAGS:
        return True
    if tag.name == "header":  # a site's banner, not an article's header holding its title
        return tag.find(re.compile(r"^h[1-6]$")) is None
    if tag.get("role") in _JUNK_ROLES or tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
        return True
    if re.search(r"display:\s*none", tag.get("style", "")):
        return True
    names = list(tag.get("class") or []) + [tag.get("id") or ""]
    if tag.name not in _INLINE and any(_JUNK_NAME.search(n) for n in names if n):
        return True
    return tag.name == "a" and bool(_JUNK_LINK.fullmatch(tag.get_text(" ", strip=True)))


def _unbox(table) -> None:
    """A table of one column is a box ("Note", "Tip") or layout, not data: its cells become
    plain blocks, so their paragraphs and lists stay paragraphs and lists."""
    rows = [r for r in table.find_all("tr") if r.find_parent("table") is table]
    cells = [c for r in rows for c in r.find_all(["td", "th"], recursive=False)]
    if not rows or any(len([c for c in r.find_all(["td", "th"], recursive=False) if c.get_text(strip=True)]) > 1
                       for r in rows):
        return
    for tag in [table, *rows, *cells, *[t for t in table.find_all(["tbody", "thead", "tfoot", "caption"])
                                        if t.find_parent("table") is table]]:
        tag.name = "div"


def _anchor_of(h) -> str:
    """The id a link to this heading uses: its own, an <a id/name> inside it, or the id of the
    section it opens (the forms DocBook, AsciiDoc, Sphinx and pandoc write)."""
    if h.get("id"):
        return h["id"]
    for a in h.find_all("a"):
        if a.get("id") or a.get("name"):
            return a.get("id") or a.get("name")
    parent = h.parent
    for _ in range(4):
        if parent is None or parent.name in ("body", "html", "[document]"):
            break
        if parent.find(re.compile(r"^h[1-6]$")) is not h:
            break
        if parent.get("id"):
            return parent["id"]
        parent = parent.parent
    return ""


def _markdown_converter():
    from markdownify import MarkdownConverter

    class Markdown(MarkdownConverter):
        class Options(MarkdownConverter.DefaultOptions):
            heading_style = "atx"
            bullets = "-"
            # no backslashes: "user_name" and "*.txt" reach the chunk as written
            escape_underscores = False
            escape_asterisks = False
            escape_misc = False
            # a paragraph's line breaks in the HTML source are spaces: one sentence, one line
            wrap = True
            wrap_width = None

        def convert_hN(self, n, el, text, parent_tags):
            title = " ".join(text.split())
            if not title or "_inline" in parent_tags:
                return f" {title} "
            anchor = el.get("data-anchor", "")
            return f"\n\n{'#' * min(n, 6)} {title}{f' {{#{anchor}}}' if anchor else ''}\n\n"

        def convert_a(self, el, text, parent_tags):
            return text  # the words, not the URL: a link target is no course text

        def convert_img(self, el, text, parent_tags):
            return ""

        def convert_hr(self, el, text, parent_tags):
            return "\n\n"

        def convert_em(self, el, text, parent_tags):
            return text  # emphasis marks are noise to the embedder and the model

        convert_i = convert_b = convert_strong = convert_em
        convert_tt = MarkdownConverter.convert_code

        def convert_dt(self, el, text, parent_tags):
            return f"\n\n{' '.join(text.split())}\n"

        def convert_dd(self, el, text, parent_tags):
            return f"{text.strip()}\n\n"

        def convert_td(self, el, text, parent_tags):
            return f"{_CELL}{text.strip()}{_END_CELL}"

        convert_th = convert_td

        def convert_tr(self, el, text, parent_tags):
            cells = el.find_all(["td", "th"], recursive=False)
            head = bool(cells) and (all(c.name == "th" for c in cells) or el.parent.name == "thead")
            return f"{_HEAD_ROW if head else _ROW}{text}{_END_ROW}"

        def convert_table(self, el, text, parent_tags):
            return f"\n\n{_table_rows(text)}\n\n"

    return Markdown


def _table_rows(text: str) -> str:
    """One line per row, each value named by its column ("Package: git; Size: 9"), so a row
    read alone (a chunk, a sentence picked from it) still says what its values are."""
    rows = [(kind, [c.strip() for c in re.findall(f"{_CELL}(.*?){_END_CELL}", row, re.S)])
            for kind, row in re.findall(f"([{_HEAD_ROW}{_ROW}])(.*?){_END_ROW}", text, re.S)]
    caption = " ".join(re.sub(f"[{_HEAD_ROW}{_ROW}].*?{_END_ROW}", " ", text, flags=re.S).split())
    lines = [caption] if caption else []
    header: list[str] | None = None
    for kind, cells in rows:
        cells = [" ".join(c.split()) for c in cells]
        if kind == _HEAD_ROW and header is None:
            header = cells
            continue
        if header and len(header) == len(cells):
            line = "; ".join(f"{h}: {c}" if h else c for h, c in zip(header, cells) if c)
        else:
            line = " | ".join(c for c in cells if c)
        if line:
            lines.append(line)
    if header and len(lines) == (1 if caption else 0):  # a header and nothing else
        lines.append(" | ".join(c for c in header if c))
    return "\n".join(lines)


class _Markdown:
    """The markdownify converter, built on first use (markdownify is imported only then)."""

    _cls = None

    def __new__(cls):
        if cls._cls is None:
            cls._cls = _markdown_converter()
        return cls._cls()


def _html_document(markdown: str) -> Extracted:
    titles = {h.title for h in _markdown_headings(markdown, slugs=False).headings}
    [markdown] = _drop_contents([markdown], titles)
    markdown = re.sub(r"\n{3,}", "\n\n", markdown)
    return _markdown_headings(_keep_lists_with_intro(markdown), slugs=False)


def _docx(path: Path) -> Extracted:
    """Word documents through mammoth's HTML: heading styles become headings, lists and tables
    stay lists and tables, and the HTML path does the rest."""
    import mammoth

    style_map = "\n".join([f"p[style-name='{s}'] => pre:separator('\\n')" for s in _DOCX_CODE_BLOCKS]
                          + [f"r[style-name='{s}'] => code" for s in _DOCX_CODE_SPANS])
    with open(path, "rb") as fh:
        html = mammoth.convert_to_html(fh, style_map=style_map).value
    doc = _html_document(html_to_markdown(html))
    # Word's bookmark names ("_Toc123", pandoc's hashes) are no place a link can open the file at
    doc.headings = [Heading(h.start, h.level, h.title) for h in doc.headings]
    return doc


# the paragraph and character styles Word, LibreOffice and pandoc give code
_DOCX_CODE_BLOCKS = ("Source Code", "Code", "HTML Preformatted", "Preformatted Text")
_DOCX_CODE_SPANS = ("Verbatim Char", "HTML Code", "Code Char", "Source Text")


# -- PDF ---------------------------------------------------------------------------------------

_LIGATURES = str.maketrans({"ﬁ": "fi", "ﬂ": "fl", "ﬀ": "ff", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"})


def _pdf(path: Path) -> Extracted:
    """pypdf's text, page by page, without the lines repeated on most pages (a printed page's
    running header and footer: date, file name, "3/11"); headings from the outline, or else
    from the lines set in a larger font than the body text."""
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    pages, runs = [], []
    for page in reader.pages:
        found: list[tuple[float, str, int]] = []  # (font size, text, characters of the page before it)

        def visit(text, cm, tm, font, size, found=found):
            if text.strip():
                at = found[-1][2] + len(found[-1][1]) if found else 0
                found.append((round(size * math.hypot(tm[1], tm[3]) * (math.hypot(cm[1], cm[3]) or 1), 1), text, at))

        pages.append((page.extract_text(visitor_text=visit) or "").translate(_LIGATURES))
        runs.append(found)
    marks = _pdf_outline(reader) or _pdf_large_lines(runs)
    pages = _drop_contents(_drop_running_lines(pages), {title for page in marks.values() for _, title, _ in page})
    width = _line_width(pages)
    pages = [unwrap(page, [title for _, title, _ in marks.get(number, [])], width)
             for number, page in enumerate(pages, start=1)]
    text, offsets, headings = "", [], []
    for number, page in enumerate(pages, start=1):
        base = len(text)
        offsets.append((base, number))
        after = 0
        for level, title, near in marks.get(number, []):
            at = _line_starting(page, title, after, near)
            if at is None:
                at = after
            headings.append(Heading(base + at, level, title))
            after = at
        text += page.strip("\n") + "\n\n"
    headings.sort(key=lambda h: h.start)
    return Extracted(text, headings, offsets)


_CONTENTS = re.compile(r"(?:table of )?contents", re.I)
_MARKS = re.compile(r"^#{1,6}\s+|\s*\{#[^}\s]*\}$")


def _drop_contents(texts: list[str], titles: set[str]) -> list[str]:
    """`texts` (a document's pages, or the whole of it) without its table of contents: a run
    of three or more lines that are each a heading's title said again further on, and the
    "Contents" line above it. Headings standing together without text between them are
    never their titles' last mention, so they stay."""
    if not titles:
        return texts
    pages = [text.split("\n") for text in texts]
    said = [[_MARKS.sub("", " ".join(line.split())) for line in lines] for lines in pages]
    left = Counter(title for page in said for title in page if title in titles)
    out = []
    for lines, page in zip(pages, said):
        entry = []
        for title in page:
            if title in titles:
                left[title] -= 1
            entry.append(title in titles and left[title] > 0)
        keep = [True] * len(lines)
        i = 0
        while i < len(lines):
            j, found = i, []
            while j < len(lines) and (entry[j] or (not page[j] and found)):
                found += [j] if entry[j] else []
                j += 1
            if len(found) >= 3:
                for k in range(i, found[-1] + 1):
                    keep[k] = False
                above = max((k for k in range(i) if page[k]), default=None)
                if above is not None and _CONTENTS.fullmatch(page[above]):
                    keep[above] = False
            i = max(j, i + 1)
        out.append("\n".join(line for line, kept in zip(lines, keep) if kept))
    return out


def _pdf_large_lines(runs: list[list[tuple[float, str, int]]]) -> dict[int, list[tuple[int, str, int]]]:
    """page number -> [(level, title, about where on the page)]: short runs of text set at
    least 15 % larger than the body text (the size most characters have); the largest is level 1."""
    weight: Counter[float] = Counter()
    for page in runs:
        for size, text, _ in page:
            weight[size] += len(text.strip())
    if not weight:
        return {}
    body = weight.most_common(1)[0][0]
    found: dict[int, list[tuple[float, str, int]]] = {}
    for number, page in enumerate(runs, start=1):
        title: list[str] = []
        title_size, title_at = 0.0, 0
        for size, text, at in [*page, (0.0, "", 0)]:  # the sentinel closes the last title
            if size == title_size and size:
                title.append(text)
                continue
            words = " ".join(" ".join(title).split())
            if words and len(words) <= 100 and any(c.isalpha() for c in words):
                found.setdefault(number, []).append((title_size, words, title_at))
            title, title_size, title_at = ([text], size, at) if size >= body * 1.15 else ([], 0.0, 0)
    sizes = sorted({size for page in found.values() for size, _, _ in page}, reverse=True)[:4]
    return {number: [(sizes.index(size) + 1, words, at) for size, words, at in page if size in sizes]
            for number, page in found.items()}


def _drop_running_lines(pages: list[str]) -> list[str]:
    if len(pages) < 3:
        return pages

    def key(line: str) -> str:
        return re.sub(r"\d+", "#", line.strip())

    seen: dict[str, int] = {}
    for page in pages:
        for k in {key(line) for line in page.splitlines() if line.strip()}:
            seen[k] = seen.get(k, 0) + 1
    running = {k for k, n in seen.items() if n > len(pages) // 2}
    return ["\n".join(line for line in page.splitlines() if key(line) not in running) for page in pages]


def _pdf_outline(reader) -> dict[int, list[tuple[int, str, int | None]]]:
    """page number -> [(level, title, None)] from the PDF's bookmarks, in order."""
    marks: dict[int, list[tuple[int, str, int | None]]] = {}

    def walk(items, level: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            with contextlib.suppress(Exception):  # a bookmark pointing nowhere is left out
                title = " ".join(str(item.title).split())
                if title:
                    marks.setdefault(reader.get_destination_page_number(item) + 1, []).append((level, title, None))

    with contextlib.suppress(Exception):
        walk(reader.outline, 1)
    return marks


def _line_starting(page: str, title: str, after: int, near: int | None) -> int | None:
    """Where the line holding `title` starts, at or after `after`: the first such line, or
    the one nearest `near` (a table of contents repeats the titles above their sections)."""
    words = title.split()
    if not words:
        return None
    pattern = re.compile(r"(?m)^[ \t]*(" + r"\s+".join(map(re.escape, words)) + ")")
    starts = [m.start(1) for m in pattern.finditer(page, after)]
    if not starts:
        return None
    return starts[0] if near is None else min(starts, key=lambda at: abs(at - near))


# -- headings ----------------------------------------------------------------------------------

_ATX = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_ANCHOR_MARK = re.compile(r"[ \t]*\{#([^}\s]*)\}$")
_OPEN_FENCE = re.compile(r"[ \t]*(```|~~~)")


def _markdown_headings(text: str, slugs: bool) -> Extracted:
    """'#' lines outside code blocks are headings; a '{#id}' after one is its anchor and is
    taken out of the text. Without one, `slugs` names it as GitHub and pandoc do."""
    out, headings, pos, fence = [], [], 0, None
    for line in text.splitlines(keepends=True):
        opened = _OPEN_FENCE.match(line)
        if fence:
            if opened and opened.group(1) == fence:
                fence = None
        elif opened:
            fence = opened.group(1)
        elif m := _ATX.match(line.rstrip("\n")):
            title, anchor = m.group(2), ""
            if mark := _ANCHOR_MARK.search(title):
                title, anchor = title[:mark.start()].rstrip(), mark.group(1)
            elif slugs:
                anchor = _slug(title)
            line = f"{m.group(1)} {title}" + ("\n" if line.endswith("\n") else "")
            headings.append(Heading(pos, len(m.group(1)), title, anchor))
        out.append(line)
        pos += len(line)
    # a page's first heading, opening it, above others of its level ("# Git User Manual",
    # then "# Chapter 1"), is the document's title: the root of every section path
    top = min((h.level for h in headings), default=0)
    if headings and headings[0].start == 0 and headings[0].level == top and \
            any(h.level == top for h in headings[1:]):
        headings[0] = Heading(0, 0, headings[0].title, headings[0].anchor)
    return Extracted("".join(out), headings)


def _slug(title: str) -> str:
    return re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", title.lower()).strip())


# A short capitalised line standing alone between blank lines ("Product Owner 101", "Roles")
_TXT_HEADING = re.compile(r"(?:\A|\n[ \t]*\n)[ \t]*([A-Z][^\n.:;!?•*]{1,60}?)[ \t]*\n[ \t]*\n")
# A numbered line with a short title and nothing after it: "4. Target Audience:", "1.2 Branching"
_NUMBERED = re.compile(r"^[ \t]*((\d{1,2}(?:\.\d{1,2})*)[.)]?[ \t]+[A-Z][^\n:.!?]{0,60}?)[ \t]*:?[ \t]*$", re.M)


def _listed(text: str, first: re.Match, second: re.Match) -> bool:
    """Are two numbered lines items of one list: on consecutive lines, or apart by blank lines
    only and numbered one after the other ("3." then "4.")?"""
    between = text[first.end():second.start()]
    if between.strip():
        return False
    if between.count("\n") <= 1:
        return True
    a, b = first.group(2).split("."), second.group(2).split(".")
    return len(a) == len(b) and a[:-1] == b[:-1] and int(b[-1]) == int(a[-1]) + 1


# A title underlined with a row of one character (Markdown's setext, AsciiDoc, reStructuredText)
_UNDERLINED = re.compile(r"^([^\n]*\w[^\n]*)\n([=\-~^+*#])\2{2,}[ \t]*$", re.M)


def _text_headings(text: str) -> list[Heading]:
    """Plain text: underlined titles (their level by the order the underline characters first
    appear: "====" then "----"), numbered title lines at the depth of their number ("1.2"
    below "1."), and short capitalised lines standing alone; such a line opening the file is
    its title."""
    found: dict[int, Heading] = {}
    rules: list[str] = []
    for m in _UNDERLINED.finditer(text):
        line, rule = m.group(1), m.group(0)[len(m.group(1)) + 1:].rstrip()
        title = line.strip()
        if abs(len(title) - len(rule)) > 3 or len(title.split()) > 12:
            continue  # a rule longer or shorter than the line above: a separator, a code fence
        if m.group(2) not in rules:
            rules.append(m.group(2))
        at = m.start(1) + len(line) - len(line.lstrip())
        found[at] = Heading(at, rules.index(m.group(2)) + 1, title)
    if found:  # a file that underlines its titles marks them all that way
        return [found[k] for k in sorted(found)]
    for m in _TXT_HEADING.finditer(text):
        line = m.group(1).strip()
        if len(line.split()) <= 8 and not re.search(r"\d{4}$", line):  # not a dateline
            level = 0 if not text[:m.start(1)].strip() else 1
            found[m.start(1)] = Heading(m.start(1), level, line)
    numbered = list(_NUMBERED.finditer(text))
    for i, m in enumerate(numbered):
        title = m.group(1).strip()
        if len(title.split()) > 8 or re.search(r"\d{4}$", title):
            continue
        # "1. Plan" right above or below "2. Build": a list of short items, not headings
        if (i and _listed(text, numbered[i - 1], m)) or (i + 1 < len(numbered) and _listed(text, m, numbered[i + 1])):
            continue
        found[m.start(1)] = Heading(m.start(1), m.group(2).count(".") + 1, title)
    return [found[k] for k in sorted(found)]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
