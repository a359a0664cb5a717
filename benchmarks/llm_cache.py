"""A disk cache in front of the real chat model, for the calibration and sweep scripts only.

Generation is greedy (temperature 0), so the same messages give the same answer; caching them
lets a sweep re-run thirty settings while paying the model only for prompts it has not seen.
The product never uses this: `scrumbot eval` always calls the model."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict


class CachedChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    inner: Any
    path: str
    tag: str = ""  # what else decides the output (model file, max_tokens ...)
    hits: int = 0
    misses: int = 0

    @property
    def _llm_type(self) -> str:
        return "cached-" + getattr(self.inner, "_llm_type", "chat")

    def _key(self, messages: list[BaseMessage]) -> str:
        blob = json.dumps([self.tag] + [[m.type, m.content] for m in messages])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _db(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT)")
        return db

    def _reply(self, messages: list[BaseMessage]) -> str:
        key = self._key(messages)
        with self._db() as db:
            row = db.execute("SELECT text FROM answers WHERE key = ?", (key,)).fetchone()
        if row:
            self.hits += 1
            return row[0]
        self.misses += 1
        text = self.inner.invoke(messages).content
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, text))
        return text

    def _generate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._reply(messages)))])

    def _stream(self, messages, stop=None, run_manager=None, **kw: Any) -> Iterator[ChatGenerationChunk]:
        yield ChatGenerationChunk(message=AIMessageChunk(content=self._reply(messages)))


def cached(llm: BaseChatModel, path: Path, tag: str) -> CachedChatModel:
    return CachedChatModel(inner=llm, path=str(path), tag=tag)
