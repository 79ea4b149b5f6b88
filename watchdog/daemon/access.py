"""Who may do what over HTTP: named tokens by role (viewer reads, operator writes),
compared in constant time; off loopback nothing answers without one, on loopback reads
are open and writes still need an operator's token."""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

Role = Literal["viewer", "operator"]
ANONYMOUS = "anonymous"  # a read on loopback without a token


@dataclass(frozen=True, slots=True)
class Caller:
    name: str  # the token's name: the actor in the audit log
    role: Role


class Access:
    """The tokens the server knows, and whether it listens off loopback."""

    def __init__(self, tokens: Sequence[tuple[str, Role, str]], *, guarded: bool) -> None:
        self._tokens = [(name, role, value.encode()) for name, role, value in tokens]
        self.guarded = guarded

    def caller(self, request: web.Request, *, write: bool) -> Caller:
        """The caller a request may act as, or the HTTP error that refuses it (401: no
        or an unknown token; 403: a viewer's token for a write)."""
        given = _bearer(request)
        if given is None:
            if write or self.guarded:
                why = "an operator's token" if write else "a token"
                raise _refused(401, f"{why} is required (Authorization: Bearer …)")
            return Caller(ANONYMOUS, "viewer")
        found = self._match(given.encode())
        if found is None:
            raise _refused(401, "unknown token")
        if write and found.role != "operator":
            raise _refused(403, f"token {found.name!r} is a viewer's: writes need an operator's")
        return found

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def named(self, given: str) -> Caller | None:
        """Whose token this is (any role), or None."""
        return self._match(given.encode())

    def _match(self, given: bytes) -> Caller | None:
        """Every token compared in constant time, all of them whatever matched."""
        found = None
        for name, role, value in self._tokens:
            if hmac.compare_digest(given, value) and found is None:
                found = Caller(name, role)
        return found


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    return header.removeprefix("Bearer ").strip() or None


def _refused(status: int, why: str) -> web.HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    error = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    body = json.dumps({"error": why})
    return error(text=body, content_type="application/json", headers=headers)
