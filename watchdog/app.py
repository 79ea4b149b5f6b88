"""Builds everything once — settings, database engine, store, provider clients, the
tick engine — and runs the commands on them. No printing here: cli.py prints."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from watchdog.clock import monotonic, utcnow
from watchdog.core.budgets import Assessment
from watchdog.core.config import Webhook
from watchdog.core.durations import iso
from watchdog.core.events import Event
from watchdog.core.models import validate_batch_id
from watchdog.core.observe import Judging
from watchdog.core.pricing import projected_cost, usd
from watchdog.core.rows import Listed
from watchdog.daemon import gate, logs
from watchdog.daemon.budgeting import assess_budgets
from watchdog.daemon.engine import Engine
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.record import log_event
from watchdog.daemon.service import Service
from watchdog.daemon.summary import TickSummary
from watchdog.daemon.webhooks import WebhookSender
from watchdog.providers.client import ProviderClient
from watchdog.settings import Settings, read_secret
from watchdog.storage.database import (
    AlreadyRunning,
    SchemaError,
    create_engine,
    instance_lock,
    is_sqlite,
    orphaned,
    prepare_schema,
    redact_url,
    schema_revision,
    upgrade,
)
from watchdog.storage.journal import EventFilter
from watchdog.storage.store import Store
from watchdog.views.explain import Explanation, explained
from watchdog.views.replay import Sample, Tally, compare, fresh, judge, recorded, view_at
from watchdog.views.report import Report

__all__ = ["AlreadyRunning", "EventFilter", "SchemaError", "UsageError", "redact_url"]
log = structlog.get_logger("watchdog.app")
CLI = {"actor": "cli"}  # who the audit log says wrote what the command line wrote


class UsageError(Exception):
    """A bad argument (batch id, provider name); the CLI exits 2."""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DatabaseMissing(Exception):
    """The SQLite file a running daemon uses was deleted: writing a new one helps nobody."""


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    if (why := orphaned(settings.database_url)) is not None:
        raise DatabaseMissing(why)
    db = create_engine(settings.database_url)
    try:
        await prepare_schema(db, settings.database_url)
        yield Store(db)
    finally:
        await db.dispose()


@asynccontextmanager
async def open_clients(
    settings: Settings, environ: Mapping[str, str], redact: logs.Redactor
) -> AsyncIterator[dict[str, ProviderClient]]:
    """One client per provider; a missing key is a ConfigError before anything starts.
    Each key is handed to the log redactor as soon as it is read."""
    keys = {name: p.read_key(name, environ) for name, p in settings.providers.items()}
    for key in keys.values():
        if key is not None:
            redact.add(key.get_secret_value())
    async with AsyncExitStack() as stack:
        clients = {}
        for name, provider in settings.providers.items():
            client = ProviderClient(
                name,
                base_url=provider.base_url,
                api_key=keys[name],
                timeout=provider.timeout.total_seconds(),
                max_retries=provider.max_retries,
                concurrency=provider.concurrency,
                api=provider.api,
                api_version=provider.api_version,
                auth=provider.auth,
            )
            clients[name] = await stack.enter_async_context(client)
        yield clients


@dataclass(slots=True)
class Daemon:
    """The running pieces, for ``run`` and the demo."""

    settings: Settings
    store: Store
    engine: Engine


@asynccontextmanager
async def open_daemon(
    settings: Settings,
    *,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
    metrics: Metrics | None = None,
    redact: logs.Redactor | None = None,
) -> AsyncIterator[Daemon]:
    environ = os.environ if environ is None else environ
    redact = redact or logs.Redactor()  # without logging set up, one that masks nothing
    for hook in settings.notify.webhooks:  # their URLs often carry a token
        redact.add(hook.url)
    with instance_lock(settings.database_url):
        opening = open_clients(settings, environ, redact)
        async with opening as clients, open_store(settings) as store:
            owner = owner_id()
            if is_sqlite(settings.database_url):
                await store.claims.release(None)  # the file is locked to us: old leases were ours
            unsettled = await store.claims.due_unsettled_cancels(utcnow())
            if unsettled:
                log.warning(
                    "reconciling_cancels",
                    batches=unsettled,
                    note="cancel_requested without an outcome: settled from provider state",
                )
            hooks, notify = settings.notify.webhooks, settings.notify
            secrets = [hook_secret(i, hook, environ, redact) for i, hook in enumerate(hooks)]
            facts = partial(batch_facts, store)
            async with WebhookSender(
                hooks, secrets=secrets, base_url=notify.base_url, facts=facts
            ) as webhooks:
                engine = Engine(
                    store=store,
                    clients=clients,
                    rules=settings.rules(dry_run=dry_run),
                    cadence=settings.cadence,
                    owner=owner,
                    lease=settings.lease_duration,
                    metrics=metrics,
                    listeners=[webhooks.submit] if webhooks.hooks else [],
                    bulk_threshold=settings.bulk_refresh_at,
                    monotonic=monotonic,
                )
                try:
                    yield Daemon(settings, store, engine)
                finally:
                    await engine.close()
                    await store.claims.release(owner)


def _announce(daemon: Daemon, config: Path | None) -> None:
    rules, settings = daemon.engine.rules, daemon.settings
    log.info(
        "daemon_started",
        config=None if config is None else str(config),
        database=redact_url(settings.database_url),
        database_from=settings.origin("database_url"),
        providers=sorted(daemon.engine.clients),
        policies=[p.name for p in rules.policies],
        poll_interval_s=settings.poll_interval.total_seconds(),
        dry_run=rules.dry_run,
    )
    for key, source in sorted(settings.origins.items()):
        # Values are not logged: an override may carry a password.
        log.warning("setting_overridden", key=key, source=source, note="not from the file")
    if rules.dry_run:
        log.warning(
            "dry_run_enabled", note="policies are judged and recorded; nothing is cancelled"
        )


async def run(
    settings: Settings,
    *,
    once: bool,
    dry_run: bool,
    config: Path | None = None,
    redact: logs.Redactor | None = None,
) -> TickSummary | None:
    """The daemon: one tick with ``once``, else a service until SIGTERM or SIGINT."""
    metrics = Metrics()
    # Read before anything starts (78 if one is missing), and masked in every log line.
    tokens = [(n, r, v.get_secret_value()) for n, r, v in settings.http.read_tokens(os.environ)]
    for _, _, value in tokens:
        if redact is not None:
            redact.add(value)
    async with open_daemon(settings, dry_run=dry_run, metrics=metrics, redact=redact) as daemon:
        _announce(daemon, config)
        if once:
            return await daemon.engine.tick()
        service = Service(
            settings=settings,
            store=daemon.store,
            engine=daemon.engine,
            metrics=metrics,
            config=config,
            make_rules=lambda fresh: fresh.rules(dry_run=dry_run),
            tokens=tokens,
        )
        await service.run()
        log.info("daemon_stopped")
    return None


async def batch_facts(store: Store, event: Event) -> dict[str, Any]:
    """What a notification says of the event's batch: its model, cost and projection."""
    if event.provider is None or event.batch_id is None:
        return {}
    listed = await store.reads.one(event.provider, event.batch_id)
    if listed is None:
        return {}
    view, cost = listed.tracked.view, listed.tracked.cost_usd
    projected = projected_cost(cost, view.counts, 1)
    return {"model": view.model, "cost_usd": usd(cost), "projected_cost_usd": usd(projected)}


