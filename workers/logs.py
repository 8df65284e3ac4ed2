"""Structured logs: one JSON object per line on stderr; a job's lines all carry its job_id."""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "event", "set_job", "setup_logging"]

logger = logging.getLogger("dnnq.worker")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        if _current_job[0] is not None:
            doc["job_id"] = _current_job[0]  # every line written while a job runs, Celery's included
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


# The job this process is working on (a prefork child runs one task at a time).
_current_job: list[str | None] = [None]


def set_job(job_id: str | None) -> None:
    _current_job[0] = job_id


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the root logger (Celery's own loggers included)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(name: str, level: int = logging.INFO, exc_info: bool = False, **fields: object) -> None:
    """Log one event with fields, e.g. event("job.claimed", job_id=..., attempt=2)."""
    logger.log(level, name, extra=fields, exc_info=exc_info)
