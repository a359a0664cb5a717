"""The errors scrumbot raises on purpose. Each message says what went wrong and what to run next;
the CLI turns them into `click.ClickException`, the UI into `gr.Error`."""


class ScrumbotError(Exception):
    """Base class: a problem the user can fix, described in plain words."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message}\n{hint}" if hint else message)


class ConfigError(ScrumbotError):
    """A setting has a value scrumbot cannot use."""


class IndexMissingError(ScrumbotError):
    """There is no index yet, or it holds no documents."""


class IndexCorruptError(ScrumbotError):
    """The index directory exists but cannot be read as a scrumbot index."""


class EmbedderMismatchError(ScrumbotError):
    """The index was built by another embedder; mixing vectors would give nonsense."""


class ModelError(ScrumbotError):
    """A model file is missing, incomplete or not the file it claims to be."""


class LLMUnavailableError(ScrumbotError):
    """The language model (local or server) could not be reached or loaded."""


class StoreUnavailableError(ScrumbotError):
    """The Chroma server could not be reached."""


class BadQuestionError(ScrumbotError):
    """The question cannot be answered as given (empty, too long, unreadable)."""


class IndexBusyError(ScrumbotError):
    """Another process is writing to the index right now."""


class DiskFullError(ScrumbotError):
    """The disk holding the index has no room left for a write."""
