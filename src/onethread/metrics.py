"""Prometheus metrics of one BotOS (or Bot): what the bot is doing, with bounded labels.

Every :class:`Metrics` owns its own ``prometheus_client.CollectorRegistry``
(never the process-wide default), so several bots in one process, and tests,
never see each other's counts. ``GET /metrics`` on the web server exposes it
(see ``onethread.ops``); each host exposes its own, and Prometheus adds them up.

Labels are bounded: ``platform`` (a registered platform name) and ``outcome``
(a fixed set per metric, checked). Never a user id, chat id or text.

:data:`NULL_METRICS` records nothing (``BotOS(metrics=False)``); the turn and
the adapters call the same methods on either, so the hot path has no ``if``.

``prometheus_client`` is imported when a :class:`Metrics` is made (it costs
~80 ms), not when this module is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "DELIVERY_OUTCOMES",
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
        "undelivered",  # the reply could not be delivered
        "error",  # the turn failed (a bug or a store outage)
        "cancelled",  # stopped at shutdown
    }
)
DELIVERY_OUTCOMES = frozenset({"delivered", "failed", "retried"})
LINK_OUTCOMES = frozenset({"issued", "linked", "refused", "locked_out"})
JOB_OUTCOMES = frozenset({"due", "late"})

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

    Recording methods run on the event loop's thread (prometheus_client's own
    locks make them safe from other threads too).
    """

    enabled = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry: CollectorRegistry = registry or CollectorRegistry()
        r = self.registry
        self._turns = Counter(
            "onethread_turns", "Turns handled, by platform and outcome.",
            ["platform", "outcome"], registry=r,
        )  # fmt: skip
        self._turn_seconds = Histogram(
            "onethread_turn_seconds", "Whole turn: from the gate to the delivered reply.",
            ["platform"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._model_seconds = Histogram(
            "onethread_model_seconds", "Time the agent's model took to answer, per turn.",
            ["platform"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._deliveries = Counter(
            "onethread_deliveries", "Replies sent: delivered, failed for good, or retried.",
            ["platform", "outcome"], registry=r,
        )  # fmt: skip
        self._rate_limit_waits = Counter(
            "onethread_rate_limit_waits", "Sends that waited on a platform's rate limit.",
            ["platform"], registry=r,
        )  # fmt: skip
        self._rate_limit_seconds = Counter(
            "onethread_rate_limit_wait_seconds", "Seconds spent waiting on rate limits.",
            ["platform"], registry=r,
        )  # fmt: skip
        self._duplicates = Counter(
            "onethread_duplicates_dropped", "Platform redeliveries dropped by the gate.",
            ["platform"], registry=r,
        )  # fmt: skip
        self._links = Counter(
            "onethread_link_attempts", "/link attempts by outcome.", ["outcome"], registry=r
        )
        self._locks = Gauge(
            "onethread_turn_locks",
            "Session keys with a turn running or waiting in this process.",
            registry=r,
        )
        self._outbox = Gauge(
            "onethread_outbox_depth", "Messages queued for a platform in the shared outbox.",
            ["platform"], registry=r,
        )  # fmt: skip
        self._platform_up = Gauge(
            "onethread_platform_up", "1 while the platform is connected, else 0.",
            ["platform"], registry=r,
        )  # fmt: skip
        self._jobs: Any = None  # created by the first scheduled_job() call
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        # Children cached per label tuple: .labels() takes a lock and builds a key each call.
        self._turn_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._children: dict[tuple[str, ...], Any] = {}

    # -- recording (the hot path) ----------------------------------------------

    def turn(self, platform: str, outcome: str, seconds: float, model_seconds: float) -> None:
        """Count one turn; ``model_seconds`` is 0 when the model was not asked."""
        children = self._turn_children.get((platform, outcome))
        if children is None:
            if outcome not in TURN_OUTCOMES:
                known = sorted(TURN_OUTCOMES)
                raise ValueError(f"unknown turn outcome {outcome!r}; one of {known}")
            children = self._turn_children[(platform, outcome)] = (
                self._turns.labels(platform, outcome),
                self._turn_seconds.labels(platform),
                self._model_seconds.labels(platform),
            )
        count, total, model = children
        count.inc()
        total.observe(seconds)
        if model_seconds > 0.0:
            model.observe(model_seconds)

    def _child(self, metric: Any, name: str, *labels: str) -> Any:
        key = (name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def delivery(self, platform: str, outcome: str) -> None:
        """Count one reply ``delivered`` or ``failed`` (for good), or one ``retried`` attempt."""
        if outcome not in DELIVERY_OUTCOMES:
            raise ValueError(f"unknown delivery outcome {outcome!r}")
        self._child(self._deliveries, "d", platform, outcome).inc()

    def rate_limit_wait(self, platform: str, seconds: float) -> None:
        """Count one wait on a platform's rate limit, of ``seconds``."""
        self._child(self._rate_limit_waits, "r", platform).inc()
        self._child(self._rate_limit_seconds, "rs", platform).inc(max(0.0, seconds))

    def duplicate(self, platform: str) -> None:
        """Count one redelivered message dropped by the gate."""
        self._child(self._duplicates, "dup", platform).inc()

    def link(self, outcome: str) -> None:
        """Count one /link attempt: ``issued``, ``linked``, ``refused`` or ``locked_out``."""
        if outcome not in LINK_OUTCOMES:
            raise ValueError(f"unknown link outcome {outcome!r}; one of {sorted(LINK_OUTCOMES)}")
        self._child(self._links, "l", outcome).inc()

    def scheduled_job(self, outcome: str) -> None:
        """Count one scheduled job that fired ``due`` (on time) or ``late`` (after a miss).

        The hook for the scheduler: ``onethread_scheduled_jobs_total{outcome}``
        appears with the first call, so a deployment without a scheduler shows
        no always-zero series.
        """
        if outcome not in JOB_OUTCOMES:
            raise ValueError(f"unknown job outcome {outcome!r}; one of {sorted(JOB_OUTCOMES)}")
        if self._jobs is None:
            from prometheus_client import Counter

            self._jobs = Counter(
                "onethread_scheduled_jobs", "Scheduled jobs fired, on time (due) or late.",
                ["outcome"], registry=self.registry,
            )  # fmt: skip
        self._jobs.labels(outcome).inc()

    # -- gauges read at scrape time --------------------------------------------

    def watch_locks(self, count: Callable[[], int]) -> None:
        """Read ``onethread_turn_locks`` from ``count()`` at each scrape."""
        self._locks.set_function(lambda: float(count()))

    def watch_platform(self, platform: str, up: Callable[[], bool]) -> None:
        """Read ``onethread_platform_up{platform}`` from ``up()`` at each scrape."""
        self._platform_up.labels(platform).set_function(lambda: 1.0 if up() else 0.0)

    def set_outbox_depth(self, platform: str, depth: int) -> None:
        """Set ``onethread_outbox_depth{platform}`` (by a refresher, see :meth:`add_refresher`)."""
        self._outbox.labels(platform).set(depth)

    def add_refresher(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run ``await refresh()`` before each exposition (values that need a network call)."""
        self._refreshers.append(refresh)

    async def exposition(self) -> bytes:
        """Refresh the network-read gauges, then the registry in Prometheus' text format.

        A refresher that fails leaves its gauges at their last value; the error
        propagates to the caller (``/metrics`` logs it and still answers).
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


class RefreshFailed(Exception):
    """Some gauges could not be refreshed; ``body`` is the exposition all the same."""

    def __init__(self, body: bytes, errors: list[BaseException]) -> None:
        super().__init__(", ".join(type(e).__name__ for e in errors))
        self.body = body
        self.errors = errors
