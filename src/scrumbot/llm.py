"""Chat model factory: llama.cpp (embedded default), any OpenAI-compatible server, or none.

Models load on first use and are kept for the life of the process: loading the 1.5B GGUF
takes seconds and ~1.8 GB, which no request should pay twice."""

from __future__ import annotations

import logging
import threading

from langchain_core.language_models.chat_models import BaseChatModel

from .config import Settings, without_credentials
from .errors import LLMUnavailableError, ModelError
from .models import gguf_path

log = logging.getLogger("scrumbot.llm")
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
        return f"openai-compatible {settings.openai_model or '?'} at {without_credentials(settings.openai_base_url) or '?'}"
    return f"llama.cpp {settings.model}"


def first_token_probabilities(model: BaseChatModel, messages: list, options: dict[str, tuple[str, ...]]
                              ) -> dict[str, float] | None:
    """How likely the model's reply starts with each option ({"yes": ("Yes", "yes"), "no": ...}),
    renormalised over the options; None when the backend cannot tell (no log-probabilities).

    One forward pass, no sampling. With llama.cpp the prompt's tokens are evaluated on the model's
    own context, reusing the cached prefix (the system prompt, and the passages when the answer's
    prompt shares them), so the answer that follows pays only for where the prompts differ."""
    client = getattr(model, "client", None)
    if client is not None and type(client).__name__ == "Llama":
        logits = _llama_next_token_logits(client, messages)
        scores = {name: max(float(logits[t]) for t in _first_tokens(client, words))
                  for name, words in options.items()}
    elif "logprobs" in type(model).model_fields:  # a chat model that can report them (ChatOpenAI)
        scores = _server_logprobs(model, messages, options) if id(model) not in _NO_LOGPROBS else None
        if scores is None:
            # a server that will not give log-probabilities (llama-cpp-python's own, unless
            # started with logits_all) still answers the question: its one-word reply decides
            _NO_LOGPROBS.add(id(model))
            reply = str(model.bind(extra_body={"max_tokens": 3}).invoke(messages).content).strip().lower()
            said = [name for name, words in options.items() if any(reply.startswith(w.lower()) for w in words)]
            return {name: float(name in said[:1]) for name in options} if said else None
    else:
        return None
    import math

    best = max(scores.values())
    if best == float("-inf"):
        return None
    weights = {name: math.exp(v - best) for name, v in scores.items()}
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


_NO_LOGPROBS: set[int] = set()  # chat models whose server refused log-probabilities once


def _server_logprobs(model: BaseChatModel, messages: list, options: dict[str, tuple[str, ...]]
                     ) -> dict[str, float] | None:
    """The options' best log-probabilities among the server's top tokens; None if it gives none."""
    import openai

    try:
        reply = model.bind(logprobs=True, top_logprobs=20, extra_body={"max_tokens": 1}).invoke(messages)
        top = reply.response_metadata["logprobs"]["content"][0]["top_logprobs"]
    except openai.APIStatusError as err:
        if err.status_code >= 500 or err.status_code in (400, 422):  # "logprobs not supported"
            log.info("the OpenAI-compatible server gives no log-probabilities (%s): the judge reads its reply",
                     err.status_code)
            return None
        raise
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    found: dict[str, float] = {}
    for entry in top:  # the same word may come as several tokens ("Yes", " Yes")
        word = entry["token"].strip()
        found[word] = max(found.get(word, float("-inf")), entry["logprob"])
    return {name: max((found[w] for w in words if w in found), default=float("-inf"))
            for name, words in options.items()}


def _llama_next_token_logits(llm, messages: list):
    """The logits of the token after `messages` (chat-formatted as the chat model formats them),
    evaluated on `llm`'s own context so that its prefix cache is reused and kept."""
    import numpy as np
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from llama_cpp import llama_chat_format

    roles = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}
    chat = [{"role": roles[type(m)], "content": m.content} for m in messages]
    template = llm.metadata.get("tokenizer.chat_template")
    if template:
        def text(token: int) -> str:
            return llm._model.token_get_text(token) if token != -1 else ""

        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()),
            stop_token_ids=[llm.token_eos()])
        formatted = formatter(messages=chat)
    else:
        formatted = llama_chat_format.format_chatml(chat)
    tokens = llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)
    # as Llama.generate does: keep the cached tokens this prompt starts with, evaluate the rest
    keep = 0
    for cached, token in zip(llm.input_ids[: llm.n_tokens], tokens[:-1]):
        if cached != token:
            break
        keep += 1
    llm.n_tokens = keep
    llm.eval(tokens[keep:])
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def _first_tokens(llm, words: tuple[str, ...]) -> set[int]:
    return {llm.tokenize(w.encode("utf-8"), add_bos=False, special=False)[0] for w in words}


def llama_build() -> dict:
    """Which llama-cpp-python build answers, so a slow or fallback build is visible: the step the
    bootstrap chose and why (its record in the venv, scripts/llama_build.py), and llama.cpp's
    own system-info line (the CPU features it was compiled to use)."""
    import json
    import sys
    from pathlib import Path

    try:
        import llama_cpp
    except ImportError:
        return {"build": "not installed", "because": "", "system_info": ""}
    info = llama_cpp.llama_print_system_info()
    info = " ".join((info.decode() if isinstance(info, bytes) else str(info)).split())
    try:
        record = json.loads((Path(sys.prefix) / "scrumbot-llama-build.json").read_text())
    except (OSError, ValueError):
        record = {}
    return {"build": record.get("step", "not chosen by the bootstrap"), "because": record.get("because", ""),
            "system_info": info}


