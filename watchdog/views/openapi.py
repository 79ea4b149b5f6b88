"""The OpenAPI 3.1 document of the JSON API (``/api/v1/openapi.json``): its routes,
their parameters and answers, and the bearer tokens it takes. Pure: a dict."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
TIME = {"type": "string", "format": "date-time"}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}  # fmt: skip


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


def _answers(schema: dict[str, Any], description: str) -> dict[str, Any]:
    errors = {
        "400": "a parameter is wrong (the error says which)",
        "401": "no token, or an unknown one (off loopback every read needs one)",
        "503": "the database did not answer",
    }
    found = {"200": {"description": description,
                     "content": {"application/json": {"schema": schema}}}}  # fmt: skip
    for code, why in errors.items():
        found[code] = {"description": why, "content": {"application/json": {"schema": ERROR}}}
    return found


def _paths() -> dict[str, Any]:
    limit = _query("limit", "at most this many (default 100)", type="integer", minimum=1)
    return {
        "/batches": {"get": {
            "summary": "Tracked batches in key order, a page at a time",
            "parameters": [
                _query("provider", "only this provider's"),
                _query("status", "only batches in this status"),
                _query("label", "KEY=VALUE: only batches with this label"),
                _query("after", "PROVIDER/BATCH_ID: the previous page's next"), limit,
            ],
            "responses": _answers({"type": "object", "required": ["batches", "next"],
                                   "properties": {
                                       "batches": {"type": "array",
                                                   "items": {"$ref": "#/components/schemas/Batch"}},
                                       "next": {"type": ["string", "null"]}}},
                                  "a page; next is null on the last"),
        }},
        "/batches/{provider}/{batch_id}": {"get": {
            "summary": "One batch: its row, its events, and what its next tick will do",
            "parameters": [_path("provider", "the provider's name in the config"),
                           _path("batch_id", "the provider's batch id")],
            "responses": _answers({"type": "object",
                                   "required": ["batch", "events", "explanation"],
                                   "properties": {
                                       "batch": {"$ref": "#/components/schemas/Batch"},
                                       "events": {"type": "array",
                                                  "items": {"$ref": "#/components/schemas/Event"}},
                                       "explanation": {"type": "object",
                                                       "description": "as explain --json"}}},
                                  "the batch") | {"404": {"description": "not tracked",
                                                          "content": {"application/json": {
                                                              "schema": ERROR}}}},
        }},
    }  # fmt: skip


def _log_paths() -> dict[str, Any]:
    limit = _query("limit", "at most this many (default 100)", type="integer", minimum=1)
    return {
        "/events": {"get": {
            "summary": "The audit log, oldest first",
            "parameters": [
                _query("batch_id", "one batch's"), _query("provider", "one provider's"),
                _query("kind", "an event kind (repeatable)"),
                _query("since", "a duration ago (7d) or an ISO 8601 time"),
                _query("until", "a duration ago or an ISO 8601 time"), limit,
            ],
            "responses": _answers({"type": "object", "required": ["events"],
                                   "properties": {"events": {
                                       "type": "array",
                                       "items": {"$ref": "#/components/schemas/Event"}}}},
                                  "the newest limit events that match, oldest first"),
        }},
        "/budgets": {"get": {
            "summary": "Each budget group as the last tick assessed it",
            "responses": _answers({"type": "object", "required": ["budgets"],
                                   "properties": {"budgets": {"type": "array",
                                                              "items": {"type": "object"}}}},
                                  "as budgets --json"),
        }},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": _answers({"type": "object"}, "the OpenAPI document"),
        }},
    }  # fmt: skip


def _write(
    summary: str, extra: dict[str, Any] | None = None, *, keyed: bool = True, answer: str = "done"
) -> dict[str, Any]:
    """An operator's write: a JSON body with a reason (and ``extra`` fields)."""
    body = {"type": "object", "required": ["reason", *(extra or {})],
            "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500}}
            | (extra or {})}  # fmt: skip
    found: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": _answers({"type": "object"}, answer) | {
            "403": {"description": "a viewer's token: writes need an operator's",
                    "content": {"application/json": {"schema": ERROR}}}},
    }  # fmt: skip
    if keyed:
        found["parameters"] = [_path("provider", "the provider's name in the config"),
                               _path("batch_id", "the provider's batch id")]  # fmt: skip
        found["responses"]["404"] = {
            "description": "not tracked",
            "content": {"application/json": {"schema": ERROR}},
        }
    return {"post": found}


def _writes() -> dict[str, Any]:
    track = _write("Track a batch (201; 200 when it is tracked already)",
                   {"provider": {"type": "string"}, "batch_id": {"type": "string"}},
                   keyed=False, answer="tracked")  # fmt: skip
    track["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "labels"
    ] = {"type": "object", "additionalProperties": {"type": "string"}}
    prefix = "/batches/{provider}/{batch_id}"
    return {
        "/batches": track,
        f"{prefix}/untrack": _write("Stop tracking a batch (its events stay)"),
        f"{prefix}/exempt": _write("Never cancel a batch for a while",
                                   {"for": {"type": "string", "description": "e.g. 2h"}}),
        f"{prefix}/unexempt": _write("Lift a silence"),
        f"{prefix}/cancel": _write(
            "Cancel a batch: queued (202) for the next tick, which plans it as a policy's "
            "cancel (dry run, exemptions, the limits, once only)", answer="queued"),
        "/resume": _write("End a safety trip", keyed=False, answer="whether one was in force"),
    }  # fmt: skip


def _schemas() -> dict[str, Any]:
    text, number, count = (
        {"type": ["string", "null"]},
        {"type": ["number", "null"]},
        {"type": ["object", "null"]},
    )
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Batch": {"type": "object", "required": ["id", "provider", "status"],
                  "description": "as list --json",
                  "properties": {"id": {"type": "string"}, "provider": {"type": "string"},
                                 "status": text, "model": text, "cost_usd": number,
                                 "request_counts": count, "usage": count,
                                 "created_at": text, "expires_at": text,
                                 "metadata": {}, "labels": count,
                                 "next_poll_at": text, "last_error": text}},
        "Event": {"type": "object", "required": ["at", "kind"],
                  "properties": {"at": TIME, "kind": {"type": "string"},
                                 "provider": text, "batch_id": text, "from_status": text,
                                 "to_status": text, "policy": text, "detail": count}},
    }  # fmt: skip


def _merged(reads: dict[str, Any], writes: dict[str, Any]) -> dict[str, Any]:
    return {p: reads.get(p, {}) | writes.get(p, {}) for p in {**reads, **writes}}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "batch-watchdog", "version": "1",
                 "description": "The daemon's JSON API. Off loopback every route needs a "
                                "token (Authorization: Bearer); on loopback reads are open."},
        "servers": [{"url": "/api/v1"}],
        "paths": _merged(_paths() | _log_paths(), _writes()),
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }  # fmt: skip
