"""The Chroma index: embedded (PersistentClient) or a Chroma server (HttpClient).

Indexing goes through LangChain's indexing API: a SQL record manager remembers the hash of
every chunk it wrote, so an unchanged chunk is never embedded twice, and `cleanup="incremental"`
drops the old chunks of a changed file. Each chunk also carries its file's SHA-256, so files
whose bytes did not change are not even re-read, and files that disappeared from a folder are
found by comparing the folder with what the index holds for it. The collection's metadata
records which embedder built it; opening it with another one is refused.

Interrupting an index run must not leave the index half-updated: everything is read and embedded
first (the slow part, minutes), and only then written, one path at a time, in one batch per path
with Ctrl-C held until the batch is written. A run killed while writing leaves a journal
(UNFINISHED) that makes the next run redo those files. Every write is stamped (LAST_WRITE) so an
app serving from the same folder in another process re-opens the index: Chroma's embedded client
keeps searching its in-memory vectors otherwise, never seeing the new content.

An install holds several courses (Settings.course): each is its own collection
(Settings.course_collection) with its own record of indexed files and its own journal, so a
question in one course never finds another's passages and removing a course removes all of it.
The default course keeps the names an index had before courses existed. The lock and the write
stamp stay per folder: one writer at a time, whichever course it writes."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from .config import DEFAULT_COURSE, Settings, without_credentials
from .errors import (ConfigError, DiskFullError, EmbedderMismatchError, IndexBusyError,
                     IndexCorruptError, IndexMissingError, ScrumbotError, StoreUnavailableError)
from .ingest import INGEST_VERSION, SkipFile, discover, load_chunks, resolve_root

MARKER = "scrumbot-index.json"
INDEX_FORMAT = 1
LAST_WRITE = "last-write"  # touched after every write: other processes re-open the index
UNFINISHED = "unfinished-write.json"  # the files a write was updating when it was killed
LOCK = "index.lock"
# texts per embedder call: sentence-transformers sorts each call's texts by length to pad less,
# so bigger calls run faster (64: 1.15x the raw encode time, 256+: 1.0x); the progress bar
# moves once per call (_embed_all sorts across calls too)
EMBED_BATCH = 256


@dataclass
class IndexReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (file, what was done to it)
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"added {len(self.added)}, updated {len(self.updated)}, removed {len(self.removed)}, "
            f"unchanged {len(self.unchanged)}, skipped {len(self.skipped)} file(s); "
            f"embedded {self.chunks_embedded} chunk(s), deleted {self.chunks_deleted} "
            f"in {self.seconds:.1f}s"
        ]
        if not self.chunks_embedded and not self.chunks_deleted:
            lines.append("Nothing changed: nothing was embedded.")
        for name, why in self.skipped:
            lines.append(f"  skipped {name}: {why}")
        for name, note in self.notes:
            lines.append(f"  {name}: {note}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Precomputed(Embeddings):
    """Vectors embedded before any write, handed to the indexing API so writing is quick."""

    def __init__(self, inner: Embeddings, vectors: dict[str, object]):
        self.inner, self.vectors = inner, vectors

    def embed_documents(self, texts: list[str]) -> list:
        return [self.vectors[t] if t in self.vectors else self.inner.embed_documents([t])[0] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def _embed_all(embeddings: Embeddings, texts: list[str], progress: Callable[[int, int], None] | None) -> dict:
    """text -> vector (float32, to keep a large folder's vectors small in memory)."""
    import numpy as np

    vectors: dict[str, object] = {}
    # longest first across all calls, as one big encode() would order them: each call's batches
    # then pad as little as one call's would (unsorted 256-text calls cost ~3% more time)
    texts = sorted(set(texts), key=len, reverse=True)
    for start in range(0, len(texts), EMBED_BATCH):
        batch = texts[start:start + EMBED_BATCH]
        for text, vector in zip(batch, embeddings.embed_documents(batch)):
            vectors[text] = np.asarray(vector, dtype=np.float32)
        if progress:
            progress(min(start + EMBED_BATCH, len(texts)), len(texts))
    return vectors


@contextlib.contextmanager
def _held_signals():
    """Ctrl-C (and SIGTERM) wait until the block is done, then act: a write stopped halfway
    would leave part of the new content beside the old."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def _damage(err: BaseException) -> str | None:
    """What is broken in an embedded index, from Chroma's error; None if it is something else."""
    from chromadb.errors import ChromaError

    text = str(err)
    signs = ("hnsw", "segment", "malformed", "not a database", "pickle", "deserializ", "no such table")
    if isinstance(err, ChromaError) and any(s in text.lower() for s in signs):
        return text.splitlines()[0][:300]
    return None


def _records_damaged(err: BaseException) -> bool:
    try:
        from sqlalchemy.exc import DatabaseError
    except ImportError:  # pragma: no cover - langchain_classic brings sqlalchemy
        return False
    text = str(err).lower()
    return isinstance(err, DatabaseError) and "locked" not in text and not _disk_full(err)


def _check_vector_files(d: Path) -> None:
    """A vector file cut short (a copy interrupted, a full disk) crashes Chroma's native code
    with a segmentation fault on the first search, so the sizes its header promises are checked
    before Chroma opens the folder."""
    import struct

    for header in d.glob("*/header.bin"):
        try:
            raw = header.read_bytes()
            version, _, _, count, per_element = struct.unpack_from("<iQQQQ", raw, 0)
            data = header.with_name("data_level0.bin").stat().st_size
        except (OSError, struct.error):
            continue  # not the layout this check knows: leave it to Chroma
        if version == 1 and data < count * per_element:
            raise IndexCorruptError(
                f"The index at {d} is damaged: {header.parent.name}/data_level0.bin has {data:,} bytes "
                f"where its header promises {count * per_element:,} (a copy cut short, or a full disk?).",
                "Run `scrumbot index --rebuild` to build it again.",
            )


def _disk_full(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen).lower()
        if "disk is full" in text or "no space left" in text or "disk quota" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _server_errors(method):
    """With a Chroma server, a failed request is the server's problem (down, frozen, refusing),
    never a corrupt index: `--rebuild` would not help, and on a shared server it would delete
    everyone's index. Say which server, what failed, and what to check."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            try:
                return method(self, *args, **kwargs)
            except Exception as err:
                if not self.settings.chroma_url or not _collection_vanished(err):
                    raise
                # another instance rebuilt the shared collection (a new id): open it again, once
                self._vectorstore = None
                return method(self, *args, **kwargs)
        except ScrumbotError:
            raise
        except Exception as err:
            if not self.settings.chroma_url:
                damage = _damage(err)
                if damage is None:
                    raise
                raise IndexCorruptError(f"The index at {self.location} is damaged ({damage}).",
                                        "Run `scrumbot index --rebuild` to build it again.") from err
            problem = _server_problem(err, self.settings)
            if problem is None:
                raise
            raise StoreUnavailableError(
                f"The Chroma server at {self.location} {problem}",
                "Check that `chroma run` is still up and reachable from here, then run the command "
                "again (indexing picks up where it stopped). SCRUMBOT_REQUEST_TIMEOUT sets how long "
                "scrumbot waits for an answer.",
            ) from err

    return wrapper


class Store:
    def __init__(self, settings: Settings, embeddings: Embeddings, embedder_name: str):
        self.settings = settings
        self.embeddings = embeddings
        self.embedder_name = embedder_name
        self.course = settings.course
        self.collection_name = settings.course_collection()
        self._client = None
        self._vectorstore = None
        self._seen_write: float | None = None  # the LAST_WRITE stamp when the client was opened
        # searches and re-opening the client must not overlap (closing stops Chroma's system)
        self._lock = threading.RLock()

    # -- opening ------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return without_credentials(self.settings.chroma_url) or str(self.settings.index_dir)

    def client(self):
        with self._lock:
            if self._client is not None and not self.settings.chroma_url:
                if _last_write(self.settings.index_dir) != self._seen_write:
                    self._reopen()  # another process wrote to the index
            if self._client is None:
                self._open()
            return self._client

    def _reopen(self) -> None:
        """Open the index afresh: closing the last client of a folder stops Chroma's system,
        dropping its cached vectors. Clients of one folder in one process share that system;
        closing it under another would break that one, so a shared client is kept as it is."""
        client = self._client
        if client is None:
            return
        if not self.settings.chroma_url:
            from chromadb.api.shared_system_client import SharedSystemClient

            # a PersistentClient counts twice (itself and its admin client): more means shared
            if SharedSystemClient._identifier_to_refcount.get(str(self.settings.index_dir), 0) > 2:
                self._seen_write = _last_write(self.settings.index_dir)
                return
        self._client, self._vectorstore = None, None
        with contextlib.suppress(Exception):
            client.close()

    def _wrote(self) -> None:
        """Stamp a finished write, so that other processes re-open the index (not this one)."""
        if not self.settings.chroma_url:
            stamp = self.settings.index_dir / LAST_WRITE
            stamp.write_text(f"{time.time():.6f} {os.getpid()}\n")
            self._seen_write = _last_write(self.settings.index_dir)

    def _open(self) -> None:
        if self._client is None:
            self._seen_write = _last_write(self.settings.index_dir)
            try:
                self._client = _make_client(self.settings)
            except ScrumbotError:
                raise
            except Exception as err:
                raise IndexCorruptError(f"The index at {self.location} could not be opened: {err}",
                                        "Run `scrumbot index --rebuild` to build it again.") from err

    def _collection(self, create: bool):
        """The Chroma collection, checked for the right embedder; None if absent and not create."""
        client = self.client()
        name = self.collection_name
        try:
            collection = client.get_collection(name)
        except Exception as err:  # chromadb raises NotFoundError (a ValueError subclass in 1.x)
            if "does not exist" not in str(err) and "not found" not in str(err).lower():
                if self.settings.chroma_url:
                    raise  # a server problem, not a corrupt index: see _server_errors
                raise IndexCorruptError(
                    f"The index at {self.location} could not be read: {err}",
                    "Run `scrumbot index --rebuild` to build it again.",
                ) from err
            if not create:
                return None
            # get_or_create: app instances starting together on an empty server race to create it
            collection = client.get_or_create_collection(
                name,
                metadata={"embedder": self.embedder_name, "format": INDEX_FORMAT},
                configuration={"hnsw": {"space": "cosine"}},
            )
        built_by = (collection.metadata or {}).get("embedder")
        if built_by != self.embedder_name:
            raise EmbedderMismatchError(
                f"The index at {self.location} was built with the embedder {built_by!r}, "
                f"but scrumbot is using {self.embedder_name!r}; their vectors cannot be mixed.",
                "Run `scrumbot index --rebuild` to re-embed everything with the current embedder.",
            )
        return collection

    @_server_errors
    def vectorstore(self, create: bool = False, embeddings: Embeddings | None = None):
        from langchain_chroma import Chroma

        client = self.client()  # first: it may re-open, dropping the cached vectorstore
        if embeddings is None and self._vectorstore is not None:
            return self._vectorstore
        collection = self._collection(create)
        if collection is None:
            raise IndexMissingError(
                f"There is no index at {self.location} yet.",
                "Run `scrumbot index` (indexes corpus/) or `scrumbot index PATH`.",
            )
        vs = Chroma(client=client, collection_name=collection.name,
                    embedding_function=embeddings or self.embeddings,
                    create_collection_if_not_exists=False)
        if embeddings is None:
            self._vectorstore = vs
        return vs

    def _record_manager(self, root: str):
        from langchain_classic.indexes import SQLRecordManager

        d = self.settings.index_dir
        if self.settings.chroma_url and (not d.exists() or not any(d.iterdir())):
            # marked as ours, so that the embedded index can later live here too
            d.mkdir(parents=True, exist_ok=True)
            (d / MARKER).write_text(json.dumps({"format": INDEX_FORMAT}))
        d.mkdir(parents=True, exist_ok=True)
        rm = SQLRecordManager(f"{self.collection_name}:{root}", db_url=f"sqlite:///{self.records_path}")
        rm.create_schema()
        return rm

    @property
    def records_path(self) -> Path:
        """This course's record of indexed chunks (the default course's is the original file)."""
        suffix = "" if self.course == DEFAULT_COURSE else f"-{self.course}"
        return self.settings.index_dir / f"records{suffix}.sqlite"

    @property
    def _journal(self) -> Path:
        if self.course == DEFAULT_COURSE:
            return self.settings.index_dir / UNFINISHED
        return self.settings.index_dir / UNFINISHED.replace(".json", f"-{self.course}.json")

    # -- reading ------------------------------------------------------------------------------

    @_server_errors
    def count(self) -> int:
        collection = self._collection(create=False)
        return 0 if collection is None else collection.count()

    @_server_errors
    def search(self, query_vector: list[float], k: int) -> list[tuple[Document, float]]:
        """Top-k chunks by cosine similarity (1.0 = same direction)."""
        with self._lock:
            vs = self.vectorstore()
            # langchain_chroma returns raw cosine *distances* from this method (despite its name)
            hits = vs.similarity_search_by_vector_with_relevance_scores(query_vector, k=k)
            if (len(hits) < k and not self.settings.chroma_url and len(hits) < (held := self.count())
                    and not _being_written(self.settings.index_dir)):
                # Chroma answers from whatever vectors it could load: missing vector files give
                # fewer hits, silently. (While another process writes, this process's vectors
                # are stale until the write is stamped, so nothing is concluded then.)
                self._reopen()
                hits = self.vectorstore().similarity_search_by_vector_with_relevance_scores(query_vector, k=k)
                if len(hits) < min(k, held):
                    raise IndexCorruptError(
                        f"The index at {self.location} is damaged: it holds {held} passages but its "
                        f"vector files give only {len(hits)} (files missing or cut short?).",
                        "Run `scrumbot index --rebuild` to build it again.")
        return [(doc, 1.0 - float(distance)) for doc, distance in hits]

    def last_write(self) -> int | None:
        """When the index was last written to (None on a Chroma server: count() must do)."""
        return None if self.settings.chroma_url else _last_write(self.settings.index_dir)

    @_server_errors
    def all_chunks(self) -> list[Document]:
        data = self.vectorstore()._collection.get(include=["documents", "metadatas"])
        return [Document(page_content=t, metadata=m, id=i)
                for i, t, m in zip(data["ids"], data["documents"], data["metadatas"])]

    @_server_errors
    def status(self) -> dict:
        collection = self._collection(create=False)
        if collection is None:
            return {"location": self.location, "exists": False, "chunks": 0, "sources": {}}
        data = collection.get(include=["metadatas"])
        per_root: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for meta in data["metadatas"]:
            per_root[meta.get("root", "?")][meta.get("source", "?")] += 1
        return {
            "location": self.location,
            "exists": True,
            "embedder": (collection.metadata or {}).get("embedder"),
            "chunks": collection.count(),
            "sources": {root: dict(files) for root, files in per_root.items()},
        }

    @_server_errors
    def documents(self) -> list[dict]:
        """The course's files: where from, how many chunks, when last indexed (epoch seconds, or
        None when this instance's records do not say: written by another instance)."""
        collection = self._collection(create=False)
        if collection is None:
            return []
        per_file: dict[str, dict] = {}
        for meta in collection.get(include=["metadatas"])["metadatas"]:
            entry = per_file.setdefault(meta.get("source_id", "?"), {
                "source": meta.get("source", "?"), "root": meta.get("root", "?"), "chunks": 0})
            entry["chunks"] += 1
        indexed = self._indexed_at()
        return sorted(({**e, "source_id": sid, "indexed_at": indexed.get(sid)} for sid, e in per_file.items()),
                      key=lambda e: (e["root"], e["source"]))

    def _indexed_at(self) -> dict[str, float]:
        """source_id -> when its chunks were last written, from the record manager's table."""
        import sqlite3

        if not self.records_path.exists():
            return {}
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.records_path}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT group_id, MAX(updated_at) FROM upsertion_record GROUP BY group_id")
                return {group: float(when) for group, when in rows if group}
        except sqlite3.Error:
            return {}  # an older or damaged table: the list still shows, without times

    @_server_errors
    def courses(self) -> list[dict]:
        """Every course of this install (collections named by SCRUMBOT_COLLECTION), with counts."""
        prefix = self.settings.collection
        found = []
        for collection in self.client().list_collections():
            name = collection.name if hasattr(collection, "name") else str(collection)
            if name == prefix:
                course = DEFAULT_COURSE
            elif name.startswith(prefix + "."):
                course = name[len(prefix) + 1:]
            else:
                continue
            col = self.client().get_collection(name)
            sources = {m.get("source_id") for m in col.get(include=["metadatas"])["metadatas"]}
            found.append({"course": course, "collection": name, "documents": len(sources),
                          "chunks": col.count()})
        return sorted(found, key=lambda c: (c["course"] != DEFAULT_COURSE, c["course"]))

    @_server_errors
    def remove_files(self, source_ids: list[str]) -> IndexReport:
        """Take these files (source ids "root::name") out of the course: chunks and records."""
        started = time.perf_counter()
        report = IndexReport()
        with self._writer():
            collection = self._collection(create=False)
            if collection is None:
                return report
            held = self._ids_of(collection, source_ids) if source_ids else set()
            with _held_signals():
                for sid in source_ids:
                    root, _, name = sid.partition("::")
                    rm = self._record_manager(root)
                    keys = rm.list_keys(group_ids=[sid])
                    ids = set(keys) | self._ids_of(collection, [sid])
                    if ids:
                        collection.delete(ids=sorted(ids))
                    rm.delete_keys(keys)
                    if ids & held or keys:
                        report.removed.append(name)
                        report.chunks_deleted += len(ids)
                self._wrote()
        report.seconds = time.perf_counter() - started
        return report

    @_server_errors
    def remove_course(self) -> dict:
        """Delete this course's collection, its records and its journal; what it held, as counts."""
        with self._writer():
            collection = self._collection(create=False)
            held = {"chunks": 0, "documents": 0}
            if collection is not None:
                metas = collection.get(include=["metadatas"])["metadatas"]
                held = {"chunks": len(metas), "documents": len({m.get("source_id") for m in metas})}
                self.client().delete_collection(self.collection_name)
            self._forget_deleted()
            self.records_path.unlink(missing_ok=True)
            self._journal.unlink(missing_ok=True)
            self._wrote()
        return held

    def _forget_deleted(self) -> None:
        """After a collection was deleted: its vector files off the disk, and the client re-opened
        when no other Store of this process shares it (which frees what Chroma kept open of it)."""
        self._vectorstore = None
        if not self.settings.chroma_url:
            _drop_orphan_segments(self.settings.index_dir)
            self._reopen()

    # -- writing ------------------------------------------------------------------------------

    @_server_errors
    def rebuild(self) -> None:
        """Forget everything indexed, so the next `index` embeds all from scratch."""
        try:
            self.client()
        except IndexCorruptError:
            d = self.settings.index_dir
            if self.settings.chroma_url or not (d / MARKER).exists():
                raise  # never delete a folder that is not ours
            self._reopen()
            shutil.rmtree(d)
        with self._writer():
            client = self.client()
            try:
                client.delete_collection(self.collection_name)
            except Exception as err:  # there was none (or the server failed: say so)
                if self.settings.chroma_url and _server_problem(err, self.settings):
                    raise
            self._forget_deleted()
            self.records_path.unlink(missing_ok=True)
            self._set_unfinished(set())
            self._wrote()

    @_server_errors
    def index(self, paths: Iterable[Path], progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Bring the index in line with `paths` (folders or files); see the module docstring."""
        started = time.perf_counter()
        report = IndexReport()
        try:
            with self._writer():
                self._index(paths, progress, report)
        except ScrumbotError:
            raise
        except Exception as err:
            if _records_damaged(err):
                raise IndexCorruptError(
                    f"The index's record of what it holds ({self.records_path}) "
                    f"is damaged: {err.__class__.__name__}: {str(err).splitlines()[0]}",
                    "Run `scrumbot index --rebuild` to build it again.") from err
            # Chroma reports a full disk in many ways ("Failed to apply logs to the metadata
            # segment", ...): with next to no room left, that is what it is
            if not _disk_full(err) and not (not self.settings.chroma_url and _free_bytes(self.settings.index_dir) < 2**22):
                raise
            raise DiskFullError(
                f"The disk holding the index ({self.settings.index_dir}) is full. What this run had "
                "not finished writing is not in the index; what it finished is.",
                "Free some space there (or point SCRUMBOT_INDEX_DIR at a disk with room), then run "
                "`scrumbot index` again: it finishes the work without duplicates.",
            ) from err
        report.seconds = time.perf_counter() - started
        return report

    def _index(self, paths: Iterable[Path], progress: Callable[[int, int], None] | None,
               report: IndexReport) -> None:
        from langchain_core.indexing import index as lc_index

        collection = self._collection(create=True)
        # files a killed run was writing: redone even if their bytes match what the index holds
        pending = self._unfinished()
        for path in paths:
            target = Path(path).expanduser().resolve()
            root = resolve_root(target).as_posix()
            prior = self._files_under(collection, root)  # rel -> {(file hash, ingest version)}
            if target.exists():
                present, skipped = discover(target, max_bytes=self.settings.max_file_mb * 1024 * 1024)
                scope = set(prior) if target.is_dir() else {target.relative_to(root).as_posix()} & set(prior)
            else:
                rel = target.relative_to(root).as_posix()
                if rel not in prior:
                    raise FileNotFoundError(f"{path} does not exist (and was never indexed)")
                present, skipped, scope = [], [], {rel}
            report.skipped += skipped
            todo: list[Document] = []
            changed: list[tuple[str, bool]] = []
            # A file that cannot be read right now keeps its chunks; one that is now empty, binary
            # or unparsable loses them, or its old text would go on answering questions.
            unreadable = {name for name, why in skipped if why.startswith("cannot read")}
            dropped: set[str] = set()
            for sf in present:
                # unchanged: the same bytes, chunked by this version of ingest
                if prior.get(sf.rel) == {(sf.sha256, INGEST_VERSION)} and f"{root}::{sf.rel}" not in pending:
                    report.unchanged.append(sf.rel)
                    continue
                try:
                    todo += load_chunks(sf, self.settings)
                except SkipFile as why:
                    report.skipped.append((sf.rel, str(why)))
                    if not str(why).startswith("cannot read"):
                        dropped.add(sf.rel)
                    continue
                changed.append((sf.rel, sf.rel in prior))
            # what this path covered before and is gone (or no longer indexable) now
            gone = sorted((scope - {sf.rel for sf in present} - unreadable) | (dropped & scope))
            rm = self._record_manager(root)
            # The record manager is local to this app instance but the index may be shared (a
            # Chroma server): records of chunks another instance deleted are dropped, so that
            # lc_index writes those chunks again instead of trusting the records and skipping them.
            # (one query each for all changed files: per-file calls cost ~3 ms apiece, 0.2 s on 60 files)
            groups = [f"{root}::{name}" for name, _ in changed]
            if groups:
                held = self._ids_of(collection, groups)
                rm.delete_keys(sorted(self._keys_of(rm, groups) - held))
            # The slow part, before anything is written: stopping here leaves the index untouched.
            vectors = _embed_all(self.embeddings, [d.page_content for d in todo], progress) if todo else {}
            touched = set(groups) | {f"{root}::{name}" for name in gone}
            if not touched:
                continue
            self._check_room(todo, vectors)
            with _held_signals():
                self._set_unfinished(pending | touched)
                if todo:
                    vs = self.vectorstore(create=True, embeddings=_Precomputed(self.embeddings, vectors))
                    # one batch: a file is never half in the index
                    result = lc_index(todo, rm, vs, cleanup="incremental", source_id_key="source_id",
                                      batch_size=min(len(todo), self._max_batch()), key_encoder="sha256")
                    report.chunks_embedded += result["num_added"]
                    report.chunks_deleted += result["num_deleted"]
                    # ... and older chunks of a changed file that these records never listed (written
                    # by another instance, or before a crash) are deleted: one version per file.
                    stale = self._ids_of(collection, groups) - self._keys_of(rm, groups)
                    if stale:
                        vs.delete(ids=sorted(stale))
                        report.chunks_deleted += len(stale)
                for name, existed in changed:
                    (report.updated if existed else report.added).append(name)
                if gone:
                    vs = self.vectorstore(create=True)
                    for name in gone:
                        keys = rm.list_keys(group_ids=[f"{root}::{name}"])
                        # also chunks written before a crash, which the record manager never saw
                        ids = set(keys) | self._ids_of(collection, [f"{root}::{name}"])
                        if ids:
                            vs.delete(ids=list(ids))
                        rm.delete_keys(keys)
                        report.chunks_deleted += len(ids)
                        report.removed.append(name)
                self._wrote()
                pending -= touched
                self._set_unfinished(pending)

    # -- one writer at a time, and what it left unfinished ----------------------------------------

    @contextlib.contextmanager
    def _writer(self):
        """Hold the index's lock: two index runs interleaving their writes would mix versions."""
        import fcntl

        self.client()  # first: refuses a folder that is not an index before writing anything there
        if self.settings.chroma_url:
            # a lock file here would not stop an instance on another machine; instances sharing a
            # server reconcile what they find instead (see index())
            yield
            return
        d = self.settings.index_dir
        d.mkdir(parents=True, exist_ok=True)
        with open(d / LOCK, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                raise IndexBusyError(
                    f"Another `scrumbot index` (process {holder}) is updating {self.location} right now.",
                    "Wait for it to finish, then run the command again.",
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _check_room(self, todo: list[Document], vectors: dict) -> None:
        """Refuse a write the disk cannot hold, before it starts: Chroma fails on a full disk
        halfway through a write, sometimes as 'damaged', and was seen to hang in one run."""
        if self.settings.chroma_url or not todo:
            return
        dim = len(next(iter(vectors.values()))) if vectors else 384
        # measured ~4.5-6 KB per 124-character chunk of 256 floats; this errs on the large side
        needed = sum(16 * dim + 8 * len(d.page_content) + 2048 for d in todo) + 2**20
        free = _free_bytes(self.settings.index_dir)
        if free < needed:
            raise DiskFullError(
                f"The disk holding the index ({self.settings.index_dir}) has {free / 2**20:.1f} MB free; writing "
                f"{len(todo)} chunks needs about {needed / 2**20:.1f} MB. Nothing was written: the index "
                "answers as before.",
                "Free some space there (or point SCRUMBOT_INDEX_DIR at a disk with room), then run "
                "`scrumbot index` again.",
            )

    def _unfinished(self) -> set[str]:
        try:
            return set(json.loads(self._journal.read_text())["sources"])
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _set_unfinished(self, sources: set[str]) -> None:
        path = self._journal
        if not sources:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sources": sorted(sources)}))
        os.replace(tmp, path)  # never a half-written journal

    def _max_batch(self) -> int:
        try:
            return max(1, int(self.client().get_max_batch_size()))
        except Exception:
            return 1000

    @staticmethod
    def _ids_of(collection, source_ids: list[str]) -> set[str]:
        """The ids of every chunk the index holds for these files (a few queries, not one per file)."""
        ids: set[str] = set()
        for start in range(0, len(source_ids), 500):  # well inside SQLite's bound-variable limit
            part = source_ids[start:start + 500]
            where = {"source_id": part[0]} if len(part) == 1 else {"source_id": {"$in": part}}
            ids.update(collection.get(where=where, include=[])["ids"])
        return ids

    @staticmethod
    def _keys_of(rm, source_ids: list[str]) -> set[str]:
        """The chunk ids this instance's record manager lists for these files."""
        return {k for start in range(0, len(source_ids), 500)
                for k in rm.list_keys(group_ids=source_ids[start:start + 500])}

    def _files_under(self, collection, root: str) -> dict[str, set[tuple[str, int]]]:
        """rel -> the (file hash, ingest version) pairs its chunks carry; chunks from before
        ingest versions were recorded are version 1."""
        data = collection.get(where={"root": root}, include=["metadatas"])
        files: dict[str, set[tuple[str, int]]] = defaultdict(set)
        for meta in data["metadatas"]:
            files[meta["source"]].add((meta.get("file_sha256", ""), meta.get("ingest_version", 1)))
        return files


def _free_bytes(index_dir: Path) -> int:
    try:
        return shutil.disk_usage(index_dir).free
    except OSError:
        return 2**62  # cannot tell: let the write try


def _being_written(index_dir: Path) -> bool:
    """Is an index run (this process or another) holding the index's lock right now?"""
    import fcntl

    try:
        fh = open(index_dir / LOCK)
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _drop_orphan_segments(index_dir: Path) -> list[str]:
    """Delete the vector folders that no collection owns any more; their names.

    Chroma's embedded `delete_collection` takes a collection out of its catalogue but leaves its
    HNSW folder on disk (chroma-core/chroma#3296, #5259): a removed course's vectors would stay
    there for good. As chromadb-ops' `db clean` does, a folder named by a UUID that is not a
    VECTOR segment of the catalogue (chroma.sqlite3) is deleted. The folders are listed before
    the catalogue is read: a collection created meanwhile has its row before its folder, so its
    folder is never taken for an orphan."""
    import sqlite3
    import uuid

    def is_uuid(name: str) -> bool:
        try:
            return str(uuid.UUID(name)) == name
        except ValueError:
            return False

    folders = [p for p in index_dir.iterdir() if p.is_dir() and is_uuid(p.name)]
    if not folders:
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index_dir / 'chroma.sqlite3'}?mode=ro", uri=True)) as db:
            owned = {row[0] for row in db.execute("SELECT id FROM segments WHERE scope = 'VECTOR'")}
    except sqlite3.Error:
        return []  # a catalogue we cannot read: delete nothing
    dropped = []
    for folder in folders:
        if folder.name not in owned:
            shutil.rmtree(folder, ignore_errors=True)
            dropped.append(folder.name)
    return dropped


def _last_write(index_dir: Path) -> int | None:
    try:
        return (index_dir / LAST_WRITE).stat().st_mtime_ns
    except OSError:
        return None


def _make_client(settings: Settings):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_url:
        return _http_client(settings, chroma_settings)
    d = settings.index_dir
    if d.exists() and not d.is_dir():
        raise IndexCorruptError(f"{d} is a file, not an index folder.",
                                "Point SCRUMBOT_INDEX_DIR at a folder.")
    if not d.exists() or not any(d.iterdir()):
        d.mkdir(parents=True, exist_ok=True)
        (d / MARKER).write_text(json.dumps({"format": INDEX_FORMAT}))
    elif not (d / MARKER).exists():
        raise IndexCorruptError(
            f"{d} holds files that are not a scrumbot index.",
            "Point SCRUMBOT_INDEX_DIR at an empty or new folder, then run `scrumbot index`.",
        )
    _check_vector_files(d)
    try:
        return chromadb.PersistentClient(path=str(d), settings=chroma_settings)
    except Exception as err:
        # chromadb caches a system per folder even when it failed to start; a retry (after
        # `--rebuild` deleted the folder) would get that broken one back
        from chromadb.api.shared_system_client import SharedSystemClient

        SharedSystemClient._identifier_to_system.pop(str(d), None)
        SharedSystemClient._identifier_to_refcount.pop(str(d), None)
        raise IndexCorruptError(
            f"The index at {d} could not be opened: {err}",
            "Run `scrumbot index --rebuild` to build it again.",
        ) from err


def chroma_headers(settings: Settings) -> dict[str, str]:
    """The headers every request to the Chroma server carries (SCRUMBOT_CHROMA_TOKEN/_HEADERS)."""
    headers = {"Authorization": f"Bearer {settings.chroma_token}"} if settings.chroma_token else {}
    if settings.chroma_headers:
        try:
            extra = json.loads(settings.chroma_headers)
            if not isinstance(extra, dict):
                raise ValueError("not an object")
        except ValueError as err:
            raise ConfigError(f"SCRUMBOT_CHROMA_HEADERS is not a JSON object of headers ({err}).",
                              'Write it like {"X-Chroma-Token": "secret"}.') from None
        headers.update({str(k): str(v) for k, v in extra.items()})
    return headers


def _http_client(settings: Settings, chroma_settings):
    """A client of the Chroma server at SCRUMBOT_CHROMA_URL, checked to answer before use.

    chromadb's HttpClient waits forever by default (no timeout), so a frozen server would hang
    every question: the heartbeat is tried with SCRUMBOT_CONNECT_TIMEOUT/REQUEST_TIMEOUT first,
    and the client's own requests get the same limits."""
    import chromadb
    import httpx
    from urllib.parse import urlparse

    url = urlparse(settings.chroma_url if "://" in settings.chroma_url else f"http://{settings.chroma_url}")
    raw = without_credentials(settings.chroma_url)  # for the messages
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"SCRUMBOT_CHROMA_URL={raw!r} is not a server address.",
                          "Write it like http://127.0.0.1:8000.")
    host, port, ssl = url.hostname, url.port or (443 if url.scheme == "https" else 8000), url.scheme == "https"
    headers = chroma_headers(settings)
    timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    heartbeat = f"{url.scheme}://{host}:{port}/api/v2/heartbeat"
    check = "Check that `chroma run --host ... --port ...` is up and reachable from here, and that SCRUMBOT_CHROMA_URL points at it."
    try:
        response = httpx.get(heartbeat, headers=headers, timeout=timeout)
    except httpx.TimeoutException as err:
        raise StoreUnavailableError(
            f"The Chroma server at {raw} did not answer (tried GET {heartbeat}: {type(err).__name__} "
            f"after {settings.connect_timeout:g}s to connect / {settings.request_timeout:g}s to answer).",
            check + " SCRUMBOT_CONNECT_TIMEOUT and SCRUMBOT_REQUEST_TIMEOUT set how long to wait.",
        ) from None
    except httpx.HTTPError as err:
        raise StoreUnavailableError(
            f"Could not reach the Chroma server at {raw} (tried GET {heartbeat}: {type(err).__name__}: {err}).",
            check,
        ) from None
    if response.status_code in (401, 403):
        raise StoreUnavailableError(
            f"The Chroma server at {raw} refused scrumbot's credentials (GET {heartbeat}: HTTP "
            f"{response.status_code}).",
            "Set SCRUMBOT_CHROMA_TOKEN (sent as a Bearer token) or SCRUMBOT_CHROMA_HEADERS to what it expects.",
        )
    if response.status_code != 200:
        raise StoreUnavailableError(
            f"{raw} does not answer like a Chroma 1.x server (GET {heartbeat}: HTTP {response.status_code}).",
            check,
        )
    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, headers=headers or None,
                                     settings=chroma_settings)
    except Exception as err:
        raise StoreUnavailableError(f"The Chroma server at {raw} answered its heartbeat but refused "
                                    f"a client: {err}", check) from err
    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = timeout
    return client


def _collection_vanished(err: BaseException) -> bool:
    from chromadb.errors import NotFoundError

    return isinstance(err, NotFoundError)


def _server_problem(err: BaseException, settings: Settings) -> str | None:
    """What went wrong talking to the Chroma server, in words; None if it was something else."""
    import httpx
    from chromadb.errors import ChromaError, NotFoundError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, httpx.TimeoutException):
            return (f"did not answer within {settings.request_timeout:g}s "
                    f"({type(seen).__name__}); it may be frozen or overloaded.")
        if isinstance(seen, httpx.TransportError):
            return f"stopped answering ({type(seen).__name__}: {seen})."
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, NotFoundError):
        return None
    if isinstance(err, ChromaError) or type(err) is Exception:  # chromadb's error for a non-JSON reply
        return f"answered with an error: {err}"
    return None
