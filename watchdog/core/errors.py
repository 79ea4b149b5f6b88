"""How a call to an outside service failed: temporary (worth retrying after a delay)
or permanent (retrying will not help). Pure: the tick judges answers by these types
without importing any HTTP code."""

from __future__ import annotations


class ProviderError(Exception):
    """A failed call; ``status`` is the HTTP status when there was one."""

    temporary = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TemporaryError(ProviderError):
    """Worth retrying after a delay: network trouble, timeouts, 408, 429, 5xx."""

    temporary = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unsent: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        # True when the server certainly did not act on the request (refused connection,
        # 429): only then may a non-idempotent request such as a cancel be sent again.
        self.unsent = unsent


class PermanentError(ProviderError):
    """Retrying will not help: 4xx, or a body that is not what the API promises."""


class NotFound(PermanentError):
    """404: the server does not know this resource (any more)."""


class CancelRefused(PermanentError):
    """400/409 on a cancel: the batch is already terminal. Refresh; never retry."""
