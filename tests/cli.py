"""Run the jdna CLI in-process with given stdin, capturing stdout/stderr and the exit status."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass

from jdna.commands.app import main


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def record(self) -> dict:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {self.stdout!r}"
        return json.loads(lines[0])


def run(*args: str, stdin: str | None = None) -> Result:
    old = sys.stdin, sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    sys.stdin = io.StringIO(stdin) if stdin is not None else io.StringIO("")
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(args))
    finally:
        sys.stdin, sys.stdout, sys.stderr = old
    return Result(code, out.getvalue(), err.getvalue())
