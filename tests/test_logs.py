"""Log redaction: known keys, bearer tokens and secret-named fields never reach a line."""

import io
import json
import logging

import structlog

from watchdog.daemon import logs


def test_json_lines_are_redacted() -> None:
    """A known key in a message, a Bearer header and an api_key field are all masked."""
    stream = io.StringIO()
    redact = logs.configure("info", "json", stream)
    redact.add("sk-live-abcdef123456")
    log = structlog.get_logger("t")
    log.info(
        "poll_failed",
        error="rejected sk-live-abcdef123456",
        api_key="sk-other",
        headers={"Authorization": "Bearer zzz"},
        api_key_env="DEEPINFRA_TOKEN",
    )
    logging.getLogger("aiohttp.client").warning("sent Authorization: Bearer sk-third-party")
    text = stream.getvalue()
    assert "sk-live-abcdef123456" not in text and "sk-other" not in text
    assert "zzz" not in text and "sk-third-party" not in text
    first = json.loads(text.splitlines()[0])
    assert first["event"] == "poll_failed" and first["api_key_env"] == "DEEPINFRA_TOKEN"
    assert first["level"] == "info" and "timestamp" in first


def test_tracebacks_render_no_locals() -> None:
    """An exception logged with its traceback shows no local variables (a key in one)."""
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    log = structlog.get_logger("t")

    def fail(api_token: str) -> None:
        header = {"Authorization": f"Bearer {api_token}"}
        raise RuntimeError(f"failed with {len(header)} header")

    try:
        fail("sk-local-0123456789")
    except RuntimeError:
        log.exception("poll_crashed")
    text = stream.getvalue()
    assert "poll_crashed" in text and "RuntimeError" in text
    assert "sk-local-0123456789" not in text
