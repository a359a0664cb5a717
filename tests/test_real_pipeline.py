"""The real embedder and the real default model, through each way in: Python, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CORPUS, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_assistant(tmp_path_factory):
    from scrumbot import Assistant, Settings

    settings = Settings.from_env(index_dir=tmp_path_factory.mktemp("real") / "index", corpus_dir=CORPUS)
    assistant = Assistant(settings)
    assistant.index()
    return assistant


def test_real_embedder_separates_covered_from_uncovered(real_assistant):
    retriever = real_assistant.retriever
    inside = retriever.retrieve("Which certification is sought by business analysts?")
    outside = retriever.retrieve("What is the capital of France?")
    assert inside.passages[0].source == "product-owner-101.txt"
    assert any("business analysts" in p.text for p in inside.passages)
    assert retriever.covered(inside) and not retriever.covered(outside)
    assert inside.top_score - outside.top_score > 0.15


def test_python_api_answers_with_sources(real_assistant):
    a = real_assistant.answer("Which cert suits a business analyst?")
    assert not a.refused
    assert "CSPO" in a.text or "Product Owner" in a.text
    assert a.sources and a.sources[0].source == "product-owner-101.txt"
    assert all(isinstance(s.score, float) and s.text for s in a.sources)


def test_refuses_what_the_course_does_not_cover(real_assistant):
    for q in ("What is the capital of France?", "How much does the CSPO course cost?"):
        a = real_assistant.answer(q)
        assert a.refused, (q, a.text)
        assert a.text == "The course material doesn't cover that."
        assert "$" not in a.text and "Paris" not in a.text


def test_the_judge_reads_the_real_model_and_its_prefix_is_reused(real_assistant):
    """The yes/no probability comes from llama.cpp's own logits, and the answer after it reuses
    the judge's evaluated prompt: its first token follows within a fraction of the judge's time."""
    inside = real_assistant.answer("Which cert suits a business analyst?")
    outside = real_assistant.answer("Who is the CEO of the Scrum Alliance?")
    assert 0.0 < outside.scores["answerable"] < inside.scores["answerable"] < 1.0
    assert not inside.refused and outside.refused
    judge = inside.timings["judge_s"] - inside.timings["retrieval_s"]
    after = inside.timings["first_token_s"] - inside.timings["judge_s"]
    assert after < judge, inside.timings


def test_cli_index_then_ask_json(tmp_path):
    env = {**os.environ, "SCRUMBOT_INDEX_DIR": str(tmp_path / "index")}
    cli = [sys.executable, "-m", "scrumbot.cli"]
    missing = subprocess.run(cli + ["ask", "What does a ScrumMaster do?"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "scrumbot index" in missing.stderr and "Traceback" not in missing.stderr
    first = subprocess.run(cli + ["index", str(CORPUS)], env=env, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert "added 1" in first.stdout
    again = subprocess.run(cli + ["index", str(CORPUS)], env=env, capture_output=True, text=True, cwd=REPO)
    assert "Nothing changed: nothing was embedded." in again.stdout
    out = subprocess.run(cli + ["ask", "--json", "What does a ScrumMaster do?"], env=env,
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"answer", "refused", "sources"}
    assert data["refused"] is False
    assert any(w in data["answer"].lower() for w in ("facilitat", "obstacle", "coach"))
    assert {"source", "text", "score"} <= set(data["sources"][0])
