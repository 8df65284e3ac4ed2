"""EpochReporter: what a training job does between two epochs (fit's on_epoch and should_stop).

After each epoch it queues the epoch's history entry and writes the queued ones to the job record
in one round trip when a write is due; saves a checkpoint when one is due (every N epochs when asked,
else by time); and notes what should stop training: the lease lost, a cancel seen in the record's
status, or a release asked of this process (the worker shuts down).

Writes are due: at the first epoch (the job then says where it runs), the last, every epoch a
checkpoint is saved at (before the checkpoint, so that a resume from it never finds fewer history
entries than the epochs it skips), and otherwise at most every `progress_flush_seconds`, because a
round trip per epoch costs a job of short epochs much of its time (docs/perf.md, "Worker").
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

    from dnnq.models import EpochState

__all__ = ["GPU_REPORT_SECONDS", "EpochReporter"]

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
        self._pending: list[dict[str, Any]] = []  # finished epochs not yet in Redis
        self._progress: dict[str, Any] = {}  # the progress they end on
        self._flushed_at = self._checkpointed_at = time.monotonic()
        self._gpu_reported_at = 0.0

    @property
    def lease_is_lost(self) -> bool:
        return self._lease_lost.is_set()

    @property
    def last_epoch(self) -> int:
        """The last finished epoch (the one resumed from before the first)."""
        return int(self._progress.get("epoch", self._resume_epoch))

    def on_epoch(self, state: EpochState) -> None:
        """fit's callback after each completed epoch."""
        entry = state.record.to_dict()
        self._pending.append(entry)
        self._progress.update(epoch=state.epoch, epochs=state.epochs, loss=entry["loss"])
        first, last = state.epoch == self._resume_epoch + 1, state.epoch >= state.epochs
        self.releasing = self.releasing or (self._release_requested() and not last)
        checkpoint_due = (self._checkpoint_due(state.epoch) or self.releasing) and not last
        if first or last or checkpoint_due or self._since(self._flushed_at) >= self._settings.progress_flush_seconds:
            self.flush(device=state.device if first else None)
        if self.lease_is_lost:
            return
        if checkpoint_due and not self.cancelled:
            artifacts.save_checkpoint(self._store, self._job_id, state.checkpoint())
            self._checkpointed_at = time.monotonic()
        if self._since(self._gpu_reported_at) >= GPU_REPORT_SECONDS:
            self._gpu_reported_at = time.monotonic()
            self._report_gpu()

    def should_stop(self) -> bool:
        """fit's question before each epoch."""
        return self.lease_is_lost or self.cancelled or self.releasing

    def flush(self, device: str | None = None) -> None:
        """Write the pending epochs and progress in one round trip; note a lost lease or a cancel."""
        status = jobs.record_epochs(self._r, self._job_id, self._token, self._pending, self._progress, device=device)
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

    def _checkpoint_due(self, epoch: int) -> bool:
        if self._checkpoint_every:
            return epoch % self._checkpoint_every == 0
        return self._since(self._checkpointed_at) >= self._settings.checkpoint_seconds

    @staticmethod
    def _since(moment: float) -> float:
        return time.monotonic() - moment
