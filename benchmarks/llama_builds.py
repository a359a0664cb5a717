"""Prompt and generation speed of every build on the bootstrap's ladder, on this machine.

    .venv/bin/python benchmarks/llama_builds.py [--rounds 3] [--steps native,avx2,...]

Builds each step's wheel into the bootstrap's wheel cache if it is not there yet (5-10 minutes
each on 2 cores), then runs the same measurement with each build in a process of its own, the
builds interleaved round by round so a noisy neighbour slows all alike, and prints medians.
Prefill is what a question costs on a 2-core CPU (~260 prompt tokens per answer), so it decides
the ladder's order. Steps whose build would be identical here (no AMX on this CPU: "native
without AMX" is the native build) are listed as such and not built."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import llama_build as lb  # noqa: E402

CACHE = Path(os.environ.get("SCRUMBOT_CACHE") or Path.home() / ".cache" / "scrumbot")

MEASURE = r"""
import json, sys, time
import llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
text = ("The Product Owner is responsible for maximizing the value of the product resulting from the work "
        "of the Development Team. The Product Backlog is an ordered list of everything that is known to be "
        "needed in the product. ") * 6
tokens = llm.tokenize(text.encode())[:260]
t0 = time.perf_counter(); llm.eval(tokens); prefill = time.perf_counter() - t0
t0 = time.perf_counter(); n = 0
for _ in range(32):
    token = llm.sample(temp=0.0)
    llm.eval([token]); n += 1
decode = time.perf_counter() - t0
print(json.dumps({"prefill": len(tokens) / prefill, "decode": n / decode}))
"""


def measure(wheel: Path, model: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        lb.unpack(wheel, Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(model)], env=env, capture_output=True,
                             text=True, timeout=600)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", help="comma-separated step names (default: every step)")
    parser.add_argument("--model", type=Path, default=CACHE / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    args = parser.parse_args()
    wanted = set(args.steps.split(",")) if args.steps else None
    features = lb.native_features()
    flags = lb.cpu_flags()
    wheels: dict[str, Path] = {}
    for step in lb.LADDER:
        if wanted and step.name not in wanted:
            continue
        same = lb.redundant(step, features)
        if same:
            print(f"{step.name}: not built ({same})", flush=True)
            continue
        kept = lb.wheel_dir(CACHE / "wheels", step, flags)
        if not list(kept.glob("*.whl")):
            print(f"{step.name}: compiling ...", flush=True)
            kept.mkdir(parents=True, exist_ok=True)
            lb.pip_build(step, kept)
        wheels[step.name] = sorted(kept.glob("*.whl"))[0]
    results: dict[str, list[dict]] = {name: [] for name in wheels}
    for r in range(args.rounds):
        for name, wheel in wheels.items():
            results[name].append(measure(wheel, args.model))
            print(f"round {r + 1} {name}: {results[name][-1]}", flush=True)
    print(f"\nmodel {args.model.name}, n_threads=2, 260-token prefill, 32 greedy tokens; medians of {args.rounds} rounds")
    print(f"CPU: {next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), '?')}")
    print(f"{'build':<18}{'prefill tok/s':>15}{'decode tok/s':>14}")
    for name, runs in results.items():
        ok = [x for x in runs if "error" in x] == []
        if not ok:
            print(f"{name:<18}{'fails: ' + runs[0].get('error', '')[:60]}")
            continue
        print(f"{name:<18}{statistics.median(x['prefill'] for x in runs):>15.1f}"
              f"{statistics.median(x['decode'] for x in runs):>14.1f}")


if __name__ == "__main__":
    main()
