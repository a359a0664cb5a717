"""The llama-cpp-python build for this machine: the fastest one that is proven to run here.

PyPI has only llama-cpp-python's source, so the bootstrap compiles it. A build compiled for the
CPU it was built on (`-march=native`) is the fastest, but a CPU can report features the process
may not use (AMX tiles under some hypervisors, AVX-512 switched off by the OS), and a venv or a
wheel cache can be carried to another machine. A build that cannot run there dies by SIGILL at
the first answer. So no build is kept unless it has generated tokens on this machine: each step
of LADDER, fastest first, is built (or taken from the wheel cache), then a separate process
loads the model with it and generates a few tokens. A step that crashes or fails is recorded
as such for this machine and the next one is tried; the first that works is installed into the
venv, with a record (`scrumbot-llama-build.json` in the venv) of which step it is and why.

Run by scripts/bootstrap.sh with the venv's python:
    python scripts/llama_build.py --cache DIR --model FILE.gguf [--version 0.3.36]
A venv whose record matches this machine and the installed library costs a hash and no check.
Standard library only: it runs before anything else is known to work."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VERSION = "0.3.36"
RECORD = "scrumbot-llama-build.json"  # in the venv (sys.prefix): what is installed, and why
COMMON_ARGS = "-DLLAVA_BUILD=OFF -DGGML_BLAS=OFF"
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
_NO_AVX512 = f"-mno-avx512f {_NO_AMX}"  # every AVX-512 subset depends on avx512f


@dataclass(frozen=True)
class Step:
    name: str
    cmake_args: str
    needs: str = ""  # a feature `-march=native` must enable for this step to differ from the one above


LADDER = (
    Step("native", "-DGGML_NATIVE=ON"),
    # explicit -mno-* flags win over -march=native whatever their order on gcc's command line
    Step("native-noamx", f"-DGGML_NATIVE=ON '-DCMAKE_C_FLAGS={_NO_AMX}' '-DCMAKE_CXX_FLAGS={_NO_AMX}'", "amx-tile"),
    Step("native-noavx512", f"-DGGML_NATIVE=ON '-DCMAKE_C_FLAGS={_NO_AVX512}' '-DCMAKE_CXX_FLAGS={_NO_AVX512}'",
         "avx512f"),
    Step("avx2", "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"),
    Step("plain", "-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"),
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    why: str  # "ok", "crashed (SIGILL)", "exit code 1: <last line>", "hung (no result in 300 s)"
    system_info: str = ""
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0


def log(message: str) -> None:
    print(f"[bootstrap] {message}", file=sys.stderr, flush=True)


# -- this machine ---------------------------------------------------------------------------------


def fingerprint() -> str:
    """Which machine this is, as far as a compiled build cares: the CPU's model and flags as the
    kernel reports them, the kernel, and the machine's id (another machine with the same CPU may
    still forbid an instruction, so a build proven elsewhere is proven again here)."""
    cpu = cpu_flags().partition(":")[2].strip()
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        model = ""
    machine_id = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            machine_id = Path(path).read_text().strip()
            break
        except OSError:
            continue
    parts = [platform.machine(), platform.release(), model, cpu, machine_id or platform.node()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def native_features(compiler: str | None = None) -> set[str] | None:
    """The ISA extensions `-march=native` turns on here (gcc's view), or None if it cannot say."""
    cc = compiler or os.environ.get("CC") or "cc"
    try:
        out = subprocess.run([cc, "-march=native", "-Q", "--help=target"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    enabled = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("-m") and parts[1] == "[enabled]":
            enabled.add(parts[0][2:])
    return enabled or None


def redundant(step: Step, features: set[str] | None) -> str | None:
    """Why building `step` here would give the build above it again (None: it would not)."""
    if step.needs and features is not None and step.needs not in features:
        return f"this CPU has no {step.needs.upper().replace('-', '_')}, so it is the same build as the one above"
    return None


# -- one candidate build: make it, prove it ----------------------------------------------------------


def wheel_key(step: Step, fp_cpu: str) -> str:
    return hashlib.sha256(f"{step.name}\n{step.cmake_args} {COMMON_ARGS}\n{fp_cpu}".encode()).hexdigest()[:12]


def wheel_dir(cache: Path, step: Step, flags: str) -> Path:
    """Where `step`'s wheel for a CPU with these flags is kept."""
    return cache / f"llama-{VERSION}-{step.name}-{wheel_key(step, flags)}"


def cpu_flags() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def pip_build(step: Step, out_dir: Path, version: str = VERSION) -> Path:
    """Compile llama-cpp-python with this step's flags into a wheel in `out_dir`."""
    env = dict(os.environ, CMAKE_ARGS=f"{step.cmake_args} {COMMON_ARGS}", CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not by CMAKE_ARGS, and would
    # hand back a wheel built with other flags
    cmd = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-cache-dir",
           "--no-deps", "--no-binary", "llama-cpp-python", "-w", str(out_dir), f"llama-cpp-python=={version}"]
    result = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = sorted(out_dir.glob("llama_cpp_python-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise BuildFailed(f"compiling failed (pip exit code {result.returncode}):\n{tail}")
    return wheels[0]


class BuildFailed(Exception):
    pass


# What the candidate runs, in a process of its own: load the model, prefill a prompt, generate.
_SMOKE = r"""
import json, sys, time
import llama_cpp
info = llama_cpp.llama_print_system_info()
info = info.decode() if isinstance(info, bytes) else str(info)
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]), n_batch=512, verbose=False)
prompt = llm.tokenize(("A product backlog is an ordered list of everything that might be needed in the "
                       "product. " * 8).encode())
t0 = time.perf_counter(); llm.eval(prompt); prefill = time.perf_counter() - t0
llm.reset()
t0 = time.perf_counter(); out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
decode = time.perf_counter() - t0
n = out["usage"]["completion_tokens"]
print(json.dumps({"system_info": " ".join(info.split()), "prefill_tok_s": len(prompt) / prefill,
                  "decode_tok_s": n / decode if n else 0.0, "text": out["choices"][0]["text"]}))
"""


def smoke(model: Path, path: Path | None = None, python: str = sys.executable, timeout: float = 300,
          threads: int = 2) -> Verdict:
    """Load `model` with the llama_cpp found first on `path` (the installed one if None) in a new
    process and generate; a crash (any signal), an error or a hang is a failed verdict."""
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        result = subprocess.run([python, "-c", _SMOKE, str(model), str(threads)], env=env,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Verdict(False, f"hung (no result in {timeout:g} s)")
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return Verdict(False, f"crashed ({name})")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return Verdict(False, f"exit code {result.returncode}: {last[:300]}")
    data = json.loads(lines[-1])
    return Verdict(True, "ok", data["system_info"], round(data["prefill_tok_s"], 1), round(data["decode_tok_s"], 1))


def requirements(wheel: Path) -> list[str]:
    """The wheel's own run-time requirements (its METADATA's Requires-Dist without an extra)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = zf.read(meta).decode() if meta else ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


def install_requirements(wheel: Path) -> None:
    """What the candidate imports besides itself (numpy, diskcache, jinja2, ...), so that a
    check fails only for the build, never for a missing Python package."""
    needed = requirements(wheel)
    if needed:
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", *needed],
                       check=True)


def unpack(wheel: Path, into: Path) -> Path:
    """The wheel's files in a folder, importable with it on sys.path (a wheel is a zip)."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(into)
    return into


# -- the ladder ---------------------------------------------------------------------------------------


@dataclass
class Choice:
    step: Step
    wheel: Path
    verdict: Verdict
    because: str  # why this step and not one above it


def choose(ladder: tuple[Step, ...], cache: Path, model: Path,
           build: Callable[[Step, Path], Path] = pip_build,
           prove: Callable[[Path, Path], Verdict] | None = None,
           features: set[str] | None = None, fp: str | None = None,
           prepare: Callable[[Path], None] = install_requirements) -> Choice:
    """The first step of `ladder` whose build runs here: built or taken from `cache`, proven by
    `prove(model, unpacked_wheel)` in a process of its own after `prepare(wheel)` installed what
    it imports. Remembers, per machine, which steps crashed, hung or did not compile
    (`cache/verdicts.json`), so a later bootstrap does not build or run them again; an error
    exit is not remembered (it may be the environment's, not the build's)."""
    prove = prove or (lambda m, p: smoke(m, p))
    fp = fp or fingerprint()
    verdicts_file = cache / "verdicts.json"
    try:
        verdicts = json.loads(verdicts_file.read_text())
    except (OSError, ValueError):
        verdicts = {}
    here = verdicts.setdefault(fp, {})
    flags = cpu_flags()
    passed_over: list[str] = []
    for step in ladder:
        why_not = redundant(step, features)
        if why_not:
            continue
        if _lasting(here.get(step.name, "ok")):
            log(f"{step.name} build {here[step.name]} on this machine before; not trying it again")
            passed_over.append(f"{step.name} build {here[step.name]}")
            continue
        kept = wheel_dir(cache, step, flags)
        wheels = sorted(kept.glob("*.whl"))
        if wheels:
            wheel = wheels[0]
        else:
            log(f"compiling llama-cpp-python {VERSION}, {step.name} build (5-10 minutes on 2 cores, once)")
            tmp = kept.with_name(kept.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                build(step, tmp)
            except BuildFailed as err:
                shutil.rmtree(tmp, ignore_errors=True)
                log(f"{step.name} build: {err}")
                here[step.name] = "did not compile"
                passed_over.append(f"{step.name} build did not compile")
                _save(verdicts_file, verdicts)
                continue
            shutil.rmtree(kept, ignore_errors=True)
            tmp.rename(kept)
            wheel = sorted(kept.glob("*.whl"))[0]
        log(f"checking the {step.name} build on this machine (load the model, generate a few tokens)")
        prepare(wheel)
        with tempfile.TemporaryDirectory(prefix="llama-check-") as tmp:
            verdict = prove(model, unpack(wheel, Path(tmp)))
        if verdict.ok or _lasting(verdict.why):
            here[step.name] = verdict.why
        else:
            here.pop(step.name, None)
        _save(verdicts_file, verdicts)
        if verdict.ok:
            because = ("; ".join(passed_over) + f": using the {step.name} build") if passed_over \
                else f"the fastest build ({step.name}) runs here"
            return Choice(step, wheel, verdict, because)
        log(f"{step.name} build {verdict.why}: trying the next build")
        passed_over.append(f"{step.name} build {verdict.why}")
    raise NoBuildRuns(passed_over)


def _lasting(why: str) -> bool:
    """A verdict that holds for this build on this machine: a crash, a hang, no compile."""
    return why.startswith(("crashed", "hung", "did not compile"))


class NoBuildRuns(Exception):
    def __init__(self, tried: list[str]):
        super().__init__("no llama-cpp-python build runs on this machine: " + "; ".join(tried))
        self.tried = tried


def _save(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -- the venv ------------------------------------------------------------------------------------


def installed_library() -> Path | None:
    """The installed llama_cpp's CPU kernel library (without importing it: that may crash)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    found = sorted(lib.glob("libggml-cpu.*")) or sorted(lib.glob("libllama.*"))
    return found[0] if found else None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def current_record() -> dict | None:
    """The record of the installed build, if it was proven on this machine and is what's installed."""
    try:
        record = json.loads((Path(sys.prefix) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    lib = installed_library()
    if lib is None or record.get("fingerprint") != fingerprint() or record.get("library_sha256") != _sha(lib):
        return None
    return record


def install(choice: Choice) -> dict:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # its dependencies and the server extra, then this exact build over any same-version one
    subprocess.run(pip + ["install", f"{choice.wheel}[server]"], check=True)
    subprocess.run(pip + ["install", "--no-deps", "--force-reinstall", str(choice.wheel)], check=True)
    lib = installed_library()
    record = {"step": choice.step.name, "because": choice.because, "cmake_args": choice.step.cmake_args,
              "system_info": choice.verdict.system_info, "prefill_tok_s": choice.verdict.prefill_tok_s,
              "decode_tok_s": choice.verdict.decode_tok_s, "wheel": choice.wheel.name,
              "fingerprint": fingerprint(), "library_sha256": _sha(lib) if lib else "",
              "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _save(Path(sys.prefix) / RECORD, record)
    return record


def ladder_from_env() -> tuple[Step, ...]:
    custom = os.environ.get("SCRUMBOT_LLAMA_CMAKE_ARGS")
    return (Step("custom", custom),) if custom else LADDER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="where built wheels are kept")
    parser.add_argument("--model", type=Path, required=True, help="a GGUF model to prove builds with")
    args = parser.parse_args(argv)
    record = current_record()
    if record is not None:
        log(f"llama.cpp: the {record['step']} build, proven on this machine")
        return 0
    if not args.model.is_file():
        log(f"cannot check a llama.cpp build without a model: {args.model} is missing")
        return 1
    args.cache.mkdir(parents=True, exist_ok=True)
    try:
        choice = choose(ladder_from_env(), args.cache, args.model, features=native_features())
    except NoBuildRuns as err:
        log(f"{err}.")
        log("scrumbot can still answer without it: SCRUMBOT_LLM=openai (a model server) or "
            "SCRUMBOT_LLM=extractive. Please report the lines above with `grep -m1 'model name' /proc/cpuinfo`.")
        return 1
    record = install(choice)
    log(f"llama.cpp: {choice.because} (the check read {record['prefill_tok_s']:g} prompt tokens/s; "
        "README \"Performance\" compares every build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
