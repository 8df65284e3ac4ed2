"""EpochReporter: what a training job does between two epochs (fit's on_epoch and should_stop).

After each epoch it queues the epoch's history entry and writes the queued ones to the job record
in one round trip when a write is due; saves a checkpoint when one is due (every N epochs when asked,
else by time); and notes what should stop training: the lease lost, a cancel seen in the record's
status, or a release asked of this process (the worker shuts down).

Writes are due: at the first epoch (the job then says where it runs), the last, every epoch a
checkpoint is saved at (before the checkpoint, so that a resume from it never finds fewer history
entries than the epochs it skips), and otherwise at most every `progress_flush_seconds`, because a
round trip per epoch costs a job of short epochs much of its time (docs/perf.md, "Worker").
Epochs wait as fit's own records and are serialised only when written.

The trials of a stacked pack (workers/pack_runner.py) each have their reporter, joined in one
FlushGroup: their writes due by time go together, every trial's pending epochs in one round trip on
one clock, not one round trip per trial each `progress_flush_seconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dnnq.workers import artifacts, jobs
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.logs import event
from dnnq.workers.settings import WorkerSettings

if TYPE_CHECKING:
    import redis

    from dnnq.models import EpochRecord, EpochState

__all__ = ["GPU_REPORT_SECONDS", "EpochReporter", "FlushGroup"]

GPU_REPORT_SECONDS = 5.0  # GPU memory goes to the worker's hash (for /metrics) at most this often


class EpochReporter:
    """Progress, checkpoints and stop conditions of one claimed job while `fit` trains it.

    `lease_lost` is the heartbeat's event (set here too when a write finds the lease gone);
    `release_requested` says whether this process was asked to hand its job back; `report_gpu` publishes the
    process's GPU memory. After fit returns or raises, call `flush_remaining()`.
    """

    def __init__(
        self,
        r: redis.Redis,
        store: ArtifactStore,
        settings: WorkerSettings,
        job_id: str,
        token: str,
        *,
        resume_epoch: int,
        checkpoint_every: int | None,
        lease_lost: threading.Event,
        release_requested: Callable[[], bool],
        report_gpu: Callable[[], None],
        group: FlushGroup | None = None,
    ) -> None:
        self._r, self._store, self._settings = r, store, settings
        self._job_id, self._token = job_id, token
        self._resume_epoch = resume_epoch
        self._checkpoint_every = checkpoint_every  # None: by time, settings.checkpoint_seconds
        self._lease_lost = lease_lost
        self._release_requested = release_requested
        self._report_gpu = report_gpu
        self.cancelled = False  # the record says 'cancelling'
        # Decided in on_epoch, not in should_stop: the epoch training stops after is the one checkpointed.
        self.releasing = False
        self._pending: list[EpochRecord] = []  # finished epochs not yet in Redis, as fit made them
        self._progress: tuple[int, int, float] | None = None  # (epoch, epochs, loss) they end on
        self._flushed_at = self._checkpointed_at = time.monotonic()
        self._gpu_reported_at = 0.0
        self._group = group
        if group is not None:
            group.join(self)

    @property
    def lease_is_lost(self) -> bool:
        return self._lease_lost.is_set()

    @property
    def last_epoch(self) -> int:
        """The last finished epoch (the one resumed from before the first)."""
        return self._resume_epoch if self._progress is None else self._progress[0]

    def on_epoch(self, state: EpochState) -> None:
        """fit's callback after each completed epoch."""
        record, epoch = state.record, state.epoch
        self._pending.append(record)
        self._progress = (epoch, state.epochs, record.loss)
        now = time.monotonic()
        first, last = epoch == self._resume_epoch + 1, epoch >= state.epochs
        self.releasing = self.releasing or (self._release_requested() and not last)
        checkpoint_due = (self._checkpoint_due(epoch, now) or self.releasing) and not last
        if first or last or checkpoint_due:
            self.flush(device=state.device if first else None)
        elif self._group is not None:
            if self._group.due(now):
                self._group.flush()
        elif now - self._flushed_at >= self._settings.progress_flush_seconds:
            self.flush()
        if self.lease_is_lost:
            return
        if checkpoint_due and not self.cancelled:
            artifacts.save_checkpoint(self._store, self._job_id, state.checkpoint())
            self._checkpointed_at = time.monotonic()
        if now - self._gpu_reported_at >= GPU_REPORT_SECONDS:
            self._gpu_reported_at = now
            self._report_gpu()

    def should_stop(self) -> bool:
        """fit's question before each epoch."""
        return self.lease_is_lost or self.cancelled or self.releasing

    def flush(self, device: str | None = None) -> None:
        """Write the pending epochs and progress in one round trip; note a lost lease or a cancel."""
        _, token, entries, progress = self._write()
        self._written(jobs.record_epochs(self._r, self._job_id, token, entries, progress, device=device))

    def _write(self) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
        """What a flush sends: (job id, token, the pending history entries, the progress)."""
        progress = dict(zip(("epoch", "epochs", "loss"), self._progress or (), strict=False))
        return self._job_id, self._token, [record.to_dict() for record in self._pending], progress

    def _written(self, status: str) -> None:
        """The pending epochs were sent and Redis answered `status` (record_epochs's answer)."""
        self._pending.clear()
        self._flushed_at = time.monotonic()
        if status == jobs.LEASE_LOST:
            self._lease_lost.set()
        elif status == jobs.Status.CANCELLING.value:
            self.cancelled = True

    def flush_remaining(self) -> None:
        """After fit: write the epochs still pending (fit raised, e.g. diverged: keep the epochs it did)."""
        if not self._pending or self.lease_is_lost:
            return
        try:
            self.flush()
        except Exception as exc:
            event("job.progress_lost", logging.WARNING, job_id=self._job_id, epochs=len(self._pending), error=str(exc))

    def _checkpoint_due(self, epoch: int, now: float) -> bool:
        if self._checkpoint_every:
            return epoch % self._checkpoint_every == 0
        if self._group is not None:
            return self._group.checkpoint_due(epoch, now)
        return now - self._checkpointed_at >= self._settings.checkpoint_seconds


