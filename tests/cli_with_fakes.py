"""`scrumbot` exactly as installed, but with the fake embedder of conftest (through the real
Embeddings interface), for tests that run the CLI as a separate process and need it quick and
predictable: interrupting `scrumbot index` mid-batch, two processes on one index.

    python tests/cli_with_fakes.py index DOCS

SCRUMBOT_TEST_EMBED_DELAY (seconds per text, default 0) slows embedding down so a signal can
land in the middle of a batch; each finished batch prints `embedded N` on stderr.
SCRUMBOT_TEST_WRITE_GATE (a file) makes each write of chunks to Chroma print `wrote N chunks`
and then wait while that file exists (at most two minutes), so a test can act between the
writes of one run and then let it go on by deleting the file.
SCRUMBOT_TEST_FILL_DISK (a file) is written, right after the store checked there is room for
its write, until the disk is full: another program filling the disk at the worst moment."""

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
    gate = os.environ.get("SCRUMBOT_TEST_WRITE_GATE")
    if gate:
        from chromadb.api.models.Collection import Collection

        real_upsert = Collection.upsert

        def upsert_then_wait(self, *args, **kwargs):
            result = real_upsert(self, *args, **kwargs)
            print(f"wrote {len(kwargs.get('ids') or args[0])} chunks", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 120
            while os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.05)
            return result

        Collection.upsert = upsert_then_wait
    filler = os.environ.get("SCRUMBOT_TEST_FILL_DISK")
    if filler:
        import scrumbot.store as store

        real_check = store.Store._check_room

        def check_then_fill(self, todo, vectors):
            real_check(self, todo, vectors)
            with open(filler, "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass  # full
            print("disk filled", file=sys.stderr, flush=True)

        store.Store._check_room = check_then_fill
    cli()


if __name__ == "__main__":
    main()
