"""Shared fixtures. Every test gets its own index folder and model cache (no test touches the
user's real state); fakes implement the real LangChain interfaces so the real pipeline runs."""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from scrumbot.config import Settings, apply_offline_env

apply_offline_env()

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCRUMBOT_SHARED", REPO.parent / "shared"))
CORPUS = REPO / "corpus"
REAL_MODELS_DIR = Path(os.environ.get("SCRUMBOT_CACHE") or Path.home() / ".cache" / "scrumbot") / "models"


class FakeEmbeddings(Embeddings):
    """Deterministic bag-of-words vectors: texts sharing words are similar, others score ~0.

    Counts every text it embeds, so tests can tell exactly what indexing re-embedded."""

    dim = 256

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def _vector(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            if len(word) > 2:
                v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += texts
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


class EchoChatModel(BaseChatModel):
    """A fake chat model that answers with the first sentence of the first passage it is given,
    streaming word by word. Through BaseChatModel, so the real prompt and chain run."""

    calls: list[list[BaseMessage]] = []

    @property
    def _llm_type(self) -> str:
        return "echo-fake"

    def _reply(self, messages: list[BaseMessage]) -> str:
        self.calls.append(messages)
        last = messages[-1].content
        m = re.search(r"\[1\] (.+?[.!?])(\s|$)", last, re.S)
        return m.group(1).strip() if m else "The course material doesn't cover that."

    def _generate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._reply(messages)))])

    def _stream(self, messages, stop=None, run_manager: CallbackManagerForLLMRun | None = None,
                **kw: Any) -> Iterator[ChatGenerationChunk]:
        for i, word in enumerate(self._reply(messages).split(" ")):
            yield ChatGenerationChunk(message=AIMessageChunk(content=("" if i == 0 else " ") + word))


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's index; SCRUMBOT_* from the shell do not leak in."""
    for key in list(os.environ):
        if key.startswith("SCRUMBOT_") and key not in ("SCRUMBOT_CACHE", "SCRUMBOT_SHARED"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SCRUMBOT_INDEX_DIR", str(tmp_path / "index"))
    monkeypatch.setenv("SCRUMBOT_MODELS_DIR", str(REAL_MODELS_DIR))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A copy of the real course corpus that tests may change."""
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target)
    return target


@pytest.fixture
def fake_embeddings() -> FakeEmbeddings:
    return FakeEmbeddings()


@pytest.fixture
def fake_assistant(settings: Settings, corpus: Path, fake_embeddings: FakeEmbeddings):
    """The real pipeline over a real Chroma, with the fake embedder and the echo chat model."""
    from scrumbot import Assistant

    return Assistant(settings.replace(min_score=0.2), embeddings=fake_embeddings,
                     embedder_name="fake-bag-of-words", llm=EchoChatModel())


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests expect ../shared beside the repo (or SCRUMBOT_SHARED).")
    return path
