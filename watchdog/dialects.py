"""The Batch API kinds (``providers.NAME.api``): how each one is addressed (paths, auth,
query parameters, list paging) and how its batch object maps onto the OpenAI shape the
engine judges — both ways, the simulator serving each dialect from the same
progression. What a kind cannot tell (no usage, no deadline) is declared here. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AZURE_API_VERSION = "2024-10-21"  # the GA version whose Batch API this speaks

# Mistral's job statuses onto OpenAI's, and back (the simulator's).
MISTRAL = {
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILED": "failed",
    "TIMEOUT_EXCEEDED": "expired",
    "CANCELLATION_REQUESTED": "cancelling",
    "CANCELLED": "cancelled",
}
TO_MISTRAL = {v: k for k, v in MISTRAL.items()} | {"finalizing": "RUNNING"}


@dataclass(frozen=True, slots=True)
class Kind:
    """One Batch API dialect."""

    name: str
    batches: str  # the collection's path under base_url
    auth: str  # "bearer" | "api-key" header
    version_param: bool = False  # api-version on every call (Azure)
    paging: str = "cursor"  # "cursor" (after=last id) | "page" (page, page_size)
    usage: bool = True  # the batch object carries usage: cost can be known
    deadline: bool = True  # expires_at is a hard deadline
    cancel_verb: str = "POST"

    def headers(self, key: str) -> dict[str, str]:
        if not key:
            return {}
        if self.auth == "api-key":
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}

    def cannot(self) -> dict[str, str]:
        """Policy conditions that never hold on this kind, and why."""
        out: dict[str, str] = {}
        if not self.usage:
            why = f"no usage on a {self.name} batch: cost is unknown"
            out |= {"cost_usd_above": why, "projected_cost_usd_above": why}
        if not self.deadline:
            why = f"{self.name} does not expire batches at expires_at"
            out |= {"expires_within": why, "eta_after_expiry": why}
        return out


KINDS: Mapping[str, Kind] = {
    "openai": Kind("openai", "batches", "bearer"),
    "azure": Kind("azure", "batches", "api-key", version_param=True, deadline=False),
    "groq": Kind("groq", "batches", "bearer", usage=False),
    "mistral": Kind("mistral", "batch/jobs", "bearer", paging="page", usage=False),
}


def inward(kind: Kind, raw: Any) -> Any:
    """A batch object of ``kind`` as the OpenAI-shaped mapping the models validate
    (unknown statuses pass through; what the kind cannot tell is left out)."""
    if not isinstance(raw, dict):
        return raw
    if kind.name == "mistral":
        return _from_mistral(raw)
    if not kind.deadline:
        return {**raw, "expires_at": None}
    if not kind.usage:
        return {k: v for k, v in raw.items() if k != "usage"}
    return raw


def inward_page(kind: Kind, raw: Any) -> Any:
    """A list answer of ``kind`` as an OpenAI-shaped page (``has_more`` from the page
    size for page-numbered lists)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        return raw
    data = [inward(kind, item) for item in raw["data"]]
    if kind.paging == "page":
        total = raw.get("total")
        page, size = raw.get("_page", 0), raw.get("_page_size", len(data))
        more = isinstance(total, int) and (page + 1) * max(size, 1) < total
        last = data[-1].get("id") if data and isinstance(data[-1], dict) else None
        return {"object": "list", "data": data, "has_more": more, "last_id": last}
    return {**raw, "data": data}


def _from_mistral(raw: Mapping[str, Any]) -> dict[str, Any]:
    status = raw.get("status")
    total = raw.get("total_requests")
    counts = None
    if isinstance(total, int):
        counts = {
            "total": total,
            "completed": raw.get("succeeded_requests") or 0,
            "failed": raw.get("failed_requests") or 0,
        }
    return {
        "id": raw.get("id"),
        "object": "batch",
        "status": MISTRAL.get(status, status) if isinstance(status, str) else status,
        "created_at": raw.get("created_at"),
        "in_progress_at": raw.get("started_at"),
        "completed_at": raw.get("completed_at"),
        "model": raw.get("model"),
        "metadata": raw.get("metadata"),
        "request_counts": counts,
        "endpoint": raw.get("endpoint"),
    }


def outward(kind: Kind, wire: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped batch (the simulator's) as ``kind`` serves it."""
    if kind.name == "mistral":
        counts = wire.get("request_counts") or {}
        done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
        return {
            "id": wire["id"],
            "object": "batch",
            "status": TO_MISTRAL.get(wire["status"], wire["status"]),
            "model": wire.get("model"),
            "endpoint": "/v1/chat/completions",
            "metadata": wire.get("metadata"),
            "created_at": wire.get("created_at"),
            "started_at": wire.get("in_progress_at"),
            "completed_at": wire.get(f"{wire['status']}_at")
            if wire["status"] in ("completed", "failed", "expired", "cancelled")
            else None,
            "total_requests": counts.get("total"),
            "completed_requests": done,
            "succeeded_requests": counts.get("completed"),
            "failed_requests": counts.get("failed"),
            "errors": [],
        }
    out = dict(wire)
    if not kind.usage:
        out.pop("usage", None)
        out.pop("model", None)
    return out
