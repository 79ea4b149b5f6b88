"""The wall clock stepped under a running daemon (libfaketime, Debian's, preloaded into
a real ``batch-watchdog run``; the monotonic clock left alone, as a real step leaves it):
back an hour, the polls planned by the fast clock are planned again and a violator is
cancelled on time; forward an hour, ticks go on and the Date-header guard holds the
cancels that the stepped clock's ages would send."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, LLAMA
from tests.daemons import Daemon, write_config
from tests.tools import library
from watchdog.sim.simulator import Simulator

LIBFAKETIME = "/usr/lib/*/faketime/libfaketime.so.1"


async def real_time_sim(aiohttp_server: Any) -> tuple[Simulator, str]:
    """The provider: the world's clock, not the daemon's."""
    simulator = Simulator(clock=time.time, api_key=API_KEY)
    server = await aiohttp_server(simulator.app())
    return simulator, str(server.make_url("/v1"))


async def stepped_daemon(tmp_path: Path, sim_url: str, offset: str, extra: str = "") -> Daemon:
    """A daemon tracking ``batch_big`` whose wall clock reads the offset in
    ``tmp_path/faketime`` (rewritten by the test to step it)."""
    stamp = tmp_path / "faketime"
    stamp.write_text(offset + "\n")
    db = f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"
    config = write_config(tmp_path / "w.yaml", db_url=db, sim_url=sim_url, extra=extra)
    track = await Daemon.start(config, command="track", args=["batch_big", "--provider", "sim"])
    assert await track.finish() == 0
    env = {
        "LD_PRELOAD": library(LIBFAKETIME, package="faketime"),
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    return await Daemon.start(config, env=env)


def step(tmp_path: Path, offset: str) -> None:
    (tmp_path / "faketime").write_text(offset + "\n")


def named(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events if e.get("event") == event]


def polled(daemon: Daemon) -> int:
    return sum(int(t.get("polled", 0)) for t in daemon.ticks())


@pytest.fixture(autouse=True)
def _needs_libfaketime() -> None:
    library(LIBFAKETIME, package="faketime")


async def test_a_clock_stepped_back_an_hour_still_cancels_on_time(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    """The host's clock runs an hour fast, then NTP corrects it. Polls planned by the
    fast clock lie an hour ahead: the daemon plans them again (``clock_stepped``) and the
    batch that crosses its $5 cap after the correction is cancelled, once."""
    sim, url = await real_time_sim(aiohttp_server)
    # $0.0065 a request, 40 requests a second: over the $5 cap 20 s after it starts.
    sim.add("batch_big", model=LLAMA, total=1_000_000, rate=40,
            input_tokens=50_000, output_tokens=100_000)  # fmt: skip
    daemon = await stepped_daemon(tmp_path, url, "+1h")
    try:
        await daemon.wait_for(lambda: polled(daemon) >= 1)
        step(tmp_path, "+0")
        await daemon.wait_for(lambda: bool(named(daemon, "clock_stepped")), timeout=60)
        await daemon.wait_for(lambda: bool(named(daemon, "cancel_succeeded")), timeout=90)
    finally:
        assert await daemon.stop() == 0
    (stepped,) = named(daemon, "clock_stepped")
    assert stepped["step_s"] < -3500 and stepped["replanned"] >= 1
    assert sim.calls["batch_big"]["cancel"] == 1


AGE_CAP = """
  - name: too-old
    when: {age_above: 30m}
    action: cancel
"""


async def test_a_clock_stepped_forward_an_hour_cancels_nothing_healthy(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    """A 10-minute-old batch, a 30-minute age cap, and the host's clock jumps an hour
    ahead: the batch looks 70 minutes old, but the provider's Date header says the local
    clock is off, so no cancel goes out (``clock_skew``); the step is said and the
    ticks go on."""
    sim, url = await real_time_sim(aiohttp_server)
    sim.add("batch_big", model=LLAMA, age=600, total=1_000_000, rate=1,
            input_tokens=10, output_tokens=10)  # fmt: skip
    daemon = await stepped_daemon(tmp_path, url, "+0", AGE_CAP)
    try:
        await daemon.wait_for(lambda: polled(daemon) >= 1)
        step(tmp_path, "+1h")
        await daemon.wait_for(lambda: bool(named(daemon, "clock_stepped")), timeout=60)
        after = len(daemon.ticks())
        await daemon.wait_for(lambda: len(daemon.ticks()) >= after + 3, timeout=60)
    finally:
        assert await daemon.stop() == 0
    (stepped,) = named(daemon, "clock_stepped")
    assert stepped["step_s"] > 3500 and stepped["replanned"] == 0
    assert named(daemon, "clock_skew") and named(daemon, "policy_matched")
    assert sim.calls["batch_big"].get("cancel", 0) == 0
