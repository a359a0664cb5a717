"""Chat model factory: llama.cpp (embedded default), any OpenAI-compatible server, or none.

Models load on first use and are kept for the life of the process: loading the 1.5B GGUF
takes seconds and ~1.8 GB, which no request should pay twice."""

from __future__ import annotations

import threading

from langchain_core.language_models.chat_models import BaseChatModel

from .config import Settings
from .errors import LLMUnavailableError, ModelError
from .models import gguf_path

_loaded: dict[tuple, BaseChatModel] = {}
_load_lock = threading.Lock()


def chat_model(settings: Settings) -> BaseChatModel | None:
    """The chat model the settings ask for; None for the extractive (no-LLM) mode."""
    if settings.llm == "extractive":
        return None
    if settings.llm == "openai":
        return _openai(settings)
    return _llamacpp(settings)


def describe(settings: Settings) -> str:
    if settings.llm == "extractive":
        return "extractive (no LLM: best sentences of the retrieved passages)"
    if settings.llm == "openai":
        return f"openai-compatible {settings.openai_model or '?'} at {settings.openai_base_url or '?'}"
    return f"llama.cpp {settings.model}"


def _llamacpp(settings: Settings) -> BaseChatModel:
    path = gguf_path(settings)  # verifies the SHA-256 of a packaged model
    key = ("llamacpp", str(path), settings.n_ctx, settings.n_threads, settings.max_tokens,
           settings.temperature)
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        try:
            import llama_cpp  # noqa: F401
            from langchain_community.chat_models import ChatLlamaCpp
        except ImportError:
            raise LLMUnavailableError(
                "llama-cpp-python is not installed.",
                "Run `make setup` (it compiles it once), or set SCRUMBOT_LLM=openai or extractive.",
            ) from None
        try:
            model = ChatLlamaCpp(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_threads=settings.n_threads,
                n_batch=512,
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                repeat_penalty=1.0,  # grounded answers should repeat the passages' words
                verbose=False,
            )
        except ValueError as err:
            raise ModelError(f"llama.cpp could not load {path}: {err}",
                             "Run `scrumbot models fetch` to assemble the model again.") from err
        _loaded[key] = model
        return model


def _openai(settings: Settings) -> BaseChatModel:
    if not settings.openai_base_url or not settings.openai_model:
        raise LLMUnavailableError(
            "SCRUMBOT_LLM=openai needs a server and a model name.",
            "Set SCRUMBOT_OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1) and SCRUMBOT_OPENAI_MODEL.",
        )
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise LLMUnavailableError("langchain-openai is not installed.",
                                  "Run `pip install langchain-openai`.") from None
    return ChatOpenAI(
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        api_key=settings.openai_api_key or "not-needed",
        timeout=settings.request_timeout,
        max_retries=1,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
    )
