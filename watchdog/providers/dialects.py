"""The Batch API kinds (``providers.NAME.api``): how each one is addressed (paths, auth,
query parameters, list paging) and how its batch object maps onto the OpenAI shape the
engine judges — both ways, the simulator serving each dialect from the same
progression. What a kind cannot tell (no usage, no deadline) is declared here. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from watchdog.core.durations import parse_time
from watchdog.core.models import TERMINAL

AZURE_API_VERSION = "2024-10-21"  # the GA version whose Batch API this speaks
AZURE_V1 = "v1"  # Azure's v1 data plane: {endpoint}/openai/v1/batches, no api-version
ANTHROPIC_VERSION = "2026-10-21"  # anthropic-version: what the official SDK sends today
Auth = Literal["bearer", "api-key", "x-api-key"]

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
# Together's: its spec's six, and the older SDK's CANCELING (both spellings taken).
TOGETHER = {
    "VALIDATING": "validating",
    "IN_PROGRESS": "in_progress",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "EXPIRED": "expired",
    "CANCELLED": "cancelled",
    "CANCELING": "cancelling",
    "CANCELLING": "cancelling",
}
# What the simulator serves as Together: only the spec's statuses (no finalizing, no
# cancelling: a cancel shows as CANCELLED at once).
TO_TOGETHER = {
    "validating": "VALIDATING",
    "in_progress": "IN_PROGRESS",
    "finalizing": "IN_PROGRESS",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "expired": "EXPIRED",
    "cancelling": "CANCELLED",
    "cancelled": "CANCELLED",
}
ANTHROPIC = {"in_progress": "in_progress", "canceling": "cancelling", "cancelling": "cancelling"}


@dataclass(frozen=True, slots=True)
class Dialect:
    """One Batch API dialect."""

    name: str
    batches: str  # the collection's path under base_url
    auth: Auth  # how the key is sent, unless providers.NAME.auth says otherwise
    version: str | None = None  # the API version sent, unless api_version says otherwise
    paging: str = "cursor"  # "cursor" (after=last id) | "page" (page, page_size) | "none"
    after: str = "after"  # the cursor's query parameter
    usage: bool = True  # the batch object carries usage: cost can be known
    deadline: bool = True  # expires_at is a hard deadline
    counts: str = "live"  # "live" | "progress" (a percentage) | "at_end" (move when it ends)
    refuses: int = 409  # the answer to a cancel of a finished batch
    files: str | None = "files"  # input files at {files}/{id}/content; None: no such API

    def headers(
        self, key: str, auth: Auth | None = None, version: str | None = None
    ) -> dict[str, str]:
        """The request headers that carry the key (and Anthropic's version)."""
        out = (
            {"anthropic-version": version or self.version or ""} if self.name == "anthropic" else {}
        )
        if not key:
            return out
        how = auth or self.auth
        if how == "api-key":
            return out | {"api-key": key}
        if how == "x-api-key":
            return out | {"x-api-key": key}
        return out | {"Authorization": f"Bearer {key}"}

    def params(self, version: str | None = None) -> dict[str, str]:
        """The query parameters of every call: Azure's api-version (none on its v1)."""
        if self.name != "azure":
            return {}
        chosen = version or self.version or AZURE_API_VERSION
        return {} if chosen == AZURE_V1 else {"api-version": chosen}

    def cannot(self, *, estimates: bool = True) -> dict[str, str]:
        """Policy conditions that never hold on this kind (its input files not read when
        ``estimates`` is off), and why."""
        out: dict[str, str] = {}
        if self.files is None or not estimates:
            why = "estimate: false" if self.files else f"{self.name} serves no input files"
            out |= {"estimated_cost_usd_above": why, "estimated_requests_above": why}
        if not self.usage:
            why = f"no usage on a {self.name} batch: cost is unknown"
            out |= {"cost_usd_above": why, "projected_cost_usd_above": why}
        if not self.deadline:
            why = f"{self.name} does not expire batches at expires_at"
            out |= {"expires_within": why, "eta_after_expiry": why}
        if self.counts != "live":
            why = {
                "progress": f"{self.name} gives a progress percentage, no per-request counts",
                "at_end": f"{self.name}'s request counts are known only when the batch ends",
            }[self.counts]
            out |= {"failure_ratio_above": why}
            if self.counts == "at_end":
                out |= {name: why for name in ("progress_below", "stalled_for", "eta_after_expiry")}
        return out


# The ``api:`` a provider may name (the config's schema); each is a key of DIALECTS.
Api = Literal["openai", "azure", "groq", "mistral", "together", "anthropic"]

DIALECTS: Mapping[str, Dialect] = {
    "openai": Dialect("openai", "batches", "bearer"),
    "azure": Dialect("azure", "batches", "api-key", version=AZURE_API_VERSION, deadline=False),
    # Groq's list takes no limit or cursor and answers every batch at once.
    "groq": Dialect("groq", "batches", "bearer", paging="none", usage=False),
    "mistral": Dialect("mistral", "batch/jobs", "bearer", paging="page", usage=False),
    "together": Dialect(
        "together", "batches", "bearer", paging="none", usage=False, counts="progress",
        refuses=400,
    ),
    "anthropic": Dialect(
        "anthropic", "messages/batches", "bearer", version=ANTHROPIC_VERSION, after="after_id",
        usage=False, counts="at_end", files=None,
    ),
}  # fmt: skip


def authorized(kind: Dialect, headers: Mapping[str, str], key: str) -> bool:
    """Whether a request carries ``key`` in a way the kind's real API accepts (the
    simulator's check): Bearer everywhere; Azure's api-key; Anthropic's x-api-key, and
    its anthropic-version header, which that API requires."""
    if kind.name == "anthropic" and not headers.get("anthropic-version"):
        return False
    given = {"bearer": headers.get("Authorization") == f"Bearer {key}"}
    given["api-key"] = kind.name == "azure" and headers.get("api-key") == key
    given["x-api-key"] = kind.name == "anthropic" and headers.get("x-api-key") == key
    return any(given.values())


def inward(kind: Dialect, raw: Any) -> Any:
    """A batch object of ``kind`` as the OpenAI-shaped mapping the models validate
    (unknown statuses pass through; what the kind cannot tell is left out)."""
    if not isinstance(raw, dict):
        return raw
    if kind.name == "mistral":
        return _from_mistral(raw)
    if kind.name == "together":
        return _from_together(raw.get("job", raw) if isinstance(raw.get("job"), dict) else raw)
    if kind.name == "anthropic":
        return _from_anthropic(raw)
    if not kind.deadline:
        return {**raw, "expires_at": None}
    if not kind.usage:
        return {k: v for k, v in raw.items() if k != "usage"}
    return raw


def inward_page(kind: Dialect, raw: Any, page: int = 0, size: int = 100) -> Any:
    """A list answer of ``kind`` as an OpenAI-shaped page (``has_more`` from the page
    size for page-numbered lists; a bare array, Together's, is one page, newest first)."""
    if kind.paging == "none":  # every batch at once: Together's bare array, Groq's list
        items = raw if isinstance(raw, list) else raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(items, list):
            return raw
        data = sorted((inward(kind, i) for i in items), key=_newest_first)
        return {"object": "list", "data": data, "has_more": False}
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        return raw
    data = [inward(kind, item) for item in raw["data"]]
    if kind.paging == "page":
        total = raw.get("total")
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
        "input_file_id": _one_file(raw.get("input_files")),
    }