def hook_secret(
    index: int, hook: Webhook, environ: Mapping[str, str], redact: logs.Redactor
) -> str | None:
    """A webhook's signing key or routing key, read (and masked in the logs) at start."""
    where = f"notify.webhooks[{index}]"
    found = read_secret(where, "secret_file", hook.secret_env, hook.secret_file, environ)
    if found is None:
        return None
    redact.add(found.get_secret_value())
    return found.get_secret_value()


def check_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """What ``run`` checks of the providers' keys before it starts (each is readable and
    not empty), without keeping or showing them; ConfigError otherwise."""
    environ = os.environ if environ is None else environ
    for name, provider in settings.providers.items():
        provider.read_key(name, environ)
    settings.http.read_tokens(environ)
    for index, hook in enumerate(settings.notify.webhooks):
        where = f"notify.webhooks[{index}]"
        read_secret(where, "secret_file", hook.secret_env, hook.secret_file, environ)


async def migrate(settings: Settings) -> tuple[str | None, str | None]:
    db = create_engine(settings.database_url)
    try:
        await upgrade(db)
        return await schema_revision(db)
    finally:
        await db.dispose()


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --label {pair!r}: use key=value")
        labels[key] = value
    return labels


async def track(settings: Settings, batch_id: str, provider: str, labels: list[str]) -> bool:
    try:
        validate_batch_id(batch_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if provider not in settings.providers:
        raise UsageError(f"unknown provider {provider!r}; known: {settings.provider_list()}")
    parsed = parse_labels(labels)
    async with open_store(settings) as store:
        return await store.tracking.track(provider, batch_id, parsed, utcnow(), CLI)


async def untrack(settings: Settings, batch_id: str, provider: str | None) -> list[str]:
    async with open_store(settings) as store:
        return await store.tracking.untrack(batch_id, provider, utcnow(), CLI)


async def exempt(
    settings: Settings,
    batch_id: str,
    provider: str | None,
    until: timedelta | None,
    reason: str | None,
) -> list[str]:
    """Silence a batch for ``until`` (None: lift the silence); the providers it applied to."""
    now = utcnow()
    async with open_store(settings) as store:
        end = None if until is None else now + until
        return await store.tracking.exempt(batch_id, provider, end, reason, now, CLI)


async def resume(settings: Settings) -> bool:
    """End a safety trip; False when none was in force."""
    async with open_store(settings) as store:
        resumed = await gate.resume(store, utcnow(), by="operator", said=CLI)
    if resumed is not None:
        log_event(resumed)
    return resumed is not None


async def budgets(settings: Settings, now: datetime) -> list[Assessment]:
    """Every budget group as the daemon would assess it now (read-only)."""
    async with open_store(settings) as store:
        return await assess_budgets(store, settings.rules(), now)


async def explain(
    settings: Settings, batch_id: str, provider: str | None, now: datetime
) -> Explanation:
    """What the daemon knows of one batch and what its next tick will make of it: each
    policy and budget, the exemption, the safety and dry-run switches (read-only)."""
    try:
        validate_batch_id(batch_id)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    async with open_store(settings) as store:
        found = await store.tracking.find(batch_id, provider)
        tripped = await gate.status(store)
    if not found:
        where = f" at {provider!r}" if provider else ""
        raise UsageError(f"batch {batch_id!r} is not tracked{where}")
    if len(found) > 1:
        names = ", ".join(t.view.provider for t, _ in found)
        raise UsageError(f"batch {batch_id!r} is tracked at {names}: give --provider")
    ((tracked, next_poll),) = found
    groups = [a for a in await budgets(settings, now) if a.counts(tracked.key)]
    return explained(settings, tracked, next_poll, groups, tripped is not None, now)


REPLAY_LIMITS = [
    "dry_run, the safety limits and budgets are not replayed: policies and prices are",
    "a poll is judged at each recorded sample and every poll_interval between",
]


async def replay_lines(
    settings: Settings, since: datetime, now: datetime
) -> AsyncIterator[dict[str, Any]]:
    """The recorded history since ``since`` judged again with ``settings``' policies and
    prices against what the daemon did, one batch's line at a time (read-only: nothing
    written, nothing sent; memory holds one batch)."""
    rules = settings.rules()
    judging = Judging(rules, settings.cadence)
    async with open_store(settings) as store:
        cancels = await store.journal.first_cancels(since)
        async for tracked, samples in store.journal.history(since):
            view, key = tracked.view, tracked.key
            timeline = [Sample(row["at"], view_at(view, row)) for row in samples]
            start = fresh(view, tracked.estimate)
            steps = judge(start, timeline, judging, every=settings.poll_interval, until=now)
            done = recorded(timeline, cancels.get(key), rules.pricing, view.provider)
            yield compare(view, done, steps)


async def replay(settings: Settings, since: datetime, now: datetime) -> dict[str, Any]:
    """The whole replay report, the changed batches first (its lines all in memory:
    ``replay_lines`` streams them)."""
    lines, tally = [], Tally()
    async for line in replay_lines(settings, since, now):
        lines.append(line)
        tally.add(line)
    lines.sort(key=lambda line: (line["change"] == "unchanged", line["provider"], line["batch_id"]))
    return {"since": iso(since), "batches": lines, "totals": tally.as_dict(),
            "limits": REPLAY_LIMITS}  # fmt: skip


async def report(settings: Settings, since: datetime, by: str) -> Report:
    """Spend, batches, cancels and savings per day and group (read-only)."""
    built = Report(by, since, tuple(settings.pricing))
    async with open_store(settings) as store:
        async for row in store.reads.report_rows(since):
            built.add(row)
    return built


async def list_batches(settings: Settings, status: str | None) -> list[Listed]:
    async with open_store(settings) as store:
        return await store.reads.list_batches(status)


async def stream_events(settings: Settings, wanted: EventFilter) -> AsyncIterator[dict[str, Any]]:
    """The audit log's matching events, oldest first, as they are read."""
    async with open_store(settings) as store:
        async for row in store.journal.stream_events(wanted):
            yield row
