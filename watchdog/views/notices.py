"""What a notification says, per format: ``generic`` (the event as the audit log has it,
and a one-line ``text``), ``slack`` (Block Kit) and ``pagerduty`` (Events API v2, a
batch's alert resolved when it ends); and the generic format's signature. Pure."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from watchdog.core.durations import iso
from watchdog.core.events import Event, Kind
from watchdog.core.models import TERMINAL

SIGNATURE_HEADER = "X-Watchdog-Signature"
TIMESTAMP_HEADER = "X-Watchdog-Timestamp"
# What pages someone (error), what warns, and what only informs.
SEVERITY = {
    Kind.SAFETY_TRIPPED: "error",
    Kind.CANCEL_FAILED: "error",
    Kind.CANCEL_STUCK: "error",
    Kind.BUDGET_EXCEEDED: "error",
    Kind.POLICY_MATCHED: "warning",
    Kind.CANCEL_ABANDONED: "warning",
    Kind.BUDGET_THRESHOLD: "warning",
}


def text(event: Event) -> str:
    """One line: what happened, to which batch, by which policy."""
    where = f"{event.provider}/{event.batch_id}" if event.batch_id else "the daemon"
    change = ""
    if event.from_status or event.to_status:
        change = f" ({event.from_status or '-'} → {event.to_status or '-'})"
    policy = f" by policy {event.policy}" if event.policy else ""
    return f"batch-watchdog: {event.kind} on {where}{policy}{change}"


def link(event: Event, base_url: str | None) -> str | None:
    """Where a person sees the batch (its own page), when the daemon's address is known
    (``notify.base_url``)."""
    if base_url is None or event.batch_id is None or event.provider is None:
        return None
    return f"{base_url.rstrip('/')}/batches/{quote(event.provider)}/{quote(event.batch_id)}"


def as_record(event: Event) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "kind": event.kind,
        "provider": event.provider,
        "batch_id": event.batch_id,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "policy": event.policy,
        "detail": dict(event.detail) if event.detail else None,
    }


def generic(event: Event, base_url: str | None = None) -> dict[str, Any]:
    """Slack's ``text`` and the event as the audit log has it (and its link)."""
    found = {"text": text(event), "event": as_record(event)}
    if (url := link(event, base_url)) is not None:
        found["link"] = url
    return found


def slack(
    event: Event, base_url: str | None = None, facts: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Block Kit: what happened, then the batch, provider, policy, statuses, the batch's
    ``facts`` (model, cost, projection: read when the message is sent) and the figures
    the event carries (the thresholds observed)."""
    fields = [("Batch", event.batch_id), ("Provider", event.provider),
              ("Policy", event.policy), ("Status", _statuses(event))]  # fmt: skip
    fields += [(k.replace("_", " ").capitalize(), _short(v)) for k, v in (facts or {}).items()]
    fields += [(k.replace("_", " "), _short(v)) for k, v in _figures(event.detail).items()]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"batch-watchdog: {event.kind}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text(event))},
         "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_escape(str(v))}"}
                    for k, v in fields if v not in (None, "")][:10]},
    ]  # fmt: skip
    if (url := link(event, base_url)) is not None:
        # A cancel the daemon did not send (a dry run, or held): the page's forms act.
        held = event.kind == Kind.POLICY_MATCHED and (event.detail or {}).get("dry_run")
        label = "Cancel it from its page" if held else "Open the batch"
        button = {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}
        blocks.append({"type": "actions", "elements": [button]})
    return {"text": text(event), "blocks": blocks}


def pagerduty(
    event: Event,
    routing_key: str,
    base_url: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Events API v2: an alert per batch (its dedup key), resolved when the batch ends;
    daemon-wide events (a safety trip) are alerts of their own kind."""
    key = f"batch-watchdog/{event.provider}/{event.batch_id}" if event.batch_id else (
        f"batch-watchdog/{event.kind}")  # fmt: skip
    ended = event.kind == Kind.CANCEL_SETTLED or event.to_status in TERMINAL
    found: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if ended else "trigger",
        "dedup_key": key,
    }
    if not ended:
        found["payload"] = {
            "summary": text(event)[:1024],
            "source": f"batch-watchdog/{event.provider or 'daemon'}",
            "severity": SEVERITY.get(event.kind, "info"),
            "timestamp": iso(event.at),
            "component": event.batch_id or "daemon",
            "group": event.policy or str(event.kind),
            "class": str(event.kind),
            "custom_details": as_record(event) | dict(facts or {}),
        }
    if (url := link(event, base_url)) is not None:
        found["links"] = [{"href": url, "text": "the batch"}]
    return found


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the HMAC-SHA256 of ``TIMESTAMP.BODY`` under the shared secret: a
    receiver recomputes it and refuses an old timestamp (a replay)."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _statuses(event: Event) -> str | None:
    if not (event.from_status or event.to_status):
        return None
    return f"{event.from_status or '-'} → {event.to_status or '-'}"


def _figures(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers and short facts of a detail (observed values first)."""
    detail = dict(detail or {})
    observed = detail.pop("observed", None)
    found = dict(observed) if isinstance(observed, Mapping) else {}
    found |= {k: v for k, v in detail.items() if isinstance(v, int | float | str)}
    return found


def _short(value: Any) -> str:
    return f"{value:,.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _escape(value: str) -> str:
    """Slack's mrkdwn: &, < and > escaped (a batch's text comes from outside)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
