"""The daemon as operators run it (real subprocesses): systemd notifications, the
HTTP endpoints, SIGHUP reloads, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import API_KEY, Harness, Sim
from tests.daemons import Daemon, write_config
from tests.databases import allow_connections, fresh_postgres, terminate_backends

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.lines: list[str] = []

    async def until(self, line: str, times: int = 1, timeout: float = 60) -> None:
        """Until ``line`` came ``times`` times (a line ending in ``*``: any with that
        start)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while self.count(line) < times:
                data = await loop.sock_recv(self.sock, 4096)
                self.lines += data.decode().splitlines()

    def count(self, line: str) -> int:
        if line.endswith("*"):
            return sum(1 for seen in self.lines if seen.startswith(line[:-1]))
        return self.lines.count(line)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
async def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, sim: Sim, abstract: bool) -> None:
    """READY=1 once up, WATCHDOG=1 repeatedly (half of WATCHDOG_USEC), STATUS= lines,
    STOPPING=1 on SIGTERM, exit 0."""
    address = f"@watchdog-test-{id(tmp_path)}" if abstract else str(tmp_path / "notify")
    notify = NotifySocket(address)
    db = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    config = write_config(tmp_path / "w.yaml", db_url=db, sim_url=sim.url)
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    try:
        daemon = await Daemon.start(config, env=env)
        try:
            await notify.until("READY=1")
            assert notify.count("WATCHDOG=1") == 0  # pings only once ready
            await notify.until("WATCHDOG=1", times=4)
            await notify.until("STATUS=last tick:*")  # after the first tick, however slow
        finally:
            code = await daemon.stop()
        await notify.until("STOPPING=1", timeout=30)
        assert code == 0
        assert notify.lines.index("STOPPING=1") > notify.lines.index("READY=1")
    finally:
        notify.sock.close()


