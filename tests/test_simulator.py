"""The simulator's batches progress with the clock like real ones."""

from watchdog.sim.simulator import SimBatch


def b(**kw: object) -> SimBatch:
    params: dict[str, object] = {
        "id": "x",
        "created_at": 0.0,
        "total": 100,
        "rate": 10.0,
        "validating_for": 5.0,
        "finalizing_for": 2.0,
    } | kw
    return SimBatch(**params)  # type: ignore[arg-type]


def test_lifecycle() -> None:
    """validating → in_progress → finalizing → completed, counts and usage growing."""
    batch = b()
    assert batch.status(1)[0] == "validating"
    assert batch.status(6)[0] == "in_progress"
    assert batch.wire(10)["request_counts"] == {"total": 100, "completed": 50, "failed": 0}
    assert batch.wire(10)["usage"]["input_tokens"] == 50 * 1000
    assert batch.status(15.5)[0] == "finalizing"
    assert batch.status(17.5)[0] == "completed"


def test_failures_and_expiry() -> None:
    """Failures come at the set rate; an unfinished batch expires at expires_at."""
    batch = b(rate=1.0, failure_rate=0.25, window=50)
    wire = batch.wire(45)
    assert wire["request_counts"] == {"total": 100, "completed": 30, "failed": 10}
    assert batch.status(60)[0] == "expired"
    assert batch.wire(60)["expired_at"] == 50


def test_cancel_stops_progress_then_cancels() -> None:
    """Cancelling freezes the counts; cancelled follows after the delay."""
    batch = b(cancel_delay=5)
    batch.cancel_at = 10
    assert batch.status(12)[0] == "cancelling"
    assert batch.wire(14)["request_counts"]["completed"] == 50
    assert batch.status(15)[0] == "cancelled"
    assert batch.wire(15)["cancelled_at"] == 15
