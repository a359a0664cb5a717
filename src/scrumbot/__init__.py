"""scrumbot: answers questions about course material, grounded in that material.

    from scrumbot import answer
    a = answer("Which cert suits a business analyst?")
    print(a.text, a.refused, [s.source for s in a.sources])

Public API only. Names are imported on first use (PEP 562), so `scrumbot --help` stays
instant and nothing heavy loads until it is needed."""

__version__ = "0.1.0"

_EXPORTS = {
    "answer": "api", "stream": "api", "Answer": "api", "Assistant": "api",
    "Settings": "config", "ScrumbotError": "errors", "Source": "retrieve",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'scrumbot' has no attribute {name!r}")


def __dir__():
    return __all__