async def endpoint(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def http_port(daemon: Daemon) -> int:
    return int(next(e["port"] for e in daemon.events if e.get("event") == "http_listening"))


async def test_endpoints_and_readyz_when_the_database_goes(tmp_path: Path, sim: Sim) -> None:
    """On a running daemon /healthz, /readyz and /metrics answer; /readyz turns 503 while
    PostgreSQL refuses connections and 200 again once it is back."""
    async with fresh_postgres() as url:
        sim.simulator.add("batch_1", model=LLAMA, total=10, rate=0)
        config = write_config(tmp_path / "w.yaml", db_url=url, sim_url=sim.url)
        migrate = await Daemon.start(config, command="migrate")
        assert await migrate.finish() == 0
        daemon = await Daemon.start(config)
        try:
            await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
            port = http_port(daemon)
            assert await endpoint(port, "/healthz") == (200, "ok\n")
            assert await endpoint(port, "/readyz") == (200, "ready\n")
            status, metrics = await endpoint(port, "/metrics")
            assert status == 200
            for name in (
                "watchdog_ticks_total",
                "watchdog_tick_duration_seconds",
                "watchdog_polls_total",
                "watchdog_cancels_total",
                "watchdog_tracked_batches",
                "watchdog_tracked_cost_usd",
            ):
                assert name in metrics, name
            assert API_KEY not in metrics and API_KEY not in "".join(daemon.raw)
            database = make_url(url).database
            await terminate_backends(database, refuse_new=True)
            status, reason = await endpoint(port, "/readyz")
            assert status == 503 and reason.startswith("not ready: database unreachable")
            assert (await endpoint(port, "/healthz"))[0] == 200  # alive all the same
            await allow_connections(database)
            assert await endpoint(port, "/readyz") == (200, "ready\n")
        finally:
            await allow_connections(make_url(url).database)
            assert await daemon.stop() == 0


async def test_sighup_keeps_old_policies_on_a_broken_file(tmp_path: Path, sim: Sim) -> None:
    """SIGHUP with a broken file logs why and keeps running on the old policies; a good
    file's new policies act from the next tick."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    config = write_config(tmp_path / "w.yaml", db_url=db, sim_url=sim.url)
    good = config.read_text()
    config.write_text(good.replace("poll_interval: 2s", "poll_interval: 1s"))
    batch = sim.simulator.add("batch_old", model=LLAMA, total=1000, rate=0.0, age=3600)
    batch.rate = 0.0
    track = await Daemon.start(config, command="track", args=["batch_old", "--provider", "sim"])
    assert await track.finish() == 0
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        config.write_text("policies: [\n")
        daemon.hup()
        await daemon.wait_for(
            lambda: any(e.get("event") == "config_reload_failed" for e in daemon.events)
        )
        failed = next(e for e in daemon.events if e.get("event") == "config_reload_failed")
        assert "invalid YAML" in failed["error"]
        ticks = len(daemon.ticks())
        await daemon.wait_for(lambda: len(daemon.ticks()) >= ticks + 1)  # still ticking
        assert sim.calls("batch_old", "cancel") == 0
        config.write_text(
            good.replace("poll_interval: 2s", "poll_interval: 1s")
            + ("  - {name: too-old, when: {age_above: 30m}, action: cancel}\n")
        )
        daemon.hup()
        await daemon.wait_for(lambda: sim.calls("batch_old", "cancel") == 1)
        reloaded = next(e for e in daemon.events if e.get("event") == "config_reloaded")
        assert reloaded["policies"] == ["cost-cap", "too-old"]
    finally:
        assert await daemon.stop() == 0


async def test_a_deleted_sqlite_file_fails_readiness_loudly(tmp_path: Path, sim: Sim) -> None:
    """The database file removed under a running daemon: /readyz says so (503), ticks
    fail with the reason instead of writing into a file nobody reads."""
    db_path = tmp_path / "w.db"
    config = write_config(
        tmp_path / "w.yaml", db_url=f"sqlite+aiosqlite:///{db_path}", sim_url=sim.url
    )
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        port = http_port(daemon)
        assert (await endpoint(port, "/readyz"))[0] == 200
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        status, reason = await endpoint(port, "/readyz")
        assert status == 503 and f"database file {db_path} was deleted" in reason
        await daemon.wait_for(
            lambda: any("was deleted" in str(e.get("error")) for e in daemon.events)
        )
        # track would write a new file there, one the running daemon never reads.
        track = await Daemon.start(config, command="track", args=["batch_1", "--provider", "sim"])
        assert await track.finish() == 1
        assert "is gone but a daemon still runs on it" in "".join(track.raw)
        assert not db_path.exists()
    finally:
        assert await daemon.stop() == 0


@contextlib.asynccontextmanager
async def locked_sqlite(path: Path) -> AsyncIterator[None]:
    """Another process holding every lock of the WAL index (the write lock, the
    checkpointer's, recovery's and all five read marks: bytes 120-127 of ``-shm``), as
    a stuck backup or sqlite3 shell can: the daemon's queries wait out their busy
    timeout (15 s) and fail."""
    fd = os.open(f"{path}-shm", os.O_RDWR)
    try:
        async with asyncio.timeout(30):
            while True:  # the daemon's own read locks come and go between ticks
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120)
                    break
                except OSError:
                    await asyncio.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops its locks


async def test_readiness_answers_in_its_time_while_the_database_is_locked(
    tmp_path: Path, sim: Sim
) -> None:
    """The SQLite file held locked by another process: /readyz answers 503 saying the
    database did not answer within 5 s (not after the 15 s busy timeout), /healthz stays
    200, and readiness comes back once the lock is gone."""
    db_path = tmp_path / "w.db"
    config = write_config(tmp_path / "w.yaml", db_url=f"sqlite+aiosqlite:///{db_path}",
                          sim_url=sim.url)  # fmt: skip
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        port = http_port(daemon)
        async with locked_sqlite(db_path):
            status, reason = await endpoint(port, "/readyz")
            assert (status, reason) == (503, "not ready: database did not answer within 5s\n")
            assert (await endpoint(port, "/healthz"))[0] == 200
        await daemon.wait_for_async(lambda: endpoint(port, "/readyz"), (200, "ready\n"))
    finally:
        assert await daemon.stop() == 0


async def test_a_second_daemon_through_a_hard_link_is_refused(tmp_path: Path, sim: Sim) -> None:
    """A hard link is the same file by another name: the second daemon exits 1 at once
    instead of sending a second cancel for every violator."""
    db_path = tmp_path / "w.db"
    first = write_config(tmp_path / "a.yaml", db_url=f"sqlite+aiosqlite:///{db_path}",
                         sim_url=sim.url)  # fmt: skip
    daemon = await Daemon.start(first)
    try:
        await daemon.wait_for(lambda: len(daemon.ticks()) >= 1)
        (tmp_path / "other").mkdir()
        os.link(db_path, tmp_path / "other" / "linked.db")
        linked = f"sqlite+aiosqlite:///{tmp_path / 'other' / 'linked.db'}"
        second = await Daemon.start(write_config(tmp_path / "other" / "b.yaml", db_url=linked,
                                                 sim_url=sim.url))  # fmt: skip
        assert await second.finish() == 1
        assert "another batch-watchdog is running on" in "".join(second.raw)
    finally:
        assert await daemon.stop() == 0


async def test_ticks_failing_in_a_row_make_the_daemon_unready(harness: Harness) -> None:
    """The database answers but every tick fails (a full disk, a bug): after three in a
    row /readyz says why; a tick that succeeds makes it ready again."""
    from watchdog.daemon.metrics import Metrics
    from watchdog.daemon.service import Service

    h = harness
    h.configure(policies=[])
    assert h.engine is not None and h.settings is not None
    service = Service(
        settings=h.settings,
        store=h.store,
        engine=h.engine,
        metrics=Metrics(),
        config=None,
        make_rules=lambda s: h.engine.rules,
    )
    failing = True

    async def tick() -> None:
        if failing:
            raise OSError(28, "No space left on device")

    service.ticks._tick = tick
    for _ in range(3):
        await service.ticks._guarded()
        assert (await service._ready())[0] is (service.ticks.failures < 3)
    ready, why = await service._ready()
    assert not ready and why.startswith("3 ticks failed in a row: OSError")
    failing = False
    await service.ticks._guarded()
    assert (await service._ready()) == (True, "")


async def test_sigterm_while_pruning_exits(tmp_path: Path, sim: Sim) -> None:
    """SIGTERM in the middle of a prune run (a hundred deletes of 2,000 rows here): the
    prune stops and the process exits 0. Before, the cancelled prune was left to
    asyncio's teardown after the database closed, and could wait for ever (a race: the
    process hung in 3 of 28 such stops; the next test makes it certain, in process)."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    extra = "retention: {batch: 2000, max_batches: 100}\n"
    config = write_config(tmp_path / "w.yaml", db_url=db, sim_url=sim.url, extra=extra)
    assert await (await Daemon.start(config, command="migrate")).finish() == 0
    # sqlite3's own "with" only commits: closing() closes the connection too.
    with contextlib.closing(sqlite3.connect(tmp_path / "w.db")) as conn, conn:
        old = "2020-01-01 00:00:00.000000"
        rows = [(old, "sim", f"batch_{n % 50}", "counts_changed") for n in range(200_000)]
        conn.executemany(
            "INSERT INTO batch_events (at, provider, batch_id, kind) VALUES (?,?,?,?)", rows
        )
    daemon = await Daemon.start(config)
    await daemon.wait_for(lambda: bool(daemon.ticks()))
    kinds = [e.get("event") for e in daemon.events]
    assert "events_pruned" not in kinds  # still pruning: the case under test
    assert await daemon.stop(timeout=30) == 0
    assert [e.get("event") for e in daemon.events][-1] == "daemon_stopped"


