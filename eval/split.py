"""Gives every line of the question files a "split" ("dev" or "test"), once.

    python eval/split.py                       # the real courses: a seeded, stratified draw
    python eval/split.py --set dev FILE...     # every line of FILE is dev (or test)

The draw is stratified per file: the answerable questions, the out-of-scope ones and the
conversations are each shuffled with their own seeded generator and split half and half, so
both sides get every kind. A line that already has a split keeps it: running this again, or
after adding questions, never moves a question from one side to the other. Tune on dev only;
report test."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20261201
HERE = Path(__file__).resolve().parent
COURSES = [HERE / "courses" / "git" / "questions.jsonl", HERE / "courses" / "debian-reference" / "questions.jsonl"]


def stratum(row: dict) -> str:
    if "turns" in row:
        return "dialogue"
    return "out-of-scope" if row.get("refuse") else "answerable"


def with_split(row: dict, split: str) -> dict:
    # "split" right after "id", so a reader sees the side of a question first.
    out = {"id": row["id"], "split": split} if "id" in row else {"split": split}
    out.update((k, v) for k, v in row.items() if k not in out)
    return out


def assign(path: Path, fixed: str | None = None, seed: int = SEED) -> dict[str, int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) if line.strip() else None for line in lines]
    todo: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row is not None and "split" not in row:
            todo.setdefault("all" if fixed else stratum(row), []).append(i)
    for name, idx in sorted(todo.items()):
        if fixed:
            sides = [fixed] * len(idx)
        else:
            rng = random.Random(f"{seed}:{path.parent.name}/{path.name}:{name}")
            order = idx[:]
            rng.shuffle(order)
            half = (len(order) + rng.randrange(2)) // 2  # an odd count: which side gets one more is drawn too
            sides_of = {i: ("dev" if k < half else "test") for k, i in enumerate(order)}
            sides = [sides_of[i] for i in idx]
        for i, side in zip(idx, sides):
            rows[i] = with_split(rows[i], side)
            compact = '": ' not in lines[i]  # keep the file's own JSON spacing, so the diff is the split only
            lines[i] = json.dumps(rows[i], ensure_ascii=False, separators=(",", ":") if compact else None)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for row in rows:
        if row is not None:
            key = f"{row['split']} {stratum(row)}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["dev", "test"], help="give every unsplit line this split, no draw")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.set and not args.files:
        parser.error("--set needs the files to mark")
    for path in args.files or COURSES:
        counts = assign(path, args.set)
        print(f"{path}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