def _llamacpp(settings: Settings) -> BaseChatModel:
    path = gguf_path(settings)  # verifies the SHA-256 of a packaged model
    key = ("llamacpp", str(path), settings.n_ctx, settings.n_threads, settings.max_tokens,
           settings.temperature, settings.rope_freq_base)
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
                rope_freq_base=settings.rope_freq_base,  # 0: the GGUF's own (ChatLlamaCpp would pass 10000)
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
        import httpx
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise LLMUnavailableError("langchain-openai is not installed.",
                                  "Run `pip install langchain-openai`.") from None
    # a float would also bound the connect phase by request_timeout: a dead host would hang a
    # minute before saying so
    timeout = httpx.Timeout(settings.request_timeout, connect=settings.connect_timeout)
    check_openai_server(settings, timeout)
    return ChatOpenAI(
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        api_key=settings.openai_api_key or "not-needed",
        timeout=timeout,
        max_retries=1,
        temperature=settings.temperature,
        # langchain-openai sends a max_tokens= as `max_completion_tokens`, which llama.cpp's
        # server ignores (answers then ran to the end of the context); every OpenAI-compatible
        # server reads `max_tokens`
        extra_body={"max_tokens": settings.max_tokens},
    )


def check_openai_server(settings: Settings, timeout) -> None:
    """Ask the server which models it serves (GET /models) before the first question.

    Fails fast and clearly when it is unreachable, refuses the key, or does not serve
    SCRUMBOT_OPENAI_MODEL. The last matters because some servers (llama.cpp's, serving one
    model) answer any model name with the model they have: without this check a typo would
    go unnoticed. Servers without a model list are let through."""
    import httpx

    url = settings.openai_base_url.rstrip("/")
    base = without_credentials(url)  # for the messages
    tried = f"GET {base}/models"
    headers = {"Authorization": f"Bearer {settings.openai_api_key}"} if settings.openai_api_key else {}
    try:
        response = httpx.get(f"{url}/models", headers=headers, timeout=timeout)
    except httpx.TimeoutException as err:
        raise LLMUnavailableError(
            f"The OpenAI-compatible server at {base} did not answer (tried {tried}: "
            f"{type(err).__name__} after {settings.connect_timeout:g}s to connect / "
            f"{settings.request_timeout:g}s to answer).",
            "Check that the server is up and not overloaded; SCRUMBOT_CONNECT_TIMEOUT and "
            "SCRUMBOT_REQUEST_TIMEOUT set how long scrumbot waits.",
        ) from None
    except httpx.HTTPError as err:
        raise LLMUnavailableError(
            f"Could not reach the OpenAI-compatible server at {base} (tried {tried}: "
            f"{type(err).__name__}: {err}).",
            "Start the server, or fix SCRUMBOT_OPENAI_BASE_URL (it usually ends in /v1); "
            "SCRUMBOT_LLM=llamacpp or extractive answer without a server.",
        ) from None
    if response.status_code in (401, 403):
        raise LLMUnavailableError(
            f"The OpenAI-compatible server at {base} refused scrumbot's API key "
            f"({tried}: HTTP {response.status_code}).",
            "Set SCRUMBOT_OPENAI_API_KEY to the key the server expects.",
        )
    if response.status_code != 200:
        return  # no model list here; a wrong name or URL is explained at the first question
    try:
        served = [m["id"] for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return
    if served and settings.openai_model not in served:
        raise LLMUnavailableError(
            f"The OpenAI-compatible server at {base} does not serve the model "
            f"{settings.openai_model!r}; it serves: {', '.join(served)}.",
            "Set SCRUMBOT_OPENAI_MODEL to one of those names.",
        )


def explain_openai_error(err: BaseException, settings: Settings) -> LLMUnavailableError:
    """An error from the OpenAI-compatible server while answering, in words: what was tried,
    what went wrong, what to check."""
    import openai

    base = without_credentials(settings.openai_base_url or "?").rstrip("/")
    tried = f"POST {base}/chat/completions with model {settings.openai_model!r}"
    restart = "Check that the server is running (and see its log), then ask again."
    if isinstance(err, openai.APITimeoutError):
        what = f"did not answer within {settings.request_timeout:g}s"
        hint = "The server may be overloaded or frozen. SCRUMBOT_REQUEST_TIMEOUT sets how long scrumbot waits."
    elif isinstance(err, openai.APIConnectionError):
        what = "could not be reached, or the connection was lost mid-answer"
        hint = restart
    elif isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
        what = f"refused the API key (HTTP {err.status_code})"
        hint = "Set SCRUMBOT_OPENAI_API_KEY to the key the server expects."
    elif isinstance(err, openai.NotFoundError):
        what = f"has no such model or path (HTTP 404: {err.message})"
        hint = "Check SCRUMBOT_OPENAI_MODEL and SCRUMBOT_OPENAI_BASE_URL (it usually ends in /v1)."
    elif isinstance(err, openai.APIStatusError):
        what = f"answered HTTP {err.status_code}: {err.message}"
        hint = restart
    else:
        what = f"failed: {type(err).__name__}: {err}"
        hint = restart
    return LLMUnavailableError(f"The OpenAI-compatible server at {base} {what} (tried {tried}).", hint)
