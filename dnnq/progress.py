"""A one-line progress bar for `dnnq watch`: epoch/epochs, loss, accuracy, ETA (on stderr)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "format_duration", "render"]


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def render(
    epoch: int,
    epochs: int | None,
    loss: float | None = None,
    accuracy: float | None = None,
    eta_s: float | None = None,
    width: int = 24,
) -> str:
    """The bar's text, e.g. `[#######.....]  30/100 loss 0.4123 acc 0.871 ETA 00:07`."""
    if epochs:
        filled = min(width, int(width * epoch / epochs))
        bar = "#" * filled + "." * (width - filled)
        count = f"{epoch:>{len(str(epochs))}}/{epochs}"
    else:
        bar, count = "?" * width, str(epoch)
    parts = [f"[{bar}] {count}"]
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    if accuracy is not None:
        parts.append(f"acc {accuracy:.3f}")
    parts.append(f"ETA {format_duration(eta_s)}")
    return " ".join(parts)


class ProgressBar:
    """Redraws one line in place on a terminal; on a pipe, prints a line at most every few seconds."""

    def __init__(self, epochs: int | None, stream: TextIO | None = None, min_interval_s: float = 5.0) -> None:
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval_s = 0.0 if self.tty else min_interval_s
        self._t0 = time.monotonic()
        self._first_epoch: int | None = None
        self._last_draw = float("-inf")
        self._drawn = False

    def eta(self, epoch: int, now: float) -> float | None:
        """Remaining time from the rate of the epochs seen by this watcher (not those before it)."""
        if not self.epochs or self._first_epoch is None or epoch <= self._first_epoch:
            return None
        rate = (now - self._t0) / (epoch - self._first_epoch)
        return rate * (self.epochs - epoch)

    def update(
        self, epoch: int, loss: float | None = None, accuracy: float | None = None, epochs: int | None = None
    ) -> None:
        now = time.monotonic()
        if epochs:
            self.epochs = epochs
        if self._first_epoch is None:
            self._first_epoch, self._t0 = epoch, now
        final = bool(self.epochs and epoch >= self.epochs)
        if now - self._last_draw < self.min_interval_s and not final:
            return
        self._last_draw = now
        line = render(epoch, self.epochs, loss, accuracy, self.eta(epoch, now))
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._drawn = True

    def finish(self, message: str) -> None:
        """End the bar's line and print the final status line."""
        if self.tty and self._drawn:
            self.stream.write("\n")
        self.stream.write(message + "\n")
        self.stream.flush()
