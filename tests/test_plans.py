"""Ticks cost what is due, not what is history: every statement a real tick runs (and
the `events` queries) is EXPLAINed on both databases, full of finished batches and old
events, and none may scan `batch_events` or the finished batches (nor walk them
through the status index)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from tests.conftest import Harness
from tests.test_engine import COST_CAP
from watchdog.core.models import TERMINAL
from watchdog.storage.journal import EventFilter
from watchdog.storage.tables import batch_events, batches

FINISHED, ACTIVE, EVENTS = 3000, 40, 20_000


async def history(h: Harness) -> None:
    """Much history, little work: finished batches and their events, a few running."""
    statuses = sorted(TERMINAL)
    now = h.clock.now()
    async with h.store.engine.begin() as conn:
        await conn.execute(
            batches.insert(),
            [
                {
                    "provider": "sim",
                    "batch_id": f"old_{i}",
                    "status": statuses[i % 4],
                    # Ended over the last two days, as a busy account's have.
                    "created_at": now - timedelta(minutes=i + 60),
                    "finished_at": now - timedelta(minutes=i),
                }
                for i in range(FINISHED)
            ],
        )
        # Through the typed table, not raw SQL: sqlite3's default datetime adapter is
        # deprecated (Python 3.12) and no path of ours leans on it.
        await conn.execute(
            batch_events.insert(),
            [
                {
                    "at": now - timedelta(minutes=i % 600),
                    "provider": "sim",
                    "batch_id": f"old_{i % FINISHED}",
                    "kind": "counts_changed" if i % 3 else "cancel_requested",
                }
                for i in range(EVENTS)
            ],
        )
        # PostgreSQL's autovacuum keeps statistics; the daemon never runs SQLite's
        # ANALYZE, whose planner then goes by the indexes alone.
        if h.store.engine.dialect.name != "sqlite":
            await conn.execute(text("ANALYZE"))


def capture(h: Harness) -> list[tuple[str, Any]]:
    """The statements the store sends, with their parameters (the first row of a batch)."""
    seen: list[tuple[str, Any]] = []

    def record(
        conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if re.match(r"\s*(SELECT|UPDATE|DELETE|WITH)", statement, re.I):
            seen.append((statement, params[0] if many and params else params))

    event.listen(h.store.engine.sync_engine, "before_cursor_execute", record)
    return seen


SCANS = re.compile(r"SCAN (batch_events|batches)\b(?! USING (COVERING )?INDEX ix_batches_due)")


async def plans(h: Harness, statements: list[tuple[str, Any]]) -> dict[str, str]:
    """Each statement's plan, with sequential scans discouraged on PostgreSQL (so that a
    scan in the plan means no index could serve it)."""
    found = {}
    sqlite = h.store.engine.dialect.name == "sqlite"
    async with h.store.engine.connect() as conn:
        if not sqlite:
            await conn.exec_driver_sql("SET enable_seqscan = off")
        for statement, params in statements:
            explain = ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement
            rows = (await conn.exec_driver_sql(explain, params)).all()
            found[statement] = "\n".join(str(r[-1] if sqlite else r[0]) for r in rows)
    return found


# The status index holds every finished batch under four keys: a search of it is a scan
# of the history by another name.
BY_STATUS = re.compile(r"(USING INDEX|using|on) ix_batches_status\b")


def full_scans(plan: str) -> list[str]:
    seq = re.findall(r"Seq Scan on (batch_events|batches)", plan)
    return seq + [m.group(0) for m in (*SCANS.finditer(plan), *BY_STATUS.finditer(plan))]


async def test_no_tick_statement_scans_history(harness: Harness) -> None:
    h = harness
    budget = {"name": "all-daily", "limit_usd": 1000, "window": "day", "action": "cancel"}
    # Discovery's list pass and the budgets' assessment run every statement of theirs.
    h.configure(policies=COST_CAP, discover=True, budgets=[budget])
    assert h.engine is not None
    h.engine.refresher.bulk_threshold = 1  # the bulk refresh's queries too
    await history(h)
    for i in range(ACTIVE):
        h.sim.simulator.add(f"batch_{i}", total=100, rate=1)
        await h.track(f"batch_{i}")
    statements = capture(h)
    await h.tick()
    await h.tick(advance=120)
    await h.store.claims.next_due(h.clock.now())
    # The status page's table, whatever the history.
    await h.store.reads.some_batches(10, h.clock.now() - timedelta(days=14))
    # The audit log's reads and retention: an index each, whatever the history.
    await h.store.journal.list_events("old_7")
    now = h.clock.now()
    recent = EventFilter(kinds=("cancel_requested",), since=now - timedelta(hours=1), limit=5)
    assert [e async for e in h.store.journal.stream_events(recent)]
    await h.store.journal.prune_events("counts_changed", now - timedelta(hours=8), 100)
    tick = {s for s, _ in statements}
    assert any("lease_owner" in s for s in tick)  # the claim was seen
    bad = {s: p for s, p in (await plans(h, statements)).items() if full_scans(p)}
    assert not bad, "\n\n".join(f"{s}\n→ {p}" for s, p in bad.items())
