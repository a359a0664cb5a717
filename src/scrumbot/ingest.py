"""Files -> LangChain Documents -> chunks with stable metadata.

`discover` finds the indexable files under a path (and says why it passes over the rest),
`load_chunks` reads one file with the loader for its type and splits it with LangChain's
RecursiveCharacterTextSplitter. Every chunk carries where it came from: the path relative to
the folder it was indexed from, the character offset (and page for PDFs) and the heading it
sits under, when the document has headings."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

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


def load_chunks(sf: SourceFile, settings: Settings) -> list[Document]:
    """Read `sf` and split it into chunks with metadata; raises SkipFile with the reason."""
    try:
        pages = _load(sf.path)
    except SkipFile:
        raise
    except OSError as err:
        raise SkipFile(f"cannot read: {err.strerror or err}") from None
    except Exception as err:  # a parser's own error on a malformed file
        raise SkipFile(f"cannot parse {sf.path.suffix} file: {type(err).__name__}: {err}") from None
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        add_start_index=True,
        separators=["\n\n", "\n", ". ", " ", ""],
        keep_separator="end",
    )
    chunks: list[Document] = []
    for page_no, text in pages:
        if not text.strip():
            continue
        text = _keep_lists_with_intro(text)
        headings = _headings(text, markdown=sf.path.suffix.lower() in (".md", ".markdown", ".html", ".htm"))
        for piece in splitter.create_documents([text]):
            start = piece.metadata["start_index"]
            meta = {
                "source": sf.rel,
                "source_id": f"{sf.root.as_posix()}::{sf.rel}",
                "root": sf.root.as_posix(),
                "file_sha256": sf.sha256,
                "chunk": len(chunks),
                "start": start,
                "heading": _heading_at(headings, start),
            }
            if page_no is not None:
                meta["page"] = page_no
            chunks.append(Document(page_content=piece.page_content.strip(), metadata=meta))
    if not chunks:
        raise SkipFile("no text found (a scanned PDF or an empty document?)")
    return chunks


# A list item line ("- Independent: ...", "2. Focus:"), and the length under which a list's items
# make one enumeration, read whole (here, and by retrieve.units)
LIST_ITEM = r"[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t]+"
SHORT_ITEM = 80  # characters

# "A story should be:", a blank line, then "- Independent: ..." lines: one paragraph, so that no
# chunk boundary falls between a list of short items and the sentence that says what it lists
_INTRO_THEN_LIST = re.compile(rf":[ \t]*\n(?:[ \t]*\n)+((?:{LIST_ITEM}[^\n]*(?:\n|\Z))+)")


def _keep_lists_with_intro(text: str) -> str:
    def join(m: re.Match) -> str:
        items = m.group(1).strip("\n").split("\n")
        return ":\n" + m.group(1) if all(len(i.strip()) <= SHORT_ITEM for i in items) else m.group(0)

    return _INTRO_THEN_LIST.sub(join, text)


# -- loaders ---------------------------------------------------------------------------------


def _load(path: Path) -> list[tuple[int | None, str]]:
    """(page number or None, text) pairs for one file."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        from langchain_community.document_loaders import PyPDFLoader

        return [(d.metadata.get("page", 0) + 1, d.page_content) for d in PyPDFLoader(str(path)).load()]
    if suffix == ".docx":
        from langchain_community.document_loaders import Docx2txtLoader

        return [(None, d.page_content) for d in Docx2txtLoader(str(path)).load()]
    text = _decode(path.read_bytes())
    if suffix in (".html", ".htm"):
        text = _html_to_text(text)
    return [(None, text)]


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


def _html_to_text(html: str) -> str:
    """Visible text of an HTML page, headings kept as markdown '#' lines for _headings."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n")
    text = soup.get_text("\n")
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", text)).strip()


# -- headings --------------------------------------------------------------------------------

_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_TXT_HEADING = re.compile(r"(?:\A|\n[ \t]*\n)[ \t]*([A-Z][^\n.:;!?•*]{1,60}?)[ \t]*\n[ \t]*\n")


def _headings(text: str, markdown: bool) -> list[tuple[int, str]]:
    """(offset, heading) pairs. Plain text: a short capitalised line standing alone."""
    if markdown:
        return [(m.start(), m.group(1)) for m in _MD_HEADING.finditer(text)]
    found = []
    for m in _TXT_HEADING.finditer(text):
        line = m.group(1).strip()
        if len(line.split()) <= 8 and not re.search(r"\d{4}$", line):  # not a dateline
            found.append((m.start(1), line))
    return found


def _heading_at(headings: list[tuple[int, str]], offset: int) -> str:
    current = ""
    for start, title in headings:
        if start > offset:
            break
        current = title
    return current


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
