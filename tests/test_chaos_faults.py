"""Each kind of simulated fault, one at a time, against the real client: it surfaces as
the error class the daemon expects (retried, or refused with a reason)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from watchdog.core.errors import PermanentError, TemporaryError
from watchdog.core.models import implausible
from watchdog.providers.client import ProviderClient
from watchdog.sim.chaos import FAULTS, Chaos
from watchdog.sim.simulator import Simulator

EXPECTED: dict[str, type[Exception] | None] = {
    "429_seconds": TemporaryError,
    "429_date": TemporaryError,
    "429_ms": TemporaryError,
    "500": TemporaryError,
    "502": TemporaryError,
    "503": TemporaryError,
    "504": TemporaryError,
    "hang": TemporaryError,
    "reset": TemporaryError,
    "truncated": TemporaryError,
    "html": PermanentError,
    "missing_field": PermanentError,
    "wrong_type": PermanentError,
    "unknown_status": None,
    "odd_timestamps": None,
    "endless_list": None,
}


async def _no_sleep(_: float) -> None:
    return None


@pytest.mark.parametrize("kind", FAULTS)
async def test_each_fault_kind_on_a_poll(kind: str, aiohttp_server: Any) -> None:
    """Every fault on GET /batches/{id} becomes the expected error, or a parsed batch
    that the engine then judges (unknown status) or refuses (implausible timestamps)."""
    sim = Simulator(chaos=Chaos(rate=1.0, kinds=(kind,), routes=("get",), hang_seconds=5))
    sim.add("batch_1")
    server = await aiohttp_server(sim.app())
    client = ProviderClient(
        "sim",
        base_url=str(server.make_url("/v1")),
        api_key=SecretStr("k"),
        timeout=0.5,
        max_retries=0,
        sleep=_no_sleep,
    )
    async with client:
        expected = EXPECTED[kind]
        if kind == "odd_timestamps":  # before 2020 (judged implausible) or past 2100 (refused)
            try:
                batch = await client.get("batch_1")
            except PermanentError as exc:
                assert "not a Unix time in seconds" in str(exc)
            else:
                assert implausible(batch, datetime.now(UTC)) is not None
        elif expected is None:
            batch = await client.get("batch_1")
            assert batch.id == "batch_1"
        else:
            with pytest.raises(expected):
                await client.get("batch_1")
    # aiohttp itself re-sends an idempotent GET once on a reset connection.
    assert sim.chaos is not None and set(sim.chaos.counts) == {kind}


async def test_endless_list_keeps_saying_has_more(aiohttp_server: Any) -> None:
    """The list fault never lets has_more turn false (for bulk readers to guard against)."""
    sim = Simulator(chaos=Chaos(rate=1.0, kinds=("endless_list",), routes=("list",)))
    sim.add("batch_1")
    server = await aiohttp_server(sim.app())
    client = ProviderClient("sim", base_url=str(server.make_url("/v1")), api_key=None)
    async with client:
        page = await client.list(limit=100)
    assert page.has_more and [b.id for b in page.data] == ["batch_1"]


def test_unknown_kinds_and_routes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        Chaos(kinds=("meteor",))
    with pytest.raises(ValueError, match="unknown routes"):
        Chaos(routes=("delete",))
