"""Prometheus metrics (names ``watchdog_*``), on a registry of our own. Committed events
count into it; the gauges of tracked batches are refreshed from the store per scrape."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from watchdog.core.budgets import Assessment
from watchdog.core.events import Event, Kind
from watchdog.core.models import KNOWN


class Metrics:
    """Every metric the daemon exports. Never labelled by batch id."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._work(self.registry)
        self._cancels(self.registry)
        self._state(self.registry)
        self._budgets(self.registry)

    def _work(self, r: CollectorRegistry) -> None:
        """The ticks and the polls."""
        self.ticks = Counter(
            "watchdog_ticks", "Ticks run (failed ones included).", ["outcome"], registry=r
        )
        self.tick_duration = Histogram(
            "watchdog_tick_duration_seconds",
            "How long a tick took.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.polls = Counter(
            "watchdog_polls", "Batch polls by outcome.", ["provider", "outcome"], registry=r
        )
        self.last_tick = Gauge(
            "watchdog_last_tick_timestamp_seconds",
            "When the last tick finished (Unix time).",
            registry=r,
        )
        self.estimates = Counter(
            "watchdog_estimates",
            "Input files read for an estimate, by outcome (made, failed, retry).",
            ["provider", "outcome"],
            registry=r,
        )
        self.discovery_incomplete = Counter(
            "watchdog_discovery_incomplete",
            "Discovery passes stopped before their end by a list that cycles or repeats.",
            ["provider", "reason"],
            registry=r,
        )

    def _cancels(self, r: CollectorRegistry) -> None:
        """What the cancels did, and what they saved."""
        self.cancels = Counter(
            "watchdog_cancels",
            "Cancel requests by outcome.",
            ["provider", "policy", "outcome"],
            registry=r,
        )
        self.cancels_abandoned = Counter(
            "watchdog_cancels_abandoned",
            "Cancels given up after their attempts reached the provider and none took.",
            ["provider", "policy"],
            registry=r,
        )
        self.cancels_stuck = Counter(
            "watchdog_cancels_stuck",
            "Batches not ended long after a cancel (cancel_stuck events).",
            ["provider", "policy"],
            registry=r,
        )
        self.saved = Counter(
            "watchdog_saved_usd",
            "Money cancels saved: the projection at the cancel less the final cost.",
            ["provider", "policy"],
            registry=r,
        )

    def _state(self, r: CollectorRegistry) -> None:
        """The tracked batches, the safety, the providers and the backlog as they stand."""
        self.tracked = Gauge(
            "watchdog_tracked_batches",
            "Tracked batches by status.",
            ["provider", "status"],
            registry=r,
        )
        self.cost = Gauge(
            "watchdog_tracked_cost_usd",
            "Known cost of the tracked batches.",
            ["provider"],
            registry=r,
        )
        self.safety_tripped = Gauge(
            "watchdog_safety_tripped", "1 while a safety trip holds every cancel back.", registry=r
        )
        self.provider_available = Gauge(
            "watchdog_provider_available",
            "0 while a provider's circuit is open.",
            ["provider"],
            registry=r,
        )
        self.backlog = Gauge(
            "watchdog_backlog_batches",
            "Batches due when the last tick ended (work the daemon is behind on).",
            registry=r,
        )
        self.backlog_age = Gauge(
            "watchdog_backlog_age_seconds",
            "How overdue the oldest due batch was when the last tick ended.",
            registry=r,
        )

    def _budgets(self, r: CollectorRegistry) -> None:
        """Each budget group's figures."""
        self.budget_spend = Gauge(
            "watchdog_budget_spend_usd",
            "Known cost of a budget group's batches in its window.",
            ["budget", "group"],
            registry=r,
        )
        self.budget_committed = Gauge(
            "watchdog_budget_committed_usd",
            "Spend plus the projected remaining cost of a budget group's running batches.",
            ["budget", "group"],
            registry=r,
        )
        self.budget_limit = Gauge(
            "watchdog_budget_limit_usd", "A budget group's limit.", ["budget", "group"], registry=r
        )

    def count(self, event: Event) -> None:
        """A committed event's share of the counters (cancels by outcome)."""
        detail, labels = event.detail or {}, (event.provider or "", event.policy or "")
        if event.kind == Kind.CANCEL_SUCCEEDED and not detail.get("reconciled"):
            self.cancels.labels(*labels, "succeeded").inc()
        elif event.kind == Kind.CANCEL_FAILED:
            self.cancels.labels(*labels, str(detail.get("outcome", "failed"))).inc()
        elif event.kind == Kind.CANCEL_ABANDONED:
            self.cancels_abandoned.labels(*labels).inc()
        elif event.kind == Kind.CANCEL_STUCK:
            self.cancels_stuck.labels(*labels).inc()
        elif event.kind == Kind.CANCEL_SETTLED and isinstance(detail.get("saved_usd"), int | float):
            self.saved.labels(*labels).inc(max(float(detail["saved_usd"]), 0.0))
        elif event.kind == Kind.DISCOVERY_INCOMPLETE:
            self.discovery_incomplete.labels(labels[0], str(detail.get("reason", ""))).inc()

    def set_tracked(self, rows: Iterable[tuple[str, str | None, int, Decimal | None]]) -> None:
        """(provider, status, count, cost) rows replace the gauges' previous values."""
        self.tracked.clear()
        self.cost.clear()
        costs: dict[str, float] = {}
        counts: dict[tuple[str, str], int] = {}
        for provider, status, count, cost in rows:
            # A status is provider-controlled: a label only for the known ones, so an
            # odd provider cannot grow the series without bound.
            label = "unpolled" if status is None else status if status in KNOWN else "unknown"
            counts[(provider, label)] = counts.get((provider, label), 0) + count
            costs[provider] = costs.get(provider, 0.0) + float(cost or 0)
        for (provider, label), count in counts.items():
            self.tracked.labels(provider, label).set(count)
        for provider, total in costs.items():
            self.cost.labels(provider).set(total)

    def set_budgets(self, found: Iterable[Assessment]) -> None:
        """The budget groups as last assessed (a group no longer seen is dropped)."""
        for gauge in (self.budget_spend, self.budget_committed, self.budget_limit):
            gauge.clear()
        for one in found:
            labels = (one.budget.name, "/".join(one.group) or "all")
            self.budget_spend.labels(*labels).set(float(one.spend))
            self.budget_committed.labels(*labels).set(float(one.committed))
            self.budget_limit.labels(*labels).set(float(one.limit))

    def render(self) -> bytes:
        return generate_latest(self.registry)
