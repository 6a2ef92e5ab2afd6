"""Prometheus metrics of one BotOS (or Bot): what the bot is doing, with bounded labels.

Every :class:`Metrics` owns its own ``prometheus_client.CollectorRegistry``
(never the process-wide default), so several bots in one process, and tests,
never see each other's counts. ``GET /metrics`` on the web server exposes it
(see ``onethread.ops``); each host exposes its own, and Prometheus adds them up.

Labels are bounded: ``platform`` (a registered platform name) and ``outcome``
(a fixed set per metric, checked). Never a user id, chat id or text.

:data:`NULL_METRICS` records nothing (``BotOS(metrics=False)``); the turn and
the adapters call the same methods on either, so the hot path has no ``if``.

``prometheus_client`` (~80 ms to import) is imported when metrics are first
read (``registry``, ``/metrics``), not to record them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "DELIVERY_OUTCOMES",
    "JOB_OUTCOMES",
    "LINK_OUTCOMES",
    "NULL_METRICS",
    "TURN_OUTCOMES",
    "Metrics",
    "NullMetrics",
    "RefreshFailed",
]

TURN_OUTCOMES = frozenset(
    {
        "ok",  # the agent answered and the reply was delivered
        "model_error",  # the model failed: the person got the apology
        "command",  # a slash command answered it
        "refused",  # the access policy refused the sender
        "attachment_refused",  # only attachments, each refused (too large, say)
        "undelivered",  # the reply could not be delivered
        "error",  # the turn failed (a bug or a store outage)
        "cancelled",  # stopped at shutdown
    }
)
DELIVERY_OUTCOMES = frozenset({"delivered", "failed", "retried"})
LINK_OUTCOMES = frozenset({"issued", "linked", "refused", "locked_out"})
JOB_OUTCOMES = frozenset(
    {
        "due",  # fired on time
        "late",  # fired late (everything was down), within the grace period
        "missed",  # skipped: later than the grace period
        "failed",  # could not be delivered
    }
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NullMetrics:
    """Records nothing: the same methods as :class:`Metrics`, for metrics switched off."""

    enabled = False

    def turn(self, platform: str, outcome: str, seconds: float, model_seconds: float) -> None:
        """See :meth:`Metrics.turn`."""

    def delivery(self, platform: str, outcome: str) -> None:
        """See :meth:`Metrics.delivery`."""

    def rate_limit_wait(self, platform: str, seconds: float) -> None:
        """See :meth:`Metrics.rate_limit_wait`."""

    def duplicate(self, platform: str) -> None:
        """See :meth:`Metrics.duplicate`."""

    def link(self, outcome: str) -> None:
        """See :meth:`Metrics.link`."""

    def scheduled_job(self, outcome: str) -> None:
        """See :meth:`Metrics.scheduled_job`."""


NULL_METRICS = NullMetrics()
"""The shared do-nothing recorder (adapters start with it until a Bot gives them one)."""


def _bucket_samples(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative ``le`` buckets."""
    out, total = [], 0
    for bound, n in zip((*map(str, _LATENCY_BUCKETS), "+Inf"), counts, strict=True):
        total += n
        out.append((bound, float(total)))
    return out


class _PlatformStats:
    """One platform's counts, as plain numbers (see :class:`Metrics`)."""

    __slots__ = ("deliveries", "model_counts", "model_sum", "outcomes", "turn_counts", "turn_sum")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.deliveries: dict[str, int] = {}
        # Histograms: one count per bucket, the last one +Inf; bisect_left finds the
        # first bound >= the value, i.e. Prometheus' "le" bucket.
        self.turn_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.turn_sum = 0.0
        self.model_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.model_sum = 0.0