class FlushGroup:
    """The reporters of one stacked pack, whose writes due by time go together: when the group's clock
    says a write is due, every member's pending epochs and progress in one round trip
    (jobs.record_epochs_many). Writes due for one trial alone (its first and last epoch, a checkpoint)
    stay that trial's own."""

    def __init__(self, r: redis.Redis, settings: WorkerSettings) -> None:
        self._r, self._settings = r, settings
        self._members: list[EpochReporter] = []
        self._flushed_at = self._checkpointed_at = time.monotonic()
        self._checkpoint_decided: tuple[int, bool] = (-1, False)  # (epoch, due)

    def join(self, reporter: EpochReporter) -> None:
        self._members.append(reporter)

    def due(self, now: float) -> bool:
        return now - self._flushed_at >= self._settings.progress_flush_seconds

    def checkpoint_due(self, epoch: int, now: float) -> bool:
        """Whether a checkpoint by time (DNNQ_CHECKPOINT_SECONDS) is due at ``epoch``, decided once an epoch
        for every member: a stack's trials are then checkpointed at the same epoch and, after a kill,
        resume stacked together (models.packed.fit_packed resumes trials at one epoch only)."""
        if epoch != self._checkpoint_decided[0]:
            due = now - self._checkpointed_at >= self._settings.checkpoint_seconds
            self._checkpoint_decided = (epoch, due)
            if due:
                self._checkpointed_at = now
        return self._checkpoint_decided[1]

    def flush(self) -> None:
        """Write every member's pending epochs (a member whose lease is lost writes nothing, as alone)."""
        members = [m for m in self._members if m._pending and not m.lease_is_lost]
        statuses = jobs.record_epochs_many(self._r, [m._write() for m in members])
        for member, status in zip(members, statuses, strict=True):
            member._written(status)
        self._flushed_at = time.monotonic()
