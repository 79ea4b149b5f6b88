"""The store: one object holding the repositories of one database (claims, tracking,
the journal, coordination, the read models), built once and passed explicitly."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from watchdog.storage.claims import Claims
from watchdog.storage.coordination import Coordination
from watchdog.storage.database import DatabaseGone, file_identity, schema_revision, sqlite_path
from watchdog.storage.journal import Journal
from watchdog.storage.reads import Reads
from watchdog.storage.tracking import Tracking


class Store:
    """The repositories of one database; each call is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.claims = Claims(engine)
        self.tracking = Tracking(engine)
        self.coord = Coordination(engine)
        self.journal = Journal(engine, self.coord)
        self.reads = Reads(engine)
        self._file = sqlite_path(engine.url.render_as_string())
        self._identity = file_identity(self._file)

    def check_file(self) -> None:
        """A SQLite file deleted or replaced under the daemon (``rm``, a restore, a
        ``track`` that then created a new one) is noticed, not written to in vain."""
        if self._file is None or self._identity is None:
            return
        now = file_identity(self._file)
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise DatabaseGone(
                f"database file {self._file} was {what} while the daemon ran; restart it"
            )

    async def ready(self) -> str | None:
        """None when the database answers and the schema is at head, else why not."""
        try:
            self.check_file()
        except DatabaseGone as exc:
            return str(exc)
        try:
            current, head = await schema_revision(self.engine)
        except Exception as exc:  # any driver's way of saying the database is not there
            return "database unreachable: " + " ".join(str(exc).split())[:200]
        if current != head:
            return f"schema at {current or 'nothing'}, head is {head}"
        return None
