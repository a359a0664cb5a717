# The two commands: `make run` (chat page on http://127.0.0.1:7860) and `make test`.
# Both set everything up from nothing first (scripts/bootstrap.sh; cheap when already done).
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared

.PHONY: setup setup-test run test test-fast eval bench clean

setup:
	@bash scripts/bootstrap.sh

setup-test:
	@bash scripts/bootstrap.sh --test

run: setup
	$(VENV)/bin/scrumbot serve

test: setup-test
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

eval: setup
	$(VENV)/bin/scrumbot eval $(SHARED)/eval/questions.jsonl $(SHARED)/eval/dialogues.jsonl

bench: setup
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
