"""The plan: never a non-active batch, never twice, bounded attempts, dry-run, the cap."""

import pytest

from watchdog.core.decisions import Candidate, plan


def c(batch_id: str = "b", **kw: object) -> Candidate:
    fields: dict[str, object] = {"status": "in_progress", "policy": "p"} | kw
    return Candidate("prov", batch_id, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (c(status="completed"), "not cancellable"),
        (c(status="cancelling"), "not cancellable"),
        (c(status="queued_for_gpu"), "not cancellable"),
        (c(status=None), "not cancellable"),
        (c(cancel_outcome="succeeded"), "already cancelled once"),
        (c(cancel_attempts=3), "gave up after 3"),
    ],
)
def test_holds(candidate: Candidate, reason: str) -> None:
    """Whatever the settings, these are never cancelled."""
    result = plan([candidate], dry_run=False, max_cancels=10)
    assert result.cancel == [] and reason in result.held[0][1]


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing"])
def test_active_batches_are_cancelled(status: str) -> None:
    """Active batches, including one whose earlier cancel failed, go out."""
    batch = c(status=status, cancel_outcome="failed", cancel_attempts=1)
    assert plan([batch], dry_run=False, max_cancels=10).cancel == [batch]


def test_dry_run_holds_everything() -> None:
    """Dry-run is one 'if' between deciding and acting."""
    result = plan([c("a"), c("b")], dry_run=True, max_cancels=10)
    assert result.cancel == [] and {r for _, r in result.held} == {"dry run"}


def test_cap_keeps_order() -> None:
    """The first max_cancels go out; the rest are held with the reason."""
    result = plan([c(str(i)) for i in range(5)], dry_run=False, max_cancels=2)
    assert [x.batch_id for x in result.cancel] == ["0", "1"]
    assert len(result.held) == 3 and "cancel limit (2 now) reached" in result.held[0][1]
