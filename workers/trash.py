"""The files of deleted jobs and datasets, removed after their Redis records (keys.TRASH).

Deleting a job or a dataset is one Lua script (workers/lua/delete_job.lua, delete_dataset.lua): its
records go, and its artifact prefix ("jobs/{id}/") or key ("datasets/{id}.npz") is listed in the
trash, scored by when its files may be removed. The caller removes them at once and unlists them; a
caller that dies in between leaves the entry to the sweeper (workers/recovery.py), so no file
outlives its record for longer than a sweep period.
"""

from __future__ import annotations

import re
from typing import Any

from dnnq.workers import keys
from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.scripts import get as script

__all__ = ["TRASH_GRACE_SECONDS", "due", "empty", "remove"]

# How long a deleted job's files wait when a history move was in flight for it: the mover may still
# be writing its file (seconds at most), and the sweeper removes what it wrote after that.
TRASH_GRACE_SECONDS = 60.0

_DATASET_FILE = re.compile(r"^datasets/([0-9a-f]{24,32})\.npz$")


def remove(r: Any, store: ArtifactStore, entry: str) -> None:
    """Remove the files of one trash entry, then unlist it. A dataset stored again since (same tenant
    and content: the same id) keeps its file."""
    found = _DATASET_FILE.match(entry)
    if found is not None:
        if not r.exists(keys.dataset(found.group(1))):
            store.delete(entry)
    elif entry.startswith("jobs/") and entry.endswith("/"):
        store.delete_prefix(entry)
    r.zrem(keys.TRASH, entry)


def due(r: Any) -> list[str]:
    """Trash entries whose time has come (by Redis's clock), oldest first."""
    return list(script("outbox_due")(r, [keys.TRASH], [0]))


def empty(r: Any, store: ArtifactStore, limit: int = 1000) -> int:
    """Remove up to `limit` due entries' files (the sweeper); returns how many entries went."""
    entries = due(r)[:limit]
    for entry in entries:
        remove(r, store, entry)
    return len(entries)