def _one_file(files: Any) -> str | None:
    """Mistral's input files: one is the batch's input file; several are not read (an
    estimate of one part would pass for the whole)."""
    if isinstance(files, list) and len(files) == 1 and isinstance(files[0], str):
        return files[0]
    return None


def outward(kind: Dialect, wire: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped batch (the simulator's) as ``kind`` serves it."""
    if kind.name == "together":
        return _to_together(wire)
    if kind.name == "anthropic":
        return _to_anthropic(wire)
    if kind.name == "mistral":
        return _to_mistral(wire)
    out = dict(wire)
    if not kind.usage:
        out.pop("usage", None)
        out.pop("model", None)
    return out


def _to_mistral(wire: Mapping[str, Any]) -> dict[str, Any]:
    counts = wire.get("request_counts") or {}
    done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
    return {
        "id": wire["id"],
        "object": "batch",
        "input_files": [wire["input_file_id"]] if wire.get("input_file_id") else [],
        "status": TO_MISTRAL.get(wire["status"], wire["status"]),
        "model": wire.get("model"),
        "agent_id": None,
        "endpoint": "/v1/chat/completions",
        "metadata": wire.get("metadata"),
        "output_file": wire.get("output_file_id"),
        "error_file": None,
        "outputs": None,
        "created_at": wire.get("created_at"),
        "started_at": wire.get("in_progress_at"),
        "completed_at": wire.get(f"{wire['status']}_at") if wire["status"] in TERMINAL else None,
        "total_requests": counts.get("total") or 0,
        "completed_requests": done,
        "succeeded_requests": counts.get("completed") or 0,
        "failed_requests": counts.get("failed") or 0,
        "errors": [],
    }


def _newest_first(item: Any) -> tuple[float, str]:
    created = item.get("created_at") if isinstance(item, dict) else None
    return (-(created if isinstance(created, int | float) else 0), str(item.get("id", "")))


def _unix(text: Any) -> int | None:
    """An ISO 8601 / RFC 3339 time as Unix seconds, UTC when it names no offset (None
    when absent or unreadable, as the wire bounds then judge the batch without it)."""
    if not isinstance(text, str):
        return None
    try:
        return int(parse_time(text).timestamp())
    except ValueError:
        return None


def _iso(stamp: Any) -> str | None:
    if not isinstance(stamp, int | float):
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


def _from_together(raw: Mapping[str, Any]) -> dict[str, Any]:
    """UPPERCASE statuses, ISO times, a progress percentage instead of counts: taken as
    a fraction of 100 requests (no failures known)."""
    status, progress = raw.get("status"), raw.get("progress")
    counts = None
    if isinstance(progress, int | float) and 0 <= progress <= 100:
        counts = {"total": 100, "completed": int(progress), "failed": 0}
    return {
        "id": raw.get("id"),
        "object": "batch",
        "status": TOGETHER.get(status, status) if isinstance(status, str) else status,
        "created_at": _unix(raw.get("created_at")),
        "expires_at": _unix(raw.get("job_deadline")),
        "completed_at": _unix(raw.get("completed_at")),
        "model": raw.get("model_id"),
        "endpoint": raw.get("endpoint"),
        "request_counts": counts,
        "input_file_id": raw.get("input_file_id"),
    }


def _to_together(wire: Mapping[str, Any]) -> dict[str, Any]:
    """Together's spec makes nothing nullable: what is not known is left out."""
    counts = wire.get("request_counts") or {}
    total = counts.get("total") or 0
    done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
    job = {
        "id": wire["id"],
        "user_id": "user-sim",
        "input_file_id": wire.get("input_file_id"),
        "file_size_bytes": 1024,
        "status": TO_TOGETHER.get(wire["status"], str(wire["status"]).upper()),
        "job_deadline": _iso(wire.get("expires_at")),
        "created_at": _iso(wire.get("created_at")),
        "completed_at": _iso(wire.get("completed_at")),
        "endpoint": wire.get("endpoint"),
        "progress": round(100 * done / total, 1) if total else 0.0,
        "model_id": wire.get("model"),
        "output_file_id": wire.get("output_file_id"),
    }
    return {k: v for k, v in job.items() if v is not None}


def _from_anthropic(raw: Mapping[str, Any]) -> dict[str, Any]:
    """processing_status in_progress / canceling / ended; the counts by outcome, which
    move only when the batch ends: before that they say nothing of its progress, so
    none are given (progress and failure conditions stay unknown, never 0 %)."""
    counts = raw.get("request_counts")
    status = raw.get("processing_status")
    mapped, request_counts = status, None
    if isinstance(counts, dict):
        n = {
            k: counts.get(k) or 0
            for k in ("processing", "succeeded", "errored", "canceled", "expired")
        }
        request_counts = {"total": sum(n.values()), "completed": n["succeeded"],
                          "failed": n["errored"] + n["expired"]}  # fmt: skip
        if status == "ended":
            # As OpenAI says it: a batch that ran out of time is expired, results or not.
            mapped = "completed"
            if n["expired"]:
                mapped = "expired"
            if raw.get("cancel_initiated_at") or n["canceled"]:
                mapped = "cancelled"
        else:
            request_counts = None
    if isinstance(mapped, str) and mapped in ANTHROPIC:
        mapped = ANTHROPIC[mapped]
    return {
        "id": raw.get("id"),
        "object": "batch",
        "status": mapped,
        "created_at": _unix(raw.get("created_at")),
        "expires_at": _unix(raw.get("expires_at")),
        "cancelling_at": _unix(raw.get("cancel_initiated_at")),
        "request_counts": request_counts,
    }


def _to_anthropic(wire: Mapping[str, Any]) -> dict[str, Any]:
    counts = wire.get("request_counts") or {}
    total, status = counts.get("total") or 0, wire["status"]
    ended = status in TERMINAL
    done, failed = counts.get("completed") or 0, counts.get("failed") or 0
    left = max(total - done - failed, 0)
    n = {"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if ended:
        n = {"processing": 0, "succeeded": done, "errored": failed,
             "canceled": left if status == "cancelled" else 0,
             "expired": left if status == "expired" else 0}  # fmt: skip
    processing = "ended" if ended else "canceling" if status == "cancelling" else "in_progress"
    return {
        "id": wire["id"],
        "type": "message_batch",
        "processing_status": processing,
        "request_counts": n,
        "created_at": _iso(wire.get("created_at")),
        "expires_at": _iso(wire.get("expires_at")),
        "ended_at": _iso(wire.get(f"{status}_at")) if ended else None,
        "cancel_initiated_at": _iso(wire.get("cancelling_at")),
        "archived_at": None,
        "results_url": None,
    }
