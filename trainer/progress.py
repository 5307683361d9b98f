"""Progress of a long loop, drawn for whoever reads it.

On a terminal: one live line, redrawn in place (``\\r``). Anywhere else (``make demo > log``,
CI logs, a pipe): plain newline-terminated lines, about one per tenth of the work and a final
one, with counts and elapsed seconds and no carriage returns or escape codes. The choice is
``stream.isatty()``.

This module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import math
import sys
import time


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, StringIO and
    closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Counts ``total`` units of work done, reported to ``stream`` (default: ``sys.stdout``
    at construction)::

        progress = Progress(len(cases), unit="example", label="explain")
        for case in cases:
            ...
            progress.advance()

    The report finishes by itself when the count reaches ``total``; :meth:`close` finishes
    it early (an interrupted loop) and is idempotent.
    """

    def __init__(self, total: int, unit: str = "item", label: str = "", stream=None,
                 width: int = 30, steps: int = 10):
        self.total = max(0, int(total))
        self.unit = unit
        self.label = f"{label}: " if label else ""
        self.stream = sys.stdout if stream is None else stream
        self.live = is_terminal(self.stream)
        self.width = width
        # Plain mode: a line each time the count passes one of `steps` evenly spaced marks.
        self._marks = sorted({math.ceil(self.total * k / steps) for k in range(1, steps + 1)}
                             - {0})
        self.done = 0
        self._start = time.monotonic()
        self._finished = False
        if self.live:
            self._draw()

    def advance(self, n: int = 1) -> None:
        if self._finished:
            return
        before = self.done
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        if self.total and self.done >= self.total:
            self.close()  # the final line, live or plain
        elif self.live:
            self._draw()
        elif any(before < mark <= self.done for mark in self._marks):
            self._write(self._line() + "\n")

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.live:
            self._draw()
            self._write("\n")
        else:
            self._write(self._line(final=True) + "\n")

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def _line(self, final: bool = False) -> str:
        units = self.unit if self.total == 1 else self.unit + "s"
        if final:
            return f"{self.label}{self.done}/{self.total} {units} done in {self._elapsed():.1f} s"
        percent = 100 * self.done // self.total if self.total else 100
        return (f"{self.label}{self.done}/{self.total} {units} ({percent}%), "
                f"{self._elapsed():.1f} s")

    def _draw(self) -> None:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        bar = "=" * filled + (">" if filled < self.width else "") + \
            "." * max(0, self.width - filled - 1)
        elapsed = self._elapsed()
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        self._write(f"\r{self.label}{self.done}/{self.total} [{bar}] {elapsed:.0f} s{eta}"
                    "\x1b[K")  # clear what a longer earlier line left

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
