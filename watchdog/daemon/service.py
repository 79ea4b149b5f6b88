"""The daemon as a service: the tick loop, the HTTP server, systemd notifications and
the signals (SIGTERM/SIGINT stop after the tick in flight, SIGHUP reloads policies)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from watchdog.clock import utcnow
from watchdog.core.observe import Rules
from watchdog.daemon import gate
from watchdog.daemon.access import Access, Role
from watchdog.daemon.actions import PageActions
from watchdog.daemon.api import Api
from watchdog.daemon.engine import Engine
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics
from watchdog.daemon.retention import prune
from watchdog.daemon.scheduler import TickLoop, stopped
from watchdog.daemon.sessions import Sessions
from watchdog.daemon.snapshot import Snapshot
from watchdog.daemon.summary import TickSummary
from watchdog.daemon.systemd import Notifier
from watchdog.settings import ConfigError, ProviderSettings, Settings, load_settings
from watchdog.storage.store import Store

log = structlog.get_logger("watchdog.service")
FAILED_TICKS_NOT_READY = 3


def status_line(summary: TickSummary | None) -> str:
    if summary is None:
        return "STATUS=starting"
    return (
        f"STATUS=last tick: {summary.polled} polled, {summary.poll_failed} failed, "
        f"{summary.cancel_succeeded} cancelled, {summary.cancel_held} held"
    )


class Service:
    """Everything ``run`` keeps alive beside the engine."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        engine: Engine,
        metrics: Metrics,
        config: Path | None,
        make_rules: Callable[[Settings], Rules],
        notifier: Notifier | None = None,
        tokens: Sequence[tuple[str, Role, str]] = (),
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.metrics = metrics
        self.config = config
        self.make_rules = make_rules
        self.notifier = notifier or Notifier()
        self.stop = asyncio.Event()
        self.ticks = TickLoop(
            engine.tick,
            engine.cadence,
            on_tick=self._ticked,
            # Early ticks: for batches adaptive polling made due before the next regular
            # tick, and for a backlog a bounded tick left behind.
            next_due=engine.next_due,
        )
        engine.on_progress = self.ticks.beat
        self.snapshot = Snapshot(store, engine, metrics)
        access = Access(tokens, guarded=not settings.http.loopback)
        api = Api(store, engine, settings, access)
        self.health = HealthServer(
            alive=self.ticks.alive,
            ready=self._ready,
            metrics=metrics,
            refresh=self._refresh,
            page=self._page,
            access=access,
            api=api,
            actions=PageActions(api, Sessions(access, engine.clock)),
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._shutdown, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._shutdown, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.settings.http.enabled:
            await self.health.start(self.settings.http.host, self.settings.http.port)
        heartbeat = asyncio.create_task(self._heartbeat())
        pruning = asyncio.create_task(self._retention())
        snapshots = asyncio.create_task(self.snapshot.run())
        self.notifier.notify("READY=1", status_line(None))
        try:
            timeout = self.settings.shutdown_timeout.total_seconds()
            await self.ticks.run(self.stop, drain_timeout=timeout)
        finally:
            await stopped(heartbeat, pruning, snapshots)  # each may be mid-query
            await self.health.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _shutdown(self, name: str) -> None:
        log.info("shutdown_requested", signal=name)
        self.notifier.notify("STOPPING=1")
        self.stop.set()

    def reload(self) -> None:
        """Re-read policies and pricing; a broken file keeps the old ones."""
        self.notifier.notify("RELOADING=1")
        try:
            if self.config is None:
                raise ConfigError("no config file to reload")
            fresh = load_settings(self.config)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="previous policies")
        else:
            self.engine.replace_rules(self.make_rules(fresh))
            log.info(
                "config_reloaded", policies=[p.name for p in fresh.policies], dry_run=fresh.dry_run
            )
            if (_clients(fresh), fresh.database_url, fresh.notify) != (
                _clients(self.settings),
                self.settings.database_url,
                self.settings.notify,
            ):
                log.warning("restart_needed", reason="providers, database_url or notify changed")
        finally:
            self.notifier.notify("READY=1")

    def _ticked(self, ok: bool, seconds: float) -> None:
        self.snapshot.poke()  # what the tick changed shows on the page soon
        self.metrics.ticks.labels("ok" if ok else "failed").inc()
        self.metrics.tick_duration.observe(seconds)
        self.metrics.last_tick.set_to_current_time()
        self.notifier.notify(status_line(self.engine.last_summary))

    async def _ready(self) -> tuple[bool, str]:
        """Ready when the database answers at head; a safety trip is said, not failed."""
        problem = await self.store.ready()
        if problem is not None:
            return False, problem
        if self.ticks.failures >= FAILED_TICKS_NOT_READY:
            # The database answers, but every tick fails (a full disk, a bug): say so.
            return False, f"{self.ticks.failures} ticks failed in a row: {self.ticks.last_error}"
        tripped = await gate.status(self.store)
        if tripped is None:
            return True, ""
        return True, f"safety tripped at {tripped['tripped_at']}: alert-only until resume"

    async def _page(self) -> str:
        """The status page from the latest snapshot (no database read here)."""
        return self.snapshot.html(self.engine.clock())

    async def _refresh(self) -> None:
        """/metrics: the gauges are the snapshot's (kept up to date by its task)."""

    async def _retention(self) -> None:
        """Prune old events on their own schedule; a failed run is said and retried."""
        retention = self.settings.retention
        while True:
            try:
                await prune(self.store, retention, self.engine.clock())
            except Exception as exc:  # the database may be away: the next run tries again
                log.warning("prune_failed", error=" ".join(str(exc).split())[:200])
            await asyncio.sleep(retention.every.total_seconds())

    async def _heartbeat(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, but only while the tick loop is alive:
        a stuck daemon stops pinging and systemd restarts it."""
        period = self.notifier.watchdog_period
        if period is None:
            return
        while True:
            await asyncio.sleep(period)
            if self.ticks.alive(utcnow()):
                self.notifier.notify("WATCHDOG=1")
            else:
                log.warning("watchdog_ping_withheld", reason="no tick within three intervals")


def _clients(settings: Settings) -> dict[str, ProviderSettings]:
    """What the providers' clients were built from (discovery is reloaded with the rules)."""
    return {name: p.model_copy(update={"discover": None}) for name, p in settings.providers.items()}
