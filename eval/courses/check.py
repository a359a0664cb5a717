"""Checks every answerable question of the course question files against the course text.

    /work/main/.venv/bin/python eval/courses/check.py eval/courses/git/questions.jsonl [more.jsonl]

Each answerable question (and each dialogue turn) must carry `evidence`: sentences copied from the
course, several pieces joined by " … ". A piece counts as found when it occurs in the text of one
of the question's `source` files (any file whose stem is named), compared without whitespace, so
the line breaks a PDF puts into a sentence do not matter. Every `must` group should have one of
its strings inside the evidence, else the gold answer is not what the evidence says.
Exits non-zero and names the lines that fail."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

SEP = " … "
CORPORA = [Path("corpus"), Path("eval/extra-corpus"), Path("eval/courses/git"), Path("eval/courses/debian-reference")]


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def text_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        parser = _Text()
        parser.feed(path.read_text(encoding="utf-8"))
        return " ".join(parser.parts)
    if suffix == ".pdf":
        import pypdf

        return " ".join(page.extract_text() for page in pypdf.PdfReader(path).pages)
    if suffix == ".docx":
        import docx

        doc = docx.Document(path)
        cells = [c.text for t in doc.tables for row in t.rows for c in row.cells]
        return " ".join([p.text for p in doc.paragraphs] + cells)
    return path.read_text(encoding="utf-8")


def squeeze(text: str) -> str:
    # PDF text breaks lines inside words ("ob-\nject") and sentences; compare without any of it.
    return re.sub(r"\s+", "", text.replace("-\n", ""))


def main(paths: list[str]) -> int:
    files = {f.stem: f for root in CORPORA if root.is_dir() for f in root.iterdir() if f.suffix != ".jsonl"}
    cache: dict[str, str] = {}
    bad = 0
    for path in paths:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            case = json.loads(line)
            for i, turn in enumerate(case.get("turns", [case])):
                if turn.get("refuse"):
                    continue
                where = f"{path}:{n} {case['id']}" + (f" turn {i + 1}" if "turns" in case else "")
                sources = turn.get("source") or []
                sources = [sources] if isinstance(sources, str) else sources
                evidence = turn.get("evidence", "")
                if not evidence or not sources:
                    print(f"{where}: no evidence or no source"), 
                    bad += 1
                    continue
                missing = [s for s in sources if s not in files]
                if missing:
                    print(f"{where}: source file {missing} not in the corpora")
                    bad += 1
                    continue
                texts = [cache.setdefault(s, squeeze(text_of(files[s]))) for s in sources]
                for piece in evidence.split(SEP):
                    if not any(squeeze(piece) in t for t in texts):
                        print(f"{where}: evidence not in {sources}: {piece[:90]!r}")
                        bad += 1
                for group in turn.get("must", []):
                    if not any(s.lower() in evidence.lower() for s in group):
                        print(f"{where}: no string of must group {group} in the evidence")
                        bad += 1
    print(f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
