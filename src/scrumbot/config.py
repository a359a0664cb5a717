"""Settings: one typed object for everything configurable, read from SCRUMBOT_* variables.

Imports nothing of ours, so every other module can take a Settings without cycles."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Where the source checkout keeps its corpus; used as the default when it exists.
_REPO_CORPUS = Path(__file__).resolve().parents[2] / "corpus"


# No hub look-ups, no analytics, no progress-bar noise: scrumbot runs offline.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "ANONYMIZED_TELEMETRY": "False",
}


def apply_offline_env() -> None:
    """Set the offline variables (unless the user set them) before heavy libraries import."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


# the user[:password]@ part of a URL ("http://bob:pa55word@host/v1")
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


def without_credentials(url: str | None) -> str | None:
    """A URL as it may be shown or logged: "http://bob:pa55word@host/v1" -> "http://****@host/v1"."""
    return _USERINFO.sub("****@", url) if url else url


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "scrumbot"


def _cache_home() -> Path:
    return Path(os.environ.get("SCRUMBOT_CACHE") or Path.home() / ".cache" / "scrumbot")


def _default_corpus() -> Path:
    return _REPO_CORPUS if _REPO_CORPUS.is_dir() else Path.cwd() / "corpus"


@dataclass(frozen=True)
class Settings:
    """Everything scrumbot can be told. Field `x` is overridden by `SCRUMBOT_X`."""

    # where things live
    index_dir: Path = field(default_factory=lambda: _data_home() / "index")
    corpus_dir: Path = field(default_factory=_default_corpus)
    models_dir: Path = field(default_factory=lambda: _cache_home() / "models")
    collection: str = "scrumbot"
    # the course questions are answered from and `index` writes to (see course_collection())
    course: str = "default"
    # where the page keeps uploaded files, one folder per course; unset: "courses" beside index_dir
    courses_dir: Path | None = None
    # Chroma server instead of the embedded store: "http://host:port"
    chroma_url: str | None = None
    chroma_token: str | None = None  # sent as "Authorization: Bearer <token>"
    chroma_headers: str | None = None  # more headers for a proxy, as JSON: {"X-Chroma-Token": "..."}

    # chunking (measured in the eval: see README "Answer quality")
    chunk_size: int = 600
    chunk_overlap: int = 80
    max_file_mb: int = 20  # bigger files are skipped (with that reason) before being read

    # retrieval and the "not covered" gate
    k: int = 3
    # dense and BM25 chunk rankings fused (identifiers and terms the embedder does not know):
    # the answer reaches the model for more questions (git dev 19 -> 23 of 26,
    # benchmarks/retrieval_split.py); answers right on dev +9, on test +4 and -1 (README
    # "Answer quality")
    hybrid: bool = True
    min_score: float = 0.25  # calibrated: README "Answer quality" (0.30 refused one more answerable, kept no more out)
    # what the model reads: the retrieved chunks' best sentences, this many characters in all
    # (~110 prompt tokens; whole chunks were ~300 and cost ~2 s more to first token)
    max_context_chars: int = 600
    # the model's probability that the passages answer the question, below which it is refused
    # ("the passages do not answer it"); 0 turns the check off. Unset: the threshold chosen on the
    # eval's dev split for the packaged model in use (models.PACKAGED), else the default model's:
    # each model's probabilities sit differently (answerable_threshold)
    min_answerable: float | None = None
    judge_always: bool = False  # compute that probability even when the check is off (calibration)

    # generation
    llm: str = "llamacpp"  # llamacpp | openai | extractive
    model: str = "qwen2.5-coder-1.5b"  # a packaged model name or a path to any .gguf
    n_threads: int = 2
    n_ctx: int = 2048
    max_tokens: int = 160
    temperature: float = 0.0
    # RoPE base for llama.cpp; 0 = the model file's own (1e6 for Qwen2.5), as it was trained.
    # (LangChain's ChatLlamaCpp passes 10000 unless told otherwise.)
    rope_freq_base: float = 0.0
    openai_base_url: str | None = None
    openai_model: str | None = None
    openai_api_key: str | None = None
    # servers (Chroma, OpenAI-compatible): seconds to connect, and to wait for the next bytes
    # of a response (an answer's first token, or the next one while it streams)
    connect_timeout: float = 5.0
    request_timeout: float = 60.0

    # questions
    max_question_chars: int = 2000
    max_history_turns: int = 3

    # serving
    host: str = "127.0.0.1"
    port: int = 7860
    # accounts of the web page: "user:password", or several as "user:password,user2:password2"
    auth: str | None = None
    # accounts (of SCRUMBOT_AUTH) that may change courses and read the trainer report, comma-
    # separated; unset: every account. Without SCRUMBOT_AUTH only a page on loopback is a trainer's.
    trainers: str | None = None
    allow_unauthenticated: bool = False

    # the trainer's question log (questions.sqlite in the index folder; README "Trainer insights")
    log_questions: bool = True
    log_retention_days: int = 90  # older rows are deleted; 0 keeps them all

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then SCRUMBOT_* variables, then explicit keyword overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SCRUMBOT_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for name in ("index_dir", "corpus_dir", "models_dir"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, Path(value).expanduser())
        if self.courses_dir is not None and not isinstance(self.courses_dir, Path):
            object.__setattr__(self, "courses_dir", Path(self.courses_dir).expanduser())
        check_course(self.course)
        if self.llm not in ("llamacpp", "openai", "extractive"):
            raise ValueError(f"SCRUMBOT_LLM must be llamacpp, openai or extractive, not {self.llm!r}")
        if self.log_retention_days < 0:
            raise ValueError(f"SCRUMBOT_LOG_RETENTION_DAYS must be 0 (keep all) or more, not {self.log_retention_days}")

    @property
    def answerable_threshold(self) -> float:
        """min_answerable, or the threshold calibrated for the packaged model that answers (a
        model of your own, or one behind an OpenAI-compatible server: the default model's,
        until you calibrate it with benchmarks/calibrate_judge.py)."""
        if self.min_answerable is not None:
            return self.min_answerable
        from .models import judge_threshold

        return judge_threshold(self.model if self.llm == "llamacpp" else None)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, with secrets masked (for `status` and logs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["min_answerable"] = self.answerable_threshold
        for secret in ("openai_api_key", "chroma_token", "chroma_headers", "auth"):
            if out[secret]:
                out[secret] = "****"
        return {k: str(v) if isinstance(v, Path) else without_credentials(v) if isinstance(v, str) else v
                for k, v in out.items()}

    def mask(self, text: str) -> str:
        """`text` with every secret of these settings, and any password in a URL, as ****: for
        error messages and log lines, which may quote a server's reply or a URL."""
        secrets = [self.openai_api_key, self.chroma_token, self.auth]
        for url in (self.openai_base_url, self.chroma_url):  # a URL's password, quoted on its own
            userinfo = _USERINFO.search(url or "")
            if userinfo:
                secrets += [userinfo.group()[:-1], userinfo.group()[:-1].partition(":")[2]]
        if self.auth and ":" in self.auth:
            secrets.append(self.auth.split(":", 1)[1])
            secrets += [password for _, password in self.accounts()]
        if self.chroma_headers:
            try:
                secrets += [str(v) for v in json.loads(self.chroma_headers).values()]
            except (ValueError, AttributeError):
                secrets.append(self.chroma_headers)
        for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
            text = text.replace(secret, "****")
        return _USERINFO.sub("****@", text)

    def accounts(self) -> list[tuple[str, str]]:
        """The page's (user, password) pairs from SCRUMBOT_AUTH. Several accounts are separated by
        commas; a value whose comma-separated parts are not all user:password is one account
        whose password holds a comma (as `user:password` always meant)."""
        if not self.auth:
            return []
        parts = self.auth.split(",")
        if len(parts) > 1 and all(re.fullmatch(r"[^:,\s]+:.+", p.strip()) for p in parts):
            return [tuple(p.strip().split(":", 1)) for p in parts]  # type: ignore[misc]
        return [tuple(self.auth.split(":", 1))] if ":" in self.auth else []  # type: ignore[list-item]

    def course_collection(self, course: str | None = None) -> str:
        """The Chroma collection holding `course`: the default course is SCRUMBOT_COLLECTION
        itself (the collection every index had before courses existed), course X is
        "<SCRUMBOT_COLLECTION>.X". SCRUMBOT_COLLECTION thus names one install's set of courses,
        and two installs sharing a Chroma server keep theirs apart by choosing different ones."""
        course = check_course(course or self.course)
        return self.collection if course == DEFAULT_COURSE else f"{self.collection}.{course}"


    def course_files(self, course: str | None = None) -> Path:
        """The folder holding the files uploaded to `course` from the page."""
        base = self.courses_dir or self.index_dir.parent / "courses"
        return base / check_course(course or self.course) / "files"


DEFAULT_COURSE = "default"
_COURSE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def check_course(name: str) -> str:
    """`name` if it can name a course (a Chroma collection and a folder on every system)."""
    if not isinstance(name, str) or not _COURSE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} cannot name a course: use 1-40 lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit (like csm-2025).")
    return name


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"SCRUMBOT_{f.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
