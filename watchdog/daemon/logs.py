"""structlog setup: JSON lines off a TTY, console on one; stdlib loggers routed through
the same chain; secrets (known key values, Bearer tokens, secret-named fields) masked."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

MASK = "[redacted]"
_SECRET_KEY = re.compile(r"(?i)api[_-]?key|authorization|token|secret|password|cookie")
_BEARER = re.compile(r"(?i)bearer\s+[^\s\"']+")


def _is_secret_key(key: Any) -> bool:
    # "api_key_env" names a variable, it is not a key.
    return isinstance(key, str) and key != "api_key_env" and bool(_SECRET_KEY.search(key))


class Redactor:
    """The structlog processor that masks secrets: known values (API keys, webhook URLs,
    handed in by whoever reads them), Bearer tokens and secret-named fields. One per
    ``configure``: nothing is remembered between configurations."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for value in secrets:
            self.add(value)

    def add(self, value: str) -> None:
        """Mask this exact value wherever it would appear in a log line."""
        if len(value) >= 4:
            self._secrets.add(value)

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            event[key] = MASK if _is_secret_key(key) else self._scrub(value)
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, MASK)
            return _BEARER.sub("Bearer " + MASK, value)
        if isinstance(value, dict):
            return {k: MASK if _is_secret_key(k) else self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


HANDLER = "batch-watchdog"


def reset() -> None:
    """Undo ``configure``: structlog's defaults back, our handler gone (so that nothing
    of one configuration outlives it, e.g. from one test to the next)."""
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER]:
        root.removeHandler(handler)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> Redactor:
    """Set up structlog and the stdlib root logger for the whole process (replacing any
    earlier setup); returns the redactor to hand the secrets it must mask."""
    stream = stream or sys.stderr
    redact = Redactor()
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, redact],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
            if not console
            else structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name(HANDLER)
    logging.basicConfig(handlers=[handler], level=level.upper(), force=True)
    for noisy in ("apscheduler", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        # Drop lines below the level before any work is done on them.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return redact
