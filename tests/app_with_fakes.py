"""The page exactly as `scrumbot serve` builds it, but answering with the fake embedder and the
echo chat model of conftest, for browser tests and the upload load benchmark that need answers
quickly and predictably (the real model's answers vary and take seconds).

    python tests/app_with_fakes.py            # serves on SCRUMBOT_HOST:SCRUMBOT_PORT

SCRUMBOT_TEST_TOKEN_DELAY (seconds per streamed word, default 0) makes the chat model slow and
long-winded for questions that contain "slowly", so a test can stop an answer halfway; SCRUMBOT_TEST_EMBED_DELAY (seconds per embedded text) makes
indexing slow. The fake model records whether its stream was closed in the server log
("stream closed after N words")."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import EchoChatModel, FakeEmbeddings  # noqa: E402
from langchain_core.messages import AIMessageChunk  # noqa: E402
from langchain_core.outputs import ChatGenerationChunk  # noqa: E402


class SlowEcho(EchoChatModel):
    """The echo model; asked something "slowly", it repeats its answer 40 times, one word every
    SCRUMBOT_TEST_TOKEN_DELAY seconds: a long answer to stop."""

    def _stream(self, messages, stop=None, run_manager=None, **kw):
        slowly = "slowly" in str(messages[-1].content).lower()
        delay = float(os.environ.get("SCRUMBOT_TEST_TOKEN_DELAY") or 0) if slowly else 0
        words = self._reply(messages).split(" ") * (40 if delay else 1)
        sent = 0
        try:
            for i, word in enumerate(words):
                time.sleep(delay)
                sent += 1
                yield ChatGenerationChunk(message=AIMessageChunk(content=("" if i == 0 else " ") + word))
        finally:
            print(f"stream closed after {sent} of {len(words)} words", file=sys.stderr, flush=True)


class SlowEmbeddings(FakeEmbeddings):
    def embed_documents(self, texts):
        time.sleep(float(os.environ.get("SCRUMBOT_TEST_EMBED_DELAY") or 0) * len(texts))
        return super().embed_documents(texts)


def main() -> None:
    import scrumbot.ui as ui
    from scrumbot.api import Assistant
    from scrumbot.config import Settings

    settings = Settings.from_env()

    class Faked(Assistant):
        def __init__(self, s=None, **kw):
            kw.setdefault("embeddings", SlowEmbeddings())
            kw.setdefault("embedder_name", "fake-bag-of-words")
            kw.setdefault("llm", SlowEcho())
            super().__init__(s or settings, **kw)

        def warm(self) -> None:
            pass

    ui.Assistant = Faked
    ui.serve(settings)


if __name__ == "__main__":
    main()
