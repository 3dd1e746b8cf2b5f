"""Errors that the CLI turns into one clear line on stderr and exit status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
    return JdnaError(f"unknown {what} '{name}': {hint}valid: {', '.join(options)}")
