"""Progress reporting from library code without printing: the CLI supplies a Reporter that draws.

Library functions take a `Reporter` (steps with several stages: pruning, fine-tuning, evaluation) or a plain
`progress(done, total)` callback (the scorers in jdna.scoring); `Reporter.stage(name)` turns one into the other.
`Meter` is the arithmetic a drawing reporter needs: per-stage elapsed time, rate and ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class Reporter:
    """Silent by default; the CLI subclasses it to log and draw progress on stderr."""

    def log(self, message: str) -> None:
        """A line for the user: what is happening or what was decided."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """`done` of `total` units of `stage` are finished."""

    def stage(self, name: str) -> Callable[[int, int], None]:
        """A `progress(done, total)` callback reporting to this reporter under the stage `name`."""

        def report(done: int, total: int) -> None:
            self.progress(name, done, total)

        return report


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '2h07m': short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(per_second: float) -> str:
    """Units per second, or seconds per unit when a unit takes longer than a second."""
    if per_second <= 0:
        return "–/s"
    if per_second >= 1:
        return f"{per_second:.1f}/s"
    return f"{1 / per_second:.1f}s/it"


@dataclass
class Meter:
    """Elapsed time, rate and ETA of the current stage.

    A new total, or `done` going back, starts a new stage; so does a new stage name unless `done` moved on
    (a caller may put a running figure such as the loss into the name: the clock keeps running).
    """

    clock: Callable[[], float] = time.monotonic
    stage: str | None = None
    total: int = 0
    started: float = 0.0
    first_done: int = 0
    done: int = 0
    now: float = 0.0

    def update(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if total != self.total or done < self.done or (stage != self.stage and done <= self.done):
            self.stage, self.total, self.started, self.first_done = stage, total, now, done
        self.done, self.now = done, now

    @property
    def elapsed(self) -> float:
        return self.now - self.started

    @property
    def rate(self) -> float | None:
        """Units per second since the stage started (None before anything was measured)."""
        counted = self.done - self.first_done
        if counted <= 0 or self.elapsed <= 0:
            return None
        return counted / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None while unknown)."""
        rate = self.rate
        if rate is None:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def describe(self) -> str:
        """'12/40 · 3.1/s · 0m09s left' (or '· 14s' of elapsed time once finished)."""
        text = f"{self.done}/{self.total}"
        rate = self.rate
        if rate is not None:
            text += f" · {format_rate(rate)}"
        if self.done >= self.total:
            return text + f" · {format_seconds(self.elapsed)}"
        eta = self.eta
        return text + (f" · ETA {format_seconds(eta)}" if eta is not None else " · ETA …")