async def test_stopping_waits_for_a_prune_in_flight(harness: Harness) -> None:
    """The service returns only once the prune it cancelled has ended (its connection
    given back while the database is open): the race behind the hang above, made
    certain by a prune held in its query when the stop comes."""
    from watchdog.daemon.metrics import Metrics
    from watchdog.daemon.service import Service

    h = harness
    h.configure(policies=[])
    assert h.engine is not None and h.settings is not None
    settings = h.settings.model_copy(
        update={"http": h.settings.http.model_copy(update={"enabled": False})}
    )
    service = Service(
        settings=settings,
        store=h.store,
        engine=h.engine,
        metrics=Metrics(),
        config=None,
        make_rules=lambda s: h.engine.rules,
    )
    entered, ended = asyncio.Event(), asyncio.Event()
    prune_events = h.store.journal.prune_events

    async def slow_prune(kind: str, before: datetime, limit: int) -> int:
        entered.set()
        try:
            await asyncio.sleep(3600)
            return await prune_events(kind, before, limit)
        finally:
            await h.store.reads.stats()  # a cleanup that needs the database, as a rollback does
            ended.set()

    h.store.journal.prune_events = slow_prune  # type: ignore[method-assign]
    running = asyncio.create_task(service.run())
    await asyncio.wait_for(entered.wait(), 10)
    service.stop.set()
    await asyncio.wait_for(running, 60)  # a hang, not a speed, is what fails here
    assert ended.is_set()


def test_a_lingering_thread_never_keeps_the_daemon_from_exiting() -> None:
    """A worker thread left running at exit (a database connection a cancelled task
    never gave back: aiosqlite's threads are not daemons, so the interpreter would wait
    for it for ever) is named in a warning, and the process exits all the same."""
    import subprocess
    import sys

    probe = (
        "import threading, time\n"
        "from watchdog.cli.commands import exit_when_threads_linger\n"
        "threading.Thread(target=time.sleep, args=(3600,), name='stuck-db').start()\n"
        "exit_when_threads_linger(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "shutdown_threads_left" in done.stdout + done.stderr
    assert "stuck-db" in done.stdout + done.stderr
