"""A job's statuses, declared once: the state machine (workers/jobs.py), the API's ?status= filter
and the CLI's --status choices all take them from here."""

from __future__ import annotations

from enum import Enum

__all__ = ["STATUSES", "TERMINAL", "Status"]


class Status(str, Enum):
    """A job's status: the one list of them (the API's ?status= and the CLI's --status take these)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


STATUSES = tuple(status.value for status in Status)
TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
