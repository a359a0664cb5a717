"""Choose the "passages answer it" threshold (SCRUMBOT_MIN_ANSWERABLE) on the dev split, report test.

Run the eval once per course and split with the check computed but never refusing, so every
question's probability and unconstrained answer are known:

    SCRUMBOT_MIN_ANSWERABLE=0 SCRUMBOT_JUDGE_ALWAYS=1 scrumbot eval eval/courses/git/questions.jsonl \\
        --corpus eval/courses/git --split dev --json > git-dev.json      # ... and test, per course
    .venv/bin/python benchmarks/calibrate_judge.py --dev *-dev.json --test *-test.json --plot docs/judge.png

For each threshold t, a question with probability p < t counts as refused: right for an
out-of-scope question, wrong for an answerable one; above t it keeps the outcome it had. The
threshold kept maximises, on dev, the mean over courses of (answerable right % + out-of-scope
refused %); the same t is then applied to test, which played no part in choosing it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

THRESHOLDS = [round(0.05 * i, 2) for i in range(0, 20)]


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["systems"]["scrumbot"]["results"]


def rates(results: list[dict], t: float) -> tuple[float, float]:
    """(answerable right %, out-of-scope refused %) if p < t refused."""
    ans = [r for r in results if not r["case"]["refuse"]]
    oos = [r for r in results if r["case"]["refuse"]]

    def held(r: dict) -> bool:
        p = r.get("scores", {}).get("answerable")
        return p is not None and p < t

    a = sum(r["correct"] and not held(r) for r in ans)
    o = sum(r["refused"] or held(r) for r in oos)
    return 100.0 * a / max(len(ans), 1), 100.0 * o / max(len(oos), 1)


def course(path: Path) -> str:
    return path.stem.rsplit("-", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", nargs="+", type=Path, required=True)
    parser.add_argument("--test", nargs="*", type=Path, default=[])
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--mark", type=float, help="Circle this threshold on the chart (the one shipped) "
                                                   "instead of the dev-chosen one.")
    args = parser.parse_args()
    dev = {course(p): load(p) for p in args.dev}
    test = {course(p): load(p) for p in args.test}
    print("dev: answerable right % / out-of-scope refused %, per course, by threshold")
    print("t     " + "".join(f"{c:>22}" for c in dev) + "   mean of sums")
    best = (-1.0, 0.0)
    for t in THRESHOLDS:
        cells = {c: rates(r, t) for c, r in dev.items()}
        mean = sum(a + o for a, o in cells.values()) / len(cells)
        print(f"{t:<6}" + "".join(f"{a:>13.1f} / {o:>5.1f}" for a, o in cells.values()) + f"{mean:>15.1f}")
        if mean > best[0] + 1e-9:
            best = (mean, t)
    t = best[1]
    print(f"\nchosen on dev: SCRUMBOT_MIN_ANSWERABLE={t}")
    for name, results in test.items():
        a0, o0 = rates(results, 0.0)
        a, o = rates(results, t)
        print(f"test {name}: answerable {a0:.1f} -> {a:.1f} %, out-of-scope refused {o0:.1f} -> {o:.1f} % "
              f"(without the check -> with it)")
    circled = t if args.mark is None else args.mark
    if args.plot and test:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.2))
        for name, results in test.items():
            pts = [rates(results, x) for x in THRESHOLDS]
            ax.plot([100 - a for a, _ in pts], [100 - o for _, o in pts], marker=".", label=name)
            a, o = rates(results, circled)
            ax.scatter([100 - a], [100 - o], s=80, facecolors="none", edgecolors="black")
        ax.set_xlabel("answerable questions not answered right (%)")
        ax.set_ylabel("out-of-scope questions answered (%)")
        ax.set_title(f"test split, thresholds 0-0.95 (circled: {circled}, "
                     f"{'shipped' if args.mark is not None else 'chosen on dev'})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    main()