class Metrics(NullMetrics):
    """The counters, histograms and gauges of one BotOS, in their own registry.

    Metric names (all prefixed ``onethread_``): ``turns_total{platform,outcome}``,
    ``turn_seconds{platform}`` and ``model_seconds{platform}`` (histograms),
    ``deliveries_total{platform,outcome}`` (``delivered``, ``failed``,
    ``retried``: one per retry), ``rate_limit_waits_total{platform}`` and
    ``rate_limit_wait_seconds_total{platform}``,
    ``duplicates_dropped_total{platform}``, ``link_attempts_total{outcome}``
    (``issued``, ``linked``, ``refused``, ``locked_out``), the gauges
    ``turn_locks`` (session keys with a turn running or waiting in this
    process), ``outbox_depth{platform}`` and ``platform_up{platform}``, and
    ``scheduled_jobs_total{outcome}`` once a scheduler reports to
    :meth:`scheduled_job`.

    Recording is on the turn's path, so it is plain arithmetic on dicts and
    lists (well under a microsecond a turn); prometheus-client's own metric
    objects take a lock per increment, which cost ~6 us a turn. The values
    become prometheus-client metric families when scraped (a custom collector
    in :attr:`registry`), and prometheus-client writes the text format.
    Thread-safety: record and scrape on the event loop's thread (the turn,
    the adapters' ``send`` and the ``/metrics`` handler all run there), which
    guards the plain values.
    """

    enabled = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry
        self._registered = False
        self._stats: dict[str, _PlatformStats] = {}
        self._rate_limit_waits: dict[str, int] = {}
        self._rate_limit_seconds: dict[str, float] = {}
        self._duplicates: dict[str, int] = {}
        self._links: dict[str, int] = {}
        self._jobs: dict[str, int] = {}
        self._outbox: dict[str, int] = {}
        self._platforms_up: dict[str, Callable[[], bool]] = {}
        self._locks: Callable[[], int] | None = None
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    @property
    def registry(self) -> CollectorRegistry:
        """This BotOS's own ``prometheus_client.CollectorRegistry`` (made on first use:
        prometheus-client is imported only when metrics are read, not to record them)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
        if not self._registered:
            self._registry.register(_Collector(self))
            self._registered = True
        return self._registry

    # -- recording (the hot path) ----------------------------------------------

    def _platform(self, platform: str) -> _PlatformStats:
        stats = self._stats.get(platform)
        if stats is None:
            stats = self._stats[platform] = _PlatformStats()
        return stats

    def turn(self, platform: str, outcome: str, seconds: float, model_seconds: float) -> None:
        """Count one turn; ``model_seconds`` is 0 when the model was not asked."""
        stats = self._stats.get(platform) or self._platform(platform)
        outcomes = stats.outcomes
        if outcome in outcomes:
            outcomes[outcome] += 1
        elif outcome in TURN_OUTCOMES:
            outcomes[outcome] = 1
        else:
            raise ValueError(f"unknown turn outcome {outcome!r}; one of {sorted(TURN_OUTCOMES)}")
        stats.turn_counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        stats.turn_sum += seconds
        if model_seconds > 0.0:
            stats.model_counts[bisect_left(_LATENCY_BUCKETS, model_seconds)] += 1
            stats.model_sum += model_seconds

    def delivery(self, platform: str, outcome: str) -> None:
        """Count one reply ``delivered`` or ``failed`` (for good), or one ``retried`` attempt."""
        deliveries = (self._stats.get(platform) or self._platform(platform)).deliveries
        if outcome in deliveries:
            deliveries[outcome] += 1
        elif outcome in DELIVERY_OUTCOMES:
            deliveries[outcome] = 1
        else:
            raise ValueError(f"unknown delivery outcome {outcome!r}")

    def rate_limit_wait(self, platform: str, seconds: float) -> None:
        """Count one wait on a platform's rate limit, of ``seconds``."""
        self._rate_limit_waits[platform] = self._rate_limit_waits.get(platform, 0) + 1
        waited = self._rate_limit_seconds.get(platform, 0.0) + max(0.0, seconds)
        self._rate_limit_seconds[platform] = waited

    def duplicate(self, platform: str) -> None:
        """Count one redelivered message dropped by the gate."""
        self._duplicates[platform] = self._duplicates.get(platform, 0) + 1

    def link(self, outcome: str) -> None:
        """Count one /link attempt: ``issued``, ``linked``, ``refused`` or ``locked_out``."""
        if outcome not in LINK_OUTCOMES:
            raise ValueError(f"unknown link outcome {outcome!r}; one of {sorted(LINK_OUTCOMES)}")
        self._links[outcome] = self._links.get(outcome, 0) + 1

    def scheduled_job(self, outcome: str) -> None:
        """Count one scheduled occurrence: ``due`` (fired on time), ``late`` (fired
        within the grace period), ``missed`` (skipped, too late) or ``failed``.

        The hook for the scheduler: ``onethread_scheduled_jobs_total{outcome}``
        appears with the first call, so a deployment without a scheduler shows
        no always-zero series.
        """
        if outcome not in JOB_OUTCOMES:
            raise ValueError(f"unknown job outcome {outcome!r}; one of {sorted(JOB_OUTCOMES)}")
        self._jobs[outcome] = self._jobs.get(outcome, 0) + 1

    # -- gauges read at scrape time --------------------------------------------

    def watch_locks(self, count: Callable[[], int]) -> None:
        """Read ``onethread_turn_locks`` from ``count()`` at each scrape."""
        self._locks = count

    def watch_platform(self, platform: str, up: Callable[[], bool]) -> None:
        """Read ``onethread_platform_up{platform}`` from ``up()`` at each scrape."""
        self._platforms_up[platform] = up

    def set_outbox_depth(self, platform: str, depth: int) -> None:
        """Set ``onethread_outbox_depth{platform}`` (by a refresher, see :meth:`add_refresher`)."""
        self._outbox[platform] = depth

    def add_refresher(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``await refresh()`` before each exposition (values that need a network call)."""
        self._refreshers.append(refresh)

    async def exposition(self) -> bytes:
        """Refresh the network-read gauges, then the registry in Prometheus' text format.

        A refresher that fails leaves its gauges at their last value and
        :class:`RefreshFailed` carries the exposition all the same
        (``/metrics`` logs it and still answers).
        """
        from prometheus_client import generate_latest

        errors: list[BaseException] = []
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception as exc:  # one store down must not hide every other metric
                errors.append(exc)
        body: bytes = generate_latest(self.registry)
        if errors:
            raise RefreshFailed(body, errors)
        return body


class _Collector:
    """Turns a :class:`Metrics`' plain values into prometheus-client metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list[Any]:
        """Nothing up front (the registry must not collect at registration)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families, read now."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.m
        turns = CounterMetricFamily(
            "onethread_turns", "Turns handled, by platform and outcome.",
            labels=["platform", "outcome"],
        )  # fmt: skip
        stats = sorted(m._stats.items())
        for platform, st in stats:
            for outcome, n in sorted(st.outcomes.items()):
                turns.add_metric([platform, outcome], n)
        yield turns
        turn_seconds = HistogramMetricFamily(
            "onethread_turn_seconds", "Whole turn: from the gate to the delivered reply.",
            labels=["platform"],
        )  # fmt: skip
        model_seconds = HistogramMetricFamily(
            "onethread_model_seconds", "Time the agent's model took to answer, per turn.",
            labels=["platform"],
        )  # fmt: skip
        for platform, st in stats:
            if sum(st.turn_counts):  # both once the platform has had a turn (rate() needs 0s)
                turn_seconds.add_metric([platform], _bucket_samples(st.turn_counts), st.turn_sum)
                model_seconds.add_metric([platform], _bucket_samples(st.model_counts), st.model_sum)
        yield turn_seconds
        yield model_seconds
        deliveries = CounterMetricFamily(
            "onethread_deliveries", "Replies sent: delivered, failed for good, or retried.",
            labels=["platform", "outcome"],
        )  # fmt: skip
        for platform, st in stats:
            for outcome, n in sorted(st.deliveries.items()):
                deliveries.add_metric([platform, outcome], n)
        yield deliveries
        for name, doc, values in (
            ("onethread_rate_limit_waits", "Sends that waited on a platform's rate limit.",
             m._rate_limit_waits),
            ("onethread_rate_limit_wait_seconds", "Seconds spent waiting on rate limits.",
             m._rate_limit_seconds),
            ("onethread_duplicates_dropped", "Platform redeliveries dropped by the gate.",
             m._duplicates),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, doc, labels=["platform"])
            for platform, value in sorted(values.items()):
                counter.add_metric([platform], value)
            yield counter
        links = CounterMetricFamily(
            "onethread_link_attempts", "/link attempts by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(m._links.items()):
            links.add_metric([outcome], n)
        yield links
        if m._jobs:
            jobs = CounterMetricFamily(
                "onethread_scheduled_jobs", "Scheduled occurrences: due, late, missed or failed.",
                labels=["outcome"],
            )  # fmt: skip
            for outcome, n in sorted(m._jobs.items()):
                jobs.add_metric([outcome], n)
            yield jobs
        if m._locks is not None:
            yield GaugeMetricFamily(
                "onethread_turn_locks",
                "Session keys with a turn running or waiting in this process.",
                value=m._locks(),
            )
        outbox = GaugeMetricFamily(
            "onethread_outbox_depth", "Messages queued for a platform in the shared outbox.",
            labels=["platform"],
        )  # fmt: skip
        for platform, depth in sorted(m._outbox.items()):
            outbox.add_metric([platform], depth)
        yield outbox
        up = GaugeMetricFamily(
            "onethread_platform_up", "1 while the platform is connected, else 0.",
            labels=["platform"],
        )  # fmt: skip
        for platform, is_up in sorted(m._platforms_up.items()):
            up.add_metric([platform], 1.0 if is_up() else 0.0)
        yield up


class RefreshFailed(Exception):
    """Some gauges could not be refreshed; ``body`` is the exposition all the same."""

    def __init__(self, body: bytes, errors: list[BaseException]) -> None:
        super().__init__(", ".join(type(e).__name__ for e in errors))
        self.body = body
        self.errors = errors
