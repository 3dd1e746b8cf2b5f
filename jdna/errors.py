"""Errors that the CLI turns into one clear line on stderr and exit status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_LISTED = 30  # an unknown name's error lists every valid one only up to this many


class JdnaError(Exception):
    """A problem with the user's input or environment, phrased as one line with the fix."""


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The valid choice closest to `name`, if any is reasonably close."""
    options = list(choices)
    matches = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    if matches:
        return matches[0]
    lowered = name.lower()
    for option in options:
        if lowered in option.lower() or option.lower() in lowered:
            return option
    return None


def unknown_name_error(what: str, name: str, choices: Iterable[str]) -> JdnaError:
    """A JdnaError for an unknown name that suggests the nearest valid one."""
    options = sorted(choices)
    suggestion = nearest(name, options)
    hint = f"did you mean '{suggestion}'? " if suggestion else ""
    shown = str(name)[:80]
    if len(options) > MAX_LISTED:
        # A list of ~1,000 BIG-bench tasks is not a readable error line: the nearest few and a count.
        close = difflib.get_close_matches(name, options, n=5, cutoff=0.3)
        near = f"nearest: {', '.join(close)}; " if close else ""
        return JdnaError(f"unknown {what} '{shown}': {hint}{near}{len(options)} valid names in all")
    return JdnaError(f"unknown {what} '{shown}': {hint}valid: {', '.join(options)}")


def check_seed(seed: int, flag: str = "--seed") -> int:
    """Seeds feed numpy and torch generators, which refuse negative values (after the work, not before it)."""
    if seed < 0:
        raise JdnaError(f"{flag} {seed} is negative: use 0 or more")
    return seed
