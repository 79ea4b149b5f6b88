"""Estimates within a tick: a polled batch that has none yet starts reading its input
file (a few at once, each bounded in size and time); the tick waits for them at most
``estimate.wait`` in all, and what comes later is kept for the next tick's judgement."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from datetime import datetime

import structlog

from watchdog.core.errors import ProviderError
from watchdog.core.estimates import Estimate, EstimateSettings, Tally
from watchdog.core.events import Event, Kind
from watchdog.core.models import ACTIVE, BatchObject, InvalidBatchId
from watchdog.core.observe import Rules
from watchdog.core.rows import Tracked
from watchdog.daemon.record import Emitter
from watchdog.daemon.scheduler import stopped
from watchdog.providers.client import ProviderClient

log = structlog.get_logger("watchdog.estimate")
Key = tuple[str, str]
Wanted = tuple[Tracked, str, ProviderClient]  # a batch, its input file, its provider
Reading = asyncio.Task[Estimate | None]
QUEUED = 4  # reads started ahead of the free slots, per slot


def _wanted(
    claimed: Sequence[Tracked],
    answers: Sequence[object],
    clients: Mapping[str, ProviderClient],
    rules: Rules,
) -> list[Wanted]:
    """The batches to read an input file for, the validating first (their cancel is
    free), with their file and client."""
    found = []
    for tracked, answer in zip(claimed, answers, strict=True):
        file_id = wants_estimate(tracked, answer, rules)
        client = clients.get(tracked.view.provider)
        if file_id is not None and client is not None:
            found.append(
                (getattr(answer, "status", None) != "validating", tracked, file_id, client)
            )
    found.sort(key=lambda w: w[0])
    return [(tracked, file_id, client) for _, tracked, file_id, client in found]


def wants_estimate(tracked: Tracked, answer: object, rules: Rules) -> str | None:
    """The input file to read for this batch, or None: its provider's files are read,
    it is running, names its file, and has no estimate that needs no more reading."""
    if tracked.view.provider not in rules.estimated or not isinstance(answer, BatchObject):
        return None
    if answer.status not in ACTIVE or not answer.input_file_id:
        return None
    if tracked.estimate is not None and tracked.estimate.settled:
        return None
    return answer.input_file_id


class Estimator:
    """The input files being read, by batch; one per daemon."""

    def __init__(
        self,
        emitter: Emitter,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emitter, self.store = emitter, emitter.store
        self.clock, self.monotonic = clock, monotonic
        self._reading: dict[Key, Reading] = {}
        self._slots: tuple[int, asyncio.Semaphore] | None = None
        self._until = 0.0  # the tick waits for estimates until then (monotonic)

    def begin(self, settings: EstimateSettings) -> None:
        """A tick starts: its share of waiting, and what ended before it forgotten (kept
        in the database by then, where the tick's claims read it)."""
        self._until = self.monotonic() + settings.wait.total_seconds()
        self._reading = {k: t for k, t in self._reading.items() if not t.done()}

    async def attach(
        self,
        claimed: Sequence[Tracked],
        answers: Sequence[object],
        clients: Mapping[str, ProviderClient],
        rules: Rules,
    ) -> list[Tracked]:
        """The claimed batches, each with its estimate where one is known by now: those
        wanting one start reading, and the tick waits for them while its share lasts."""
        waiting = self._queue(_wanted(claimed, answers, clients, rules), rules.estimate)
        left = self._until - self.monotonic()
        if waiting and left > 0:
            await asyncio.wait(waiting, timeout=left)
        return [self._with_estimate(t) for t in claimed]

    def _queue(self, wanted: list[Wanted], settings: EstimateSettings) -> list[Reading]:
        """The reads of these batches, started where none is under way yet, while the
        queue has room (past it, a batch starts at a later poll: a backlog of thousands
        never piles up tasks)."""
        room = settings.concurrency * QUEUED - sum(not t.done() for t in self._reading.values())
        waiting, deferred = [], 0
        for tracked, file_id, client in wanted:
            task = self._reading.get(tracked.key)
            if task is None and room <= 0:
                deferred += 1
                continue
            if task is None:
                room -= 1
                task = self._start(tracked, file_id, client, settings)
            waiting.append(task)
        if deferred:
            log.debug("estimates_deferred", batches=deferred)
        return waiting

    async def close(self) -> None:
        """At shutdown: stop reading (a file cut short is read again by the next start)."""
        await stopped(*self._reading.values())
        self._reading.clear()

    def _with_estimate(self, tracked: Tracked) -> Tracked:
        task = self._reading.get(tracked.key)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return tracked
        found = task.result()
        return tracked if found is None else tracked.copy_with(estimate=found)

    def _start(
        self, tracked: Tracked, file_id: str, client: ProviderClient, settings: EstimateSettings
    ) -> Reading:
        if self._slots is None or self._slots[0] != settings.concurrency:
            self._slots = (settings.concurrency, asyncio.Semaphore(settings.concurrency))
        task = asyncio.create_task(self._estimate(tracked, file_id, client, settings))
        self._reading[tracked.key] = task
        return task

    async def _estimate(
        self, tracked: Tracked, file_id: str, client: ProviderClient, settings: EstimateSettings
    ) -> Estimate | None:
        """Read, keep and say one batch's estimate; None when it could not be kept."""
        assert self._slots is not None
        async with self._slots[1]:
            estimate = await self._read(tracked, file_id, client, settings)
        events = _failure_events(tracked, estimate)
        try:
            kept = await self.store.tracking.set_estimate(tracked.key, estimate, events)
        except Exception as exc:  # the database: the next tick's poll starts it again
            log.warning("estimate_not_kept", batch_id=tracked.view.batch_id,
                        provider=tracked.view.provider, error=str(exc)[:200])  # fmt: skip
            return None
        if kept:
            self.emitter.tell(events)
            _log(tracked, estimate)
            outcome = "made" if not estimate.failed else "failed" if estimate.settled else "retry"
            self.emitter.metrics.estimates.labels(tracked.view.provider, outcome).inc()
        return estimate

    async def _read(
        self, tracked: Tracked, file_id: str, client: ProviderClient, settings: EstimateSettings
    ) -> Estimate:
        """The file's estimate, or why it could not be made (its content never said)."""
        attempts = 1 if tracked.estimate is None else tracked.estimate.attempts + 1
        tally = Tally(settings)
        limit, timeout = int(settings.max_file_bytes), settings.timeout.total_seconds()
        try:
            chunks = client.input_file(file_id, limit=limit, timeout=timeout)
            async with aclosing(chunks):
                async for chunk in chunks:
                    tally.feed(chunk)
        except (ProviderError, InvalidBatchId) as exc:
            temporary = isinstance(exc, ProviderError) and exc.temporary
            status = exc.status if isinstance(exc, ProviderError) else None
            return Estimate(self.clock(), file_id=file_id, error=_why(exc, status),
                            temporary=temporary, attempts=attempts)  # fmt: skip
        except Exception as exc:  # a bug must cost this estimate, never the tick
            log.exception("estimate_crashed", batch_id=tracked.view.batch_id)
            return Estimate(self.clock(), file_id=file_id, error=f"internal error: "
                            f"{type(exc).__name__}", attempts=attempts)  # fmt: skip
        return tally.finish(self.clock(), file_id)


def _why(exc: Exception, status: int | None) -> str:
    text = " ".join(str(exc).split())[:300]
    return text if status is None or text.startswith("HTTP") else f"HTTP {status}: {text}"


def _failure_events(tracked: Tracked, estimate: Estimate) -> list[Event]:
    """One ``estimate_failed`` per batch: when it fails for good (a temporary failure is
    tried again at the next polls, and only its last try is said)."""
    if not estimate.failed or not estimate.settled:
        return []
    detail = {"error": estimate.error, "file_id": estimate.file_id,
              "temporary": estimate.temporary, "attempts": estimate.attempts}  # fmt: skip
    return [Event(estimate.made_at, *tracked.key, Kind.ESTIMATE_FAILED,
                  to_status=tracked.view.status, detail=detail)]  # fmt: skip


def _log(tracked: Tracked, estimate: Estimate) -> None:
    where = {"batch_id": tracked.view.batch_id, "provider": tracked.view.provider}
    if estimate.failed:
        if not estimate.settled:
            log.info("estimate_retry", **where, error=estimate.error, attempts=estimate.attempts)
        return
    log.info("estimate_made", **where, requests=estimate.requests, malformed=estimate.malformed,
             bytes=estimate.bytes, method=estimate.method)  # fmt: skip
