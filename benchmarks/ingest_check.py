"""What indexing keeps of real pages: each HTML extractor against a reference main text.

    PYTHONPATH=src python benchmarks/ingest_check.py PAGE.html [PAGE.pdf PAGE.docx ...]

For every HTML page it runs the extractors we measured (scrumbot's ingest before this change,
taken from git; trafilatura; readability-lxml; html2text; scrumbot's ingest now), chunks their
text the same way, and prints per extractor:

  kept     share of the reference text's words found in the chunks (as a multiset)
  extra    words in the chunks beyond the reference text's count of them (junk, and the
           column names a table row repeats)
  junk     words in the chunks that the reference text never says (navigation, URLs)
  nav      navigation strings ("Table of Contents", "Prev", "Next", "Home", "Up") in the
           chunks beyond how often the reference text itself says them
  code     <code>/<tt>/<kbd>/<samp> spans of the page found verbatim in one chunk
  para     paragraphs holding inline code (<= 300 chars) found whole, as one sentence run,
           in one chunk (backticks ignored)
  sent     sentences of the page's paragraphs (6 words or more) found on one line of a chunk:
           the answer path reads a line break as the end of a sentence
  chunks   number of chunks (chunk_size from Settings, default 600)

The reference text is the page's <body> without the parts that are navigation in the pages
we checked by hand: DocBook's navheader/navfooter/toc, AsciiDoc's #toc/#footer, <nav>, the
usual sidebars. A PDF, DOCX or text file made from a page is measured against that page's
reference (PAGE.html next to it with the same stem): only 'before' and 'now' run on those, and 'heads'
counts the distinct `heading` values of the chunks.

    PYTHONPATH=src python benchmarks/ingest_check.py --questions eval/courses/git/questions.jsonl

checks the evaluation courses instead: how many of the questions' `evidence` pieces (the course
sentences that answer them) one chunk holds whole, and one line of a chunk (backticks and white
space ignored), before and now. The other extractors are not scrumbot's
dependencies: `pip install trafilatura readability-lxml html2text` to compare with them (a
missing one is left out).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

from scrumbot.config import Settings
from scrumbot.ingest import SourceFile, _markdown_headings, chunk_spans, html_to_markdown

NAV = re.compile(r"\b(?:Table of Contents|Prev|Next|Home|Up)\b")
REFERENCE_DROP = ("script, style, head, nav, .navheader, .navfooter, .toc, #toc, #footer, "
                  ".sphinxsidebar, .related, [role=navigation]")
WORD = re.compile(r"[\w.'’-]*\w")
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


BLOCKS = ["p", "div", "li", "td", "th", "tr", "dt", "dd", "pre", "br", "table", "ul", "ol", "dl",
          "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "section", "article", "title"]


def reference(html: str):
    """The page's main text as a browser shows it: words inside a line stay joined
    ("<code>a</code>_b" is "a_b"), blocks are apart."""
    import warnings

    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
    soup = BeautifulSoup(html, "lxml")
    for tag in soup.select(REFERENCE_DROP):
        tag.decompose()
    body = soup.body or soup
    for tag in body.find_all(BLOCKS):
        tag.insert_after(" ")
        tag.insert_before(" ")
    codes = {" ".join(c.get_text().split()) for c in body.find_all(["code", "tt", "kbd", "samp"])
             if c.find_parent("pre") is None}
    codes = {c for c in codes if 2 <= len(c) <= 80}
    paras = [" ".join(p.get_text().split()) for p in body.find_all("p") if p.find(["code", "tt"])]
    paras = [p for p in paras if len(p) <= 300]
    sents = [x for p in body.find_all("p") for x in SENTENCE.split(" ".join(p.get_text().split()))
             if len(x.split()) >= 6]
    return body.get_text(), codes, paras, sents


def old_ingest(ref: str):
    """scrumbot.ingest as it was at git `ref`, loaded beside today's (same config module)."""
    source = subprocess.run(["git", "show", f"{ref}:src/scrumbot/ingest.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    pkg = types.ModuleType("scrumbot_before")
    pkg.__path__ = []
    sys.modules["scrumbot_before"] = pkg
    sys.modules["scrumbot_before.config"] = sys.modules["scrumbot.config"]
    path = Path(tempfile.mkdtemp()) / "ingest.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("scrumbot_before.ingest", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scrumbot_before.ingest"] = module
    spec.loader.exec_module(module)
    return module


def chunks_from_markdown(text: str, settings: Settings) -> list[str]:
    doc = _markdown_headings(text, slugs=False)
    return [doc.text[a:b] for a, b, _ in chunk_spans(doc, settings.chunk_size, settings.chunk_overlap)]


def html_extractors(settings: Settings) -> dict:
    def trafilatura_md(html: str) -> list[str]:
        import trafilatura

        text = trafilatura.extract(html, output_format="markdown", include_tables=True, include_formatting=True,
                                   include_links=False, include_images=False, favor_recall=True) or ""
        return chunks_from_markdown(text, settings)

    def readability_md(html: str) -> list[str]:
        from readability import Document

        return chunks_from_markdown(html_to_markdown(Document(html).summary()), settings)

    def html2text_md(html: str) -> list[str]:
        import html2text

        h = html2text.HTML2Text()
        h.body_width, h.ignore_links, h.ignore_images = 0, True, True
        return chunks_from_markdown(h.handle(html), settings)

    return {"trafilatura": trafilatura_md, "readability": readability_md, "html2text": html2text_md}


def file_chunks(module, path: Path, settings: Settings) -> tuple[list[str], int]:
    chunks = file_chunks_raw(module, path, settings)
    heads = {c.metadata.get("heading") for c in chunks} - {""}
    return [c.page_content for c in chunks], len(heads)


def measure(chunks: list[str], ref_text: str, codes: set[str], paras: list[str], sents: list[str]) -> dict:
    ref_words = Counter(WORD.findall(ref_text))
    out_words = Counter(WORD.findall(" ".join(chunks)))
    flat = [" ".join(c.split()) for c in chunks]
    plain = [f.replace("`", "") for f in flat]
    lines = "\n".join(" ".join(line.split()) for c in chunks for line in c.replace("`", "").splitlines())
    return {
        "kept": (sum(min(n, out_words[w]) for w, n in ref_words.items()), sum(ref_words.values()), "%"),
        "extra": sum(max(0, n - ref_words[w]) for w, n in out_words.items()),
        "junk": sum(n for w, n in out_words.items() if w not in ref_words),
        "nav": max(0, len(NAV.findall(" ".join(chunks))) - len(NAV.findall(ref_text))),
        "code": (sum(any(c in f for f in flat) for c in codes), len(codes)),
        "para": (sum(any(p in f for f in plain) for p in paras), len(paras)),
        "sent": (sum(s in lines for s in sents), len(sents)),
        "chunks": len(chunks),
    }


def cell(value) -> str:
    if isinstance(value, tuple):  # words kept as a share, spans and paragraphs as counts
        return f"{value[0] / max(1, value[1]):.1%}" if len(value) == 3 else f"{value[0]}/{value[1]}"
    return str(value)


def add(total: dict, row: dict) -> None:
    for key, value in row.items():
        if isinstance(value, tuple):
            summed = tuple(a + b for a, b in zip(total.get(key, (0, 0)), value[:2]))
            total[key] = summed + value[2:]
        elif isinstance(value, int):
            total[key] = total.get(key, 0) + value


def evidence(questions: Path, modules: dict, settings: Settings) -> None:
    folder = questions.parent
    files = {p.name.split(".")[0]: p for p in folder.iterdir() if p.suffix in (".html", ".htm", ".pdf", ".docx", ".txt", ".md")}
    pieces = []
    for line in questions.read_text().splitlines():
        q = json.loads(line)
        sources = q.get("source") or []
        for piece in (q.get("evidence") or "").split(" … "):
            if piece.strip():
                pieces.append(([s.split(".")[0] for s in ([sources] if isinstance(sources, str) else sources)],
                               " ".join(piece.replace("`", "").split())))
    for name, module in modules.items():
        chunks = {stem: [" ".join(c.page_content.replace("`", "").split()) for c in file_chunks_raw(module, p, settings)]
                  for stem, p in files.items()}
        lines = {stem: [" ".join(line.replace("`", "").split()) for c in file_chunks_raw(module, p, settings)
                        for line in c.page_content.splitlines()] for stem, p in files.items()}
        whole = sum(any(piece in c for s in srcs for c in chunks.get(s, [])) for srcs, piece in pieces)
        one_line = sum(any(piece in x for s in srcs for x in lines.get(s, [])) for srcs, piece in pieces)
        print(f"{str(questions)[-40:]:40} {name:7} evidence in one chunk {whole}/{len(pieces)}, "
              f"on one line {one_line}/{len(pieces)}, chunks {sum(map(len, chunks.values()))}")


def file_chunks_raw(module, path: Path, settings: Settings):
    return module.load_chunks(SourceFile(path.resolve(), path.resolve().parent, path.name, "-"), settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--before", default="main", help="git ref of the ingest to compare with (default main)")
    parser.add_argument("--questions", nargs="*", type=Path, default=[],
                        help="questions.jsonl files whose evidence is looked for in their folder's chunks")
    args = parser.parse_args()
    settings = Settings()
    before = old_ingest(args.before)
    now = sys.modules["scrumbot.ingest"]
    for questions in args.questions:
        evidence(questions, {"before": before, "now": now}, settings)
    if not args.files:
        return
    columns = ["kept", "extra", "junk", "nav", "code", "para", "sent", "chunks", "heads"]
    print(f"{'file':28} {'extractor':12} " + " ".join(f"{c:>9}" for c in columns))
    totals: dict[str, dict] = {}
    for path in args.files:
        html_path = path if path.suffix.lower() in (".html", ".htm") else path.with_suffix(".html")
        ref_text, codes, paras, sents = reference(html_path.read_text(encoding="utf-8", errors="replace"))
        runs: dict[str, tuple[list[str], int | str]] = {}
        runs["before"] = file_chunks(before, path, settings)
        is_html = path.suffix.lower() in (".html", ".htm")
        if is_html:
            html = path.read_text(encoding="utf-8", errors="replace")
            for name, fn in html_extractors(settings).items():
                try:
                    runs[name] = (fn(html), "")
                except ImportError as err:
                    print(f"  ({name} left out: {err})", file=sys.stderr)
        runs["now"] = file_chunks(now, path, settings)
        for name, (chunks, heads) in runs.items():
            row = measure(chunks, ref_text, codes, paras, sents) | {"heads": heads}
            if is_html:
                add(totals.setdefault(name, {}), row)
            print(f"{path.name[:28]:28} {name:12} " + " ".join(f"{cell(row[c]):>9}" for c in columns))
    if len([p for p in args.files if p.suffix.lower() in (".html", ".htm")]) > 1:
        for name, row in totals.items():
            print(f"{'all HTML pages':28} {name:12} " + " ".join(f"{cell(row.get(c, '')):>9}" for c in columns))


if __name__ == "__main__":
    main()
