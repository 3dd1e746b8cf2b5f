"""Progress reporting from library code without printing: the CLI supplies a Reporter that draws."""

from __future__ import annotations


class Reporter:
    """Silent by default; the CLI subclasses it to log and draw progress on stderr."""

    def log(self, message: str) -> None:
        """A line for the user: what is happening or what was decided."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """`done` of `total` units of `stage` are finished."""
