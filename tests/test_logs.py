"""Log redaction: known keys, bearer tokens and secret-named fields never reach a line."""

import io
import json
import logging

import structlog

from watchdog import logs


def test_json_lines_are_redacted() -> None:
    """A known key in a message, a Bearer header and an api_key field are all masked."""
    stream = io.StringIO()
    logs.configure("info", "json", stream)
    logs.add_secret("sk-live-abcdef123456")
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
