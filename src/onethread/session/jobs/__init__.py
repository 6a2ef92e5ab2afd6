"""Scheduled jobs (reminders, recurring messages): the record, the stores, the time math.

Back-ends: :class:`~.memory.MemoryJobStore` (``memory://``),
:class:`~.sqlite.SQLiteJobStore` (one host), :class:`~.redis.RedisJobStore`
and :class:`~.postgres.PostgresJobStore` (several hosts). Open the one that
matches a deployment's store URL with
:func:`onethread.session.urls.open_job_store`. The scheduler that fires them
lives in :mod:`onethread.bots.scheduler`.
"""

from __future__ import annotations

from .base import ACTIVE, FINISHED, Claim, Job, JobStatus, JobStore, new_job_id

__all__ = ["ACTIVE", "FINISHED", "Claim", "Job", "JobStatus", "JobStore", "new_job_id"]
