"""`scrumbot` exactly as installed, but with the fake embedder of conftest (through the real
Embeddings interface), for tests that run the CLI as a separate process and need it quick and
predictable: interrupting `scrumbot index` mid-batch, two processes on one index.

    python tests/cli_with_fakes.py index DOCS

SCRUMBOT_TEST_EMBED_DELAY (seconds per text, default 0) slows embedding down so a signal can
land in the middle of a batch; each finished batch prints `embedded N` on stderr."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import FakeEmbeddings  # noqa: E402

EMBEDDER = "fake-bag-of-words"


class SlowFakeEmbeddings(FakeEmbeddings):
    def __init__(self) -> None:
        super().__init__()
        self.delay = float(os.environ.get("SCRUMBOT_TEST_EMBED_DELAY") or 0)
        self.done = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        print(f"embedding batch of {len(texts)}", file=sys.stderr, flush=True)
        vectors = []
        for text in texts:
            time.sleep(self.delay)
            vectors += super().embed_documents([text])
        self.done += len(texts)
        print(f"embedded {self.done}", file=sys.stderr, flush=True)
        return vectors


def main() -> None:
    import scrumbot.api as api
    from scrumbot.cli import main as cli

    api._huggingface_embeddings = SlowFakeEmbeddings
    api.EMBEDDER_NAME = EMBEDDER
    cli()


if __name__ == "__main__":
    main()
