"""The Lua scripts of workers/lua/, read once at import, and how to run them on either kind of client.

Each script is one atomic step in Redis. Those that change a job's status are preceded by lib.lua (the
helpers UNFINISHED, LIST_UNSENT, ENDED and MOVE), whose ``$NAMES`` (string.Template) are filled in with
workers/keys.py's key names. Scripts run by SHA; redis-py loads one on NOSCRIPT (a fresh or restarted
Redis).
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from string import Template
from typing import Any

from dnnq.workers import keys
from dnnq.workers.history_store import HISTORY_INLINE_MAX

__all__ = ["Script", "get"]

_LIB_NAMES = {
    "PREFIX": keys.PREFIX,
    "TENANT_PREFIX": keys.TENANT_PREFIX,
    "OUTBOX": keys.OUTBOX,
    "BY_STATUS": keys.BY_STATUS,
    "FINISHED": keys.FINISHED,
    "HISTORY_MOVES": keys.HISTORY_MOVES,
    "HISTORY_INLINE_MAX": str(HISTORY_INLINE_MAX),
}
# The scripts that change a status: they call lib.lua's helpers.
_WITH_LIB = ("create_job", "claim", "finish", "release", "cancel", "requeue_expired", "delete_job")
_PLAIN = (
    "renew_lease",
    "record_epochs",
    "record_resume",
    "list_jobs",
    "outbox_due",
    "live_workers",
    "move_history",
    "delete_dataset",
    "create_dataset",
    "renew_share",
    "unlist_deferred",
)


class Script:
    """One Lua script: its text, its SHA1 (the name Redis knows it by once loaded), and a runner for a
    sync or a redis.asyncio client (redis-py's script objects differ between the two)."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._sync: Any = None
        self._async: Any = None

    def __call__(self, r: Any, keys: list, args: list) -> Any:
        """Run on a sync client (EVALSHA, loading the script on NOSCRIPT)."""
        if self._sync is None:
            self._sync = r.register_script(self.source)
        return self._sync(keys=keys, args=args, client=r)

    async def run_async(self, ar: Any, keys: list, args: list) -> Any:
        """Run on a redis.asyncio client."""
        if self._async is None:
            self._async = ar.register_script(self.source)
        return await self._async(keys=keys, args=args, client=ar)

    async def load_async(self, ar: Any) -> None:
        """Put the script in Redis's script cache now (SCRIPT LOAD), not at its first run."""
        await ar.script_load(self.source)


def _read(name: str) -> str:
    return (files("dnnq.workers") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _load_all() -> dict[str, Script]:
    lib = Template(_read("lib")).substitute(_LIB_NAMES)
    loaded = {name: Script(name, lib + _read(name)) for name in _WITH_LIB}
    loaded.update({name: Script(name, _read(name)) for name in _PLAIN})
    return loaded


_SCRIPTS = _load_all()


def get(name: str) -> Script:
    """The script workers/lua/{name}.lua (KeyError for one that does not exist)."""
    return _SCRIPTS[name]
