"""A finished job's per-epoch history in the artifact store: `jobs/{id}/history.jsonl.gz`.

A long history does not stay in Redis once its job has ended (workers/jobs.py moves it): the entries
go to this file exactly as Redis held them (one JSON object per line, gzip-compressed), so every
reader answers with the same entries, and Redis keeps the record only. A history of at most
HISTORY_INLINE_MAX epochs stays in Redis: it is within Redis's budget per job, and a poll of it then
needs no file.

Readers keep the histories they parsed in a bounded in-process cache: a moved history never changes
(its job has ended), and a status poll must not read and parse the file every time.

The move keeps the last entry in the job's record (`history_last`): a sweep ranks its trials by it
and reads no file. Records moved before that field existed have last_entry, which parses one line.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections import OrderedDict, deque
from typing import Any

from dnnq.workers.artifact_store import ArtifactStore
from dnnq.workers.keys import validate_id

__all__ = [
    "HISTORY_CACHE_ENTRIES",
    "HISTORY_INLINE_MAX",
    "forget",
    "history_key",
    "last_entry",
    "lrange",
    "read_history",
    "write_history",
]

# Epochs a finished job's history may keep in Redis (~115 B each: under 30 KB); longer ones move.
HISTORY_INLINE_MAX = 256
# Epoch entries a process keeps parsed (a few hundred bytes each as Python objects).
HISTORY_CACHE_ENTRIES = 100_000

# Last entries last_entry found (one small dict per job: a sweep of older records asks every GET).
LAST_ENTRY_CACHE_JOBS = 10_000

_cache: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
_cached_entries = 0
_last: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
_lock = threading.Lock()


def history_key(job_id: str) -> str:
    """The artifact key of a job's moved history."""
    return f"jobs/{validate_id(job_id)}/history.jsonl.gz"


def write_history(store: ArtifactStore, job_id: str, raw_entries: list[str]) -> str:
    """Store the entries (Redis's JSON strings, in order) atomically; returns the file's sha256.
    mtime=0: the same history always makes the same bytes (a second mover writes an identical file).
    Level 1: a quarter of level 6's time in the worker's finish, for a file 15% larger (docs/perf.md)."""
    data = gzip.compress("\n".join(raw_entries).encode(), compresslevel=1, mtime=0)
    return store.put(history_key(job_id), data)


def read_history(store: ArtifactStore, job_id: str) -> list[dict[str, Any]]:
    """Every entry of a moved history (KeyError when the file is missing). Do not modify the list."""
    global _cached_entries
    with _lock:
        cached = _cache.get(job_id)
        if cached is not None:
            _cache.move_to_end(job_id)
            return cached
    text = gzip.decompress(store.get(history_key(job_id))).decode()
    # the lines parsed as one JSON array: faster than a json.loads per line
    entries = json.loads("[" + text.replace("\n", ",") + "]") if text else []
    with _lock:
        if job_id not in _cache and len(entries) <= HISTORY_CACHE_ENTRIES:
            _cache[job_id] = entries
            _cached_entries += len(entries)
            while _cached_entries > HISTORY_CACHE_ENTRIES:
                _, dropped = _cache.popitem(last=False)
                _cached_entries -= len(dropped)
    return entries


def last_entry(store: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    """The last entry of a moved history (None when it has none; KeyError when the file is missing),
    for a record moved before the move kept it (`history_last`). The file is decompressed line by line
    and only its last line parsed: memory of one line, not of the whole history."""
    with _lock:
        if job_id in _last:
            return _last[job_id]
        cached = _cache.get(job_id)
    if cached is not None:
        return cached[-1] if cached else None
    with gzip.GzipFile(fileobj=io.BytesIO(store.get(history_key(job_id)))) as lines:
        last = deque(lines, maxlen=1)  # every line read, the last one kept
    entry = json.loads(last[0]) if last and last[0].strip() else None
    with _lock:
        _last[job_id] = entry
        if len(_last) > LAST_ENTRY_CACHE_JOBS:
            _last.popitem(last=False)
    return entry


def forget(job_id: str) -> None:
    """Drop a job's parsed history from this process's cache (its job was deleted)."""
    global _cached_entries
    with _lock:
        _last.pop(job_id, None)
        dropped = _cache.pop(job_id, None)
        if dropped is not None:
            _cached_entries -= len(dropped)


def lrange(entries: list[Any], start: int, end: int) -> list[Any]:
    """entries[start..end] with LRANGE's meaning (inclusive end; negative counts from the end)."""
    n = len(entries)
    start = max(start + n, 0) if start < 0 else start
    end = end + n if end < 0 else min(end, n - 1)
    return entries[start : end + 1] if start <= end else []
